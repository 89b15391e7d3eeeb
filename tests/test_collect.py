"""The demo collector on the tiny MuJoCo suite (tests/tiny_task.py): seeds, determinism, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_task

from vla_prefix.collect import CollectConfig, collect
from vla_prefix.utils.hydra_app import check_overrides
from vla_prefix.data import DemoDataset
from vla_prefix.data.dataset import INDEX, SUMMARY
from vla_prefix.errors import ConfigError, GLBackendError, UnknownTaskError, VLAPrefixError
from vla_prefix.seeds import SEED_RANGES
from vla_prefix.sim.registry import make_env
from vla_prefix.tasks import main as tasks_main

RED, BLUE = "tiny-reach-red-v0", "tiny-reach-blue-v0"
TESTS_DIR = str(Path(__file__).parent)


def settings(out, **kw) -> dict:
    return {"suite": "tiny", "task": RED, "n_demos": 4, "out": str(out), "image_size": 16,
            "task_modules": ["tiny_task"], "progress": False, **kw}  # fmt: skip


def reachable(task: str, seeds: list[int]) -> list[bool]:
    env = make_env(task, image_size=16)
    try:
        out = []
        for seed in seeds:
            env.reset(seed=seed)
            out.append(tiny_task.reachable(env.unwrapped))
        return out
    finally:
        env.close()


def check_first_successes(ds: DemoDataset, task: str, n_demos: int) -> None:
    """The task holds exactly the first `n_demos` successful train seeds, each reachable, none twice."""
    meta = ds.task_meta(task)
    ok, failed = meta["successful_seeds"], meta["failed_seeds"]
    seeds = [e.seed for e in ds.select([task])]
    assert seeds == ok and len(ok) == n_demos == meta["n_episodes"]
    assert sorted(ok + failed) == list(range(max(ok) + 1))  # a prefix of the train range, nothing left out
    assert all(s in SEED_RANGES["train"] for s in ok + failed)
    assert reachable(task, ok) == [True] * len(ok)  # the expert fails exactly where the target is out of reach
    assert reachable(task, failed) == [False] * len(failed)
    assert meta["expert_success_rate"] == pytest.approx(len(ok) / (len(ok) + len(failed)))


def test_collect_keeps_successes_that_replay(tmp_path):
    out = tmp_path / "ds"
    summary = collect(settings(out, task=[RED, BLUE], cameras=["top", "front"]))
    ds = DemoDataset(out)
    assert ds.tasks() == [RED, BLUE] and ds.cameras == ["top", "front"] and ds.image_size == 16
    for task in (RED, BLUE):
        check_first_successes(ds, task, 4)
        assert summary["tasks"][task]["n_episodes"] == 4
        assert summary["tasks"][task]["expert_success_rate"] == ds.task_meta(task)["expert_success_rate"]
    assert summary["totals"]["n_episodes"] == 8
    assert json.loads((out / SUMMARY).read_text()) == json.loads(json.dumps(summary))
    # Every stored episode replays: same seed + stored actions -> the stored images, ending in success.
    env = make_env(BLUE, image_size=16, cameras=("top", "front"))
    for info in ds.select([BLUE]):
        ep = ds.load_episode(info)
        assert ep["images"].shape == (info.length, 2, 16, 16, 3) and ep["instruction"] == "reach the blue ball"
        obs, _ = env.reset(seed=info.seed)
        for t in range(info.length):
            assert np.array_equal(obs["image"], ep["images"][t]) and np.allclose(obs["proprio"], ep["proprio"][t])
            obs, _, _, _, step_info = env.step(ep["actions"][t])
            assert step_info["is_success"] == (t == info.length - 1)
    env.close()


def test_seeds_do_not_depend_on_workers_or_resumes(tmp_path):
    collect(settings(tmp_path / "a", n_demos=6))
    collect(settings(tmp_path / "b", n_demos=3))
    collect(settings(tmp_path / "b", n_demos=6, workers=2))  # appends, with two worker processes
    a, b = DemoDataset(tmp_path / "a"), DemoDataset(tmp_path / "b")
    assert [(e.task, e.seed, e.length) for e in a.episodes] == [(e.task, e.seed, e.length) for e in b.episodes]
    check_first_successes(b, RED, 6)
    assert np.array_equal(a.load_episode(5)["images"], b.load_episode(5)["images"])
    again = collect(settings(tmp_path / "b", n_demos=6))  # nothing left to do
    assert again["this_run"]["new_frames"] == 0 and len(DemoDataset(tmp_path / "b")) == 6


def test_short_of_demos_keeps_them_and_resumes(tmp_path):
    assert reachable(RED, [0, 1]) == [False, True]  # seed 0 is out of reach for the red task
    out = tmp_path / "ds"
    with pytest.raises(VLAPrefixError, match=r"max_attempts=2 .*tiny-reach-red-v0 \(1/2, expert success 0.50\)"):
        collect(settings(out, n_demos=2, max_attempts=2))
    assert DemoDataset(out).task_meta(RED)["successful_seeds"] == [1]
    collect(settings(out, n_demos=2))
    check_first_successes(DemoDataset(out), RED, 2)


def test_bad_inputs_fail_with_one_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    with pytest.raises(ConfigError, match="n_demos=0"):
        collect(settings(out, n_demos=0))
    with pytest.raises(UnknownTaskError, match="did you mean tiny-reach-red-v0"):
        collect(settings(out, task="tiny-reach-rd-v0"))
    with pytest.raises(ConfigError, match="did you mean n_demos"):
        check_overrides(["suite=tiny", "n_demo=3"], CollectConfig)
    check_overrides(["suite=tiny", "n_demos=3", "hydra.run.dir=.", "cameras=[top]", "--multirun"], CollectConfig)
    with pytest.raises(ConfigError, match="did you mean image_size"):
        collect({**settings(out), "imagesize": 32})
    with pytest.raises(ConfigError, match="`out` is required"):
        collect({k: v for k, v in settings(out).items() if k != "out"})
    with pytest.raises(ConfigError, match="max_attempts=2 is below n_demos=4"):
        collect(settings(out, max_attempts=2))
    assert not out.exists()  # none of these created anything

    collect(settings(out, n_demos=1))
    before = (out / INDEX).read_bytes()
    with pytest.raises(ConfigError, match=r"image_size=16 \(asked: 32\)"):
        collect(settings(out, image_size=32))
    with pytest.raises(ConfigError, match="cameras"):
        collect(settings(out, cameras=["top", "front"]))
    assert (out / INDEX).read_bytes() == before

    def no_gl():
        raise GLBackendError("no GL; set MUJOCO_GL=egl")

    monkeypatch.setattr("vla_prefix.sim.render.check_gl", no_gl)
    with pytest.raises(GLBackendError, match="MUJOCO_GL"):
        collect(settings(tmp_path / "gl"))
    assert not (tmp_path / "gl").exists()


def test_tasks_cli_lists_user_tasks(capsys):
    tasks_main(["--json", "--suite", "tiny", "--task-module", "tiny_task"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [RED, BLUE]
    assert {k: rows[1][k] for k in ("suite", "family", "split", "instruction")} == {
        "suite": "tiny", "family": "reach", "split": "heldout", "instruction": "reach the blue ball"}  # fmt: skip
    tasks_main(["--suite", "tiny"])
    table = capsys.readouterr().out
    assert RED in table and "split all: 2 task(s)" in table


# ---------------------------------------------------------------------------- command line (subprocesses)


def cli(out, *extra) -> list[str]:
    return [sys.executable, "-m", "vla_prefix.collect", "suite=tiny", f"out={out}", "task_modules=[tiny_task]",
            "image_size=16", "progress=false", *extra]  # fmt: skip


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}


def n_listed(out: Path) -> int:
    try:
        return len(json.loads((out / INDEX).read_text())["episodes"])
    except FileNotFoundError:
        return 0


def children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cli_kill_9_mid_run_then_resume(tmp_path):
    out, n_demos = tmp_path / "ds", 40
    args = cli(out, f"task={RED}", f"n_demos={n_demos}", "workers=2")
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while n_listed(out) < 4:
        assert proc.poll() is None, f"the collector ended before it was killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no episode landed within 60 s"
        time.sleep(0.01)
    workers = children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert 4 <= n_listed(out) < n_demos
    DemoDataset(out).verify()  # consistent right after the kill
    deadline = time.monotonic() + 10
    while any(running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(running(p) for p in workers), "worker processes outlived the killed collector"

    summary = collect(settings(out, n_demos=n_demos))  # the same command again (in-process)
    ds = DemoDataset(out)
    ds.verify()
    check_first_successes(ds, RED, n_demos)
    assert summary["tasks"][RED]["n_episodes"] == n_demos
    assert sorted(p.name for p in out.iterdir()) == [".lock", SUMMARY, INDEX, "episodes.zarr"]


def test_cli_unknown_task_is_one_line(tmp_path):
    res = subprocess.run(cli(tmp_path / "ds", "task=tiny-reach-gren-v0"), env=cli_env(), capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean" in lines[0] and "tiny-reach-red-v0" in lines[0], res.stderr
