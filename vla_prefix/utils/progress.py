"""The progress bar of train, collect and evaluate (tqdm on stderr).

On a terminal or in a notebook it redraws live; when stderr goes to a file (`nohup ... > run.log`, CI) it writes
about one line every `LOG_INTERVAL_S`, so a long run's log stays small and readable instead of one redraw per step.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True) -> tqdm:
    """A tqdm bar; disabled (every method a no-op) when `enabled` is false."""
    live = sys.stderr.isatty() or _in_jupyter_kernel()
    interval = {} if live else {"mininterval": LOG_INTERVAL_S, "maxinterval": LOG_INTERVAL_S}
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                **interval)


def _in_jupyter_kernel() -> bool:
    """True inside a running Jupyter kernel (a notebook), not merely when ipykernel was imported."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config
