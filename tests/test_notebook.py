"""Execute notebooks/quickstart.ipynb (FAST settings) in a real Jupyter kernel, as CI does.

The kernel is this interpreter (a kernel spec written for `sys.executable`, found first through
JUPYTER_PATH), the working directory is notebooks/, and the notebook's outputs go to a temp folder.
Any cell error fails the test (nbclient raises CellExecutionError with the cell and its traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 300


def _kernel_spec_for_this_python(folder: Path) -> Path:
    """A `python3` kernel spec that starts this interpreter (so the kernel sees this venv's packages)."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (vla-prefix tests)", "language": "python"}))
    return folder


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(c.outputs == [] and c.execution_count is None for c in code), \
        "commit the notebook with its outputs cleared"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("VLA_PREFIX_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("VLA_PREFIX_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec_for_this_python(tmp_path / "jupyter")))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend turns figures into PNG outputs
    nb = nbformat.read(NOTEBOOK, as_version=4)
    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))

    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, startup_timeout=120,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    kernel_prefix = "".join(o.get("text", "") for o in nb.cells[n_cells].outputs).strip()
    assert kernel_prefix == sys.prefix, f"the kernel ran {kernel_prefix}, not this environment ({sys.prefix})"
    outputs = [o for c in nb.cells[:n_cells] if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 2, f"expected the frame strip and the loss curve, got {len(figures)} figure(s)"

    (run,) = (out / "runs").iterdir()
    prefixes = sorted(p.name for p in (run / "train" / "prefixes").glob("*.safetensors"))
    assert len(prefixes) == 2, prefixes  # one file per task of the two-task run
    infos = [json.loads(p.read_text()) for p in run.glob("eval_*/**/eval_info.json")]
    assert len(infos) == 3  # zero-shot base (both tasks) and each task's prefix
    assert all(t["n_episodes"] == 2 for info in infos for t in info["tasks"].values())
