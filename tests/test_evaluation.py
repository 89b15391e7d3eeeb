"""Evaluation: Wilson/bootstrap statistics, vector-env rollouts, videos, eval_info.json, the evaluate app.

Rollouts run real MuJoCo tasks: tests/tiny_task.py (`tiny`) and tests/eval_tiny_task.py (`evaltiny`,
where a constant action succeeds or fails predictably).
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import eval_tiny_task  # noqa: F401  (registers the evaltiny suite)
import imageio.v3 as iio
import numpy as np
import pytest
import tiny_task  # noqa: F401  (registers the tiny suite)
import torch

from backbones import backbone
from vla_prefix.errors import ConfigError, FingerprintMismatchError, UnknownTaskError, cli_errors
from vla_prefix.evaluate import EvalConfig, evaluate
from vla_prefix.utils.hydra_app import check_overrides
from vla_prefix.evaluation import (describe_failures, eval_info, format_table, rollout, stratified_bootstrap,
                                   wilson_interval)
from vla_prefix.evaluation.stats import Z95
from vla_prefix.policy import VLAPolicy
from vla_prefix.prefix.config import PrefixConfig, StreamConfig
from vla_prefix.prefix.io import save_prefix
from vla_prefix.prefix.prefix_set import PrefixSet
from vla_prefix.seeds import SEED_RANGES, seeds
from vla_prefix.sim.registry import make_env

TESTS_DIR = str(Path(__file__).parent)
RIGHT, LEFT = "evaltiny-right-v0", "evaltiny-left-v0"
RED, BLUE = "tiny-reach-red-v0", "tiny-reach-blue-v0"
MODULES = ["tiny_task", "eval_tiny_task"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedPolicy:
    """Acts from the instruction alone: "move right" -> +x, "move left" -> -x (or always `fixed`).

    Records how many rows each act_batch call asked for.
    """

    def __init__(self, chunk: int = 4, fixed: str | None = None):
        self.chunk, self.fixed, self.rows = chunk, fixed, []

    def act_batch(self, obs: dict, instructions: list[str]) -> np.ndarray:
        assert obs["image"].shape[0] == obs["proprio"].shape[0] == len(instructions)
        self.rows.append(len(instructions))
        out = np.zeros((len(instructions), self.chunk, 4), np.float32)
        for i, text in enumerate(instructions):
            out[i, :, 0] = 1.0 if (self.fixed or text) == "move right" else -1.0
        out[:, :, 3] = -1.0
        return out


def reference_episode(task: str, seed: int, action: np.ndarray) -> dict:
    """The same episode run by a plain single-env loop: until success, termination or the time limit."""
    env = make_env(task, image_size=16)
    try:
        env.reset(seed=seed)
        total, steps = 0.0, 0
        while True:
            _, reward, terminated, truncated, info = env.step(action)
            total, steps = total + reward, steps + 1
            if info["is_success"] or terminated or truncated:
                return {"seed": seed, "success": bool(info["is_success"]), "steps": steps, "return": total}
    finally:
        env.close()


# ---------------------------------------------------------------------------- statistics


def _wilson_by_bisection(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval by its definition: all p with |k/n - p| <= z * sqrt(p (1 - p) / n)."""
    phat = k / n
    inside = lambda p: abs(phat - p) <= z * math.sqrt(p * (1 - p) / n)  # noqa: E731

    def edge(a, b):  # a inside, b outside
        for _ in range(100):
            m = (a + b) / 2
            a, b = (m, b) if inside(m) else (a, m)
        return a

    return (0.0 if k == 0 else edge(phat, 0.0)), (1.0 if k == n else edge(phat, 1.0))


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(45, 50) == pytest.approx((0.78640, 0.95653), abs=1e-5)
    for k, n in [(0, 1), (1, 1), (1, 3), (7, 20), (33, 100), (99, 100), (0, 1000)]:
        assert wilson_interval(k, n) == pytest.approx(_wilson_by_bisection(k, n), abs=1e-9)
        lo, hi = wilson_interval(n - k, n)
        assert wilson_interval(k, n) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)  # symmetric
    width = lambda z: np.subtract(*wilson_interval(5, 10, z=z)[::-1])  # noqa: E731
    assert width(1.0) < width(Z95) < width(2.576)  # 68% < 95% < 99%
    for bad in [(0, 0), (11, 10), (-1, 10)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_stratified_bootstrap_is_seeded_and_sensible():
    rng = np.random.default_rng(1)
    groups = [rng.random(40) < 0.5, rng.random(25) < 0.9, np.ones(10)]
    a = stratified_bootstrap(groups, n_resamples=2000, seed=0)
    assert a == stratified_bootstrap(groups, n_resamples=2000, seed=0)  # deterministic
    returns = [rng.random(30), rng.random(20)]  # continuous values: another seed moves the quantiles
    assert stratified_bootstrap(returns, seed=0) != stratified_bootstrap(returns, seed=1)
    assert a[0] == pytest.approx(np.mean([g.mean() for g in groups]))  # the mean of the task means
    assert a[1] < a[0] < a[2]
    assert stratified_bootstrap([np.ones(5), np.zeros(5)]) == (0.5, 0.5, 0.5)  # no spread within a task
    # one task of 50/100: the bootstrap interval is close to the binomial one (Wilson: [0.404, 0.596])
    est, lo, hi = stratified_bootstrap([np.arange(100) % 2], n_resamples=4000, seed=0)
    assert est == 0.5 and lo == pytest.approx(0.40, abs=0.02) and hi == pytest.approx(0.60, abs=0.02)
    with pytest.raises(ValueError):
        stratified_bootstrap([np.ones(3), []])


# ---------------------------------------------------------------------------- rollout mechanics


@pytest.mark.parametrize("n_action_steps,num_envs", [(1, 1), (3, 3)])
def test_rollout_matches_single_env_loop_and_counts_chunks(n_action_steps, num_envs):
    policy = ScriptedPolicy(chunk=4, fixed="move right")
    n = 5
    result = rollout(policy, [RIGHT, LEFT], n, n_action_steps=n_action_steps, num_envs=num_envs, image_size=16,
                     vector="sync")
    right = [reference_episode(RIGHT, s, np.array([1, 0, 0, -1], np.float32)) for s in seeds("eval", n)]
    left = [reference_episode(LEFT, s, np.array([1, 0, 0, -1], np.float32)) for s in seeds("eval", n)]
    assert [e.record() for e in result.episodes[RIGHT]] == right
    assert [e.record() for e in result.episodes[LEFT]] == left
    assert all(e["success"] for e in right) and not any(e["success"] for e in left)  # constant +x: right only
    assert {e["steps"] for e in left} == {eval_tiny_task.MAX_STEPS}  # failures run to the time limit
    assert len({e["steps"] for e in right}) > 1  # the start varies with the seed
    # each episode asks for ceil(steps / n_action_steps) chunks, batched over the envs that need one
    all_eps = result.episodes[RIGHT] + result.episodes[LEFT]
    assert sum(policy.rows) == sum(math.ceil(e.steps / n_action_steps) for e in all_eps)
    assert max(policy.rows) <= num_envs and len(policy.rows) == result.policy_calls
    assert result.env_steps == sum(e.steps for e in all_eps)
    assert result.settings["n_action_steps"] == n_action_steps and result.settings["num_envs"] == num_envs


def test_rollout_routes_per_row_instructions_and_val_seeds():
    policy = ScriptedPolicy()  # follows each row's own instruction
    result = rollout(policy, [RIGHT, LEFT], 4, num_envs=3, image_size=16, vector="sync", seed_range="val",
                     seed_offset=10)
    assert result.success_rate(RIGHT) == result.success_rate(LEFT) == 1.0
    assert [e.seed for e in result.episodes[LEFT]] == seeds("val", 4, offset=10)
    assert result.settings["seed_range"] == "val" and result.settings["n_action_steps"] == policy.chunk
    assert max(policy.rows) == 3  # rows of both tasks in one batch


def test_rollout_refuses_bad_settings():
    policy = ScriptedPolicy(chunk=2)
    with pytest.raises(ConfigError, match="n_action_steps=3 exceeds the policy's chunk length H=2"):
        rollout(policy, [RIGHT], 1, n_action_steps=3, image_size=16, vector="sync")
    with pytest.raises(ConfigError, match="seed_range='train'"):
        rollout(policy, [RIGHT], 1, seed_range="train", image_size=16)
    with pytest.raises(ConfigError, match="n_episodes=0"):
        rollout(policy, [RIGHT], 0, image_size=16)
    with pytest.raises(UnknownTaskError, match="did you mean"):
        rollout(policy, ["evaltiny-rihgt-v0"], 1, image_size=16)
    with pytest.raises(ConfigError, match="video_dir"):
        rollout(policy, [RIGHT], 1, image_size=16, video_episodes=1)


def test_videos_from_env_render(tmp_path):
    result = rollout(ScriptedPolicy(), [RIGHT], 3, image_size=16, vector="sync", video_episodes=2,
                     video_dir=tmp_path / "videos", video_size=48)
    eps = result.episodes[RIGHT]
    assert [e.video is not None for e in eps] == [True, True, False]
    for e in eps[:2]:
        frames = iio.imread(e.video)
        assert frames.shape == (e.steps + 1, 48, 48, 3)  # reset frame + one per step, rendered at video_size
        assert Path(e.video).stat().st_size < 50_000
    info = eval_info(result, relative_to=tmp_path)
    assert info["tasks"][RIGHT]["videos"] == [f"videos/{RIGHT}/episode00{k}_seed{eps[k].seed}.mp4" for k in (0, 1)]


# ---------------------------------------------------------------------------- the real backbone


def test_real_backbone_async_rollout_eval_info_and_determinism(tmp_path):
    policy = VLAPolicy(backbone("llama"), None)  # untrained: any success rate is fine
    kwargs = dict(n_action_steps=2, num_envs=2, image_size=32, video_episodes=1, task_modules=["tiny_task"])
    result = rollout(policy, [RED, BLUE], 3, vector="async", video_dir=tmp_path / "a", **kwargs)
    info = eval_info(result, {"policy": "tiny llama"}, relative_to=tmp_path / "a")
    assert list(info["tasks"]) == [RED, BLUE]
    for task, t in info["tasks"].items():
        assert t["n_episodes"] == 3 and t["instruction"] == tiny_task_instruction(task)
        assert [e["seed"] for e in t["episodes"]] == seeds("eval", 3) == [SEED_RANGES["eval"][i] for i in range(3)]
        assert all(set(e) == {"seed", "success", "steps", "return"} for e in t["episodes"])
        assert all(1 <= e["steps"] <= 30 and isinstance(e["success"], bool) for e in t["episodes"])
        assert t["success_rate"] == sum(e["success"] for e in t["episodes"]) / 3
        assert t["ci95"] == list(wilson_interval(sum(e["success"] for e in t["episodes"]), 3))
        video = iio.imread(tmp_path / "a" / t["videos"][0])  # the observation camera, upscaled from 32 px
        assert video.shape == (t["episodes"][0]["steps"] + 1, 128, 128, 3)
    overall = info["overall"]
    assert overall["n_tasks"] == 2 and overall["n_episodes"] == 6
    assert overall["ci95"][0] <= overall["success_rate"] <= overall["ci95"][1]
    s = info["settings"]
    assert (s["n_action_steps"], s["num_envs"], s["vector"]) == (2, 2, "async")
    assert (s["image_size"], s["cameras"]) == (32, ["top"])
    assert (s["seed_range"], s["seed_offset"], s["policy"]) == ("eval", 0, "tiny llama")
    json.dumps(info)  # serialisable
    # the same policy in one process (sync) gives the same episodes: the schedule ignores timing
    again = rollout(policy, [RED, BLUE], 3, vector="sync", video_dir=tmp_path / "b", **kwargs)
    assert {t: [e.record() for e in eps] for t, eps in again.episodes.items()} == \
        {t: [e.record() for e in eps] for t, eps in result.episodes.items()}
    assert again.policy_calls == result.policy_calls


def test_failures_are_counted_by_engaged_object():
    from vla_prefix.evaluation import Episode, RolloutResult

    eps = [Episode("t", 1, False, 9, 0.0, None, "distractor red ball"), Episode("t", 2, True, 5, 1.0, None, "target"),
           Episode("t", 3, False, 9, 0.0, None, "none"), Episode("t", 4, False, 9, 0.0, None, "distractor red ball")]
    info = eval_info(RolloutResult({"t": eps}, {}, {"t": "put the red cube in the bowl"}))
    assert info["tasks"]["t"]["failures_by_engaged_object"] == {"distractor red ball": 2, "none": 1}
    assert info["tasks"]["t"]["episodes"][1]["engaged_object"] == "target"
    assert "t: distractor red ball 2, none 1" in format_table(info)
    counts = {"distractor yellow cube": 6, "target": 2, "distractor red ball": 2, "none": 1}
    assert describe_failures(counts) == "a distractor 8 (most often the yellow cube: 6), the target 2, nothing 1"


def test_tabletop_rollout_reports_engaged_object():
    class StandStill:
        def act_batch(self, obs, instructions):
            return np.zeros((len(instructions), 2, 4), np.float32)

    task = "tabletop-reach-red-cube-v0"
    result = rollout(StandStill(), [task], 2, num_envs=2, vector="async", image_size=16, max_steps=5)
    info = eval_info(result)
    labels = [e["engaged_object"] for e in info["tasks"][task]["episodes"]]
    assert len(labels) == 2 and all(isinstance(x, str) for x in labels)
    assert sum(info["tasks"][task]["failures_by_engaged_object"].values()) == 2  # standing still never succeeds


def tiny_task_instruction(task: str) -> str:
    return f"reach the {task.split('-')[2]} ball"


# ---------------------------------------------------------------------------- the evaluate app


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny backbone, a prefix trained (well, initialised) on it, and one from another backbone."""
    root = tmp_path_factory.mktemp("eval_models")
    vla = backbone("llama")
    vla.save_pretrained(root / "base")
    config = PrefixConfig(visual=StreamConfig(length=2, depth="deep"), language=StreamConfig(length=2, depth="shallow"))
    save_prefix(root / "red.safetensors", PrefixSet(config, vla, seed=1), vla, task=RED,
                instruction="reach the red ball")
    other = backbone("llama")
    with torch.no_grad():
        other.head.parameters().__next__().add_(1.0)
    other.refresh_fingerprint()
    save_prefix(root / "other.safetensors", PrefixSet(config, other), other, task=RED)
    return root


def settings(saved, out, **kw) -> dict:
    return {"backbone": str(saved / "base"), "prefix": str(saved / "red.safetensors"), "suite": "tiny", "task": RED,
            "task_modules": ["tiny_task"], "n_episodes": 2, "num_envs": 1, "video_episodes": 1, "out": str(out),
            "progress": False, **kw}  # fmt: skip


def test_evaluate_writes_complete_deterministic_eval_info(saved, tmp_path):
    info = evaluate(settings(saved, tmp_path / "a", n_action_steps=3))
    on_disk = json.loads((tmp_path / "a" / "eval_info.json").read_text())
    assert on_disk == info
    s = info["settings"]
    assert s["n_action_steps"] == 3 and s["image_size"] == 32 and s["seed_range"] == "eval"
    assert s["prefix"] == str(saved / "red.safetensors") and s["policy"]["prefix_task"] == RED
    assert s["backbone_fingerprint"] == s["policy"]["backbone_fingerprint"] and len(s["backbone_fingerprint"]) == 16
    import torch  # the packages (and CPU kernels) whose numerics decide the rollouts are recorded
    assert s["versions"]["torch"] == torch.__version__ and s["versions"]["torch_cpu_capability"]
    assert {"mujoco", "transformers", "timm"} <= set(s["versions"])
    assert (tmp_path / "a" / info["tasks"][RED]["videos"][0]).is_file()
    assert "overall (mean of tasks)" in format_table(info)
    again = evaluate(settings(saved, tmp_path / "b", n_action_steps=3))
    for d in (info, again):
        d.pop("wall_s")
    assert again == info  # identical but for wall time (video paths are relative to out)
    zero_shot = evaluate(settings(saved, tmp_path / "c", prefix=None, video_episodes=0))
    assert zero_shot["settings"]["prefix"] is None and zero_shot["settings"]["n_action_steps"] == 4  # the chunk H


def test_evaluate_bad_inputs(saved, tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        evaluate(settings(saved, tmp_path, backbone=str(tmp_path / "missing")))
    with pytest.raises(FingerprintMismatchError, match="retrain the prefix"):
        evaluate(settings(saved, tmp_path, prefix=str(saved / "other.safetensors")))
    with pytest.raises(UnknownTaskError, match="did you mean"):
        evaluate(settings(saved, tmp_path, task="tiny-reach-rde-v0"))
    with pytest.raises(ConfigError, match="n_episodes=0"):
        evaluate(settings(saved, tmp_path, n_episodes=0))
    with pytest.raises(ConfigError, match="did you mean n_episodes"):
        evaluate({**settings(saved, tmp_path), "n_episode": 3})
    with pytest.raises(ConfigError, match="did you mean n_action_steps"):
        check_overrides(["n_action_step=2"], EvalConfig)
    with pytest.raises(ConfigError, match="exceeds the backbone's chunk length H=4"):
        evaluate(settings(saved, tmp_path, n_action_steps=5))
    with pytest.raises(ConfigError, match="vision encoder takes 32px"):
        evaluate(settings(saved, tmp_path, image_size=64))
    with pytest.raises(ConfigError, match="seed_range='train'"):
        evaluate(settings(saved, tmp_path, seed_range="train"))
    with pytest.raises(ConfigError, match="policy='grpc' is not available"):
        evaluate(settings(saved, tmp_path, policy="grpc"))
    with pytest.raises(ConfigError, match="`server_url` is required"):  # remote: tests/test_server.py
        evaluate(settings(saved, tmp_path, policy="remote"))


def test_cli_prints_one_line_for_a_missing_backbone(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "vla_prefix.evaluate", f"backbone={tmp_path / 'nope'}", "suite=tiny", f"task={RED}",
         "task_modules=[tiny_task]", f"out={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: backbone=")


def test_cli_errors_turn_user_errors_and_ctrl_c_into_one_line_each(capsys):
    def fail(exc):
        raise exc

    with pytest.raises(SystemExit) as stop:
        cli_errors(fail)(ConfigError("n_episodes=0: use n_episodes>=1"))
    assert stop.value.code == 2 and capsys.readouterr().err == "error: n_episodes=0: use n_episodes>=1\n"
    with pytest.raises(SystemExit) as stop:
        cli_errors(interrupted="interrupted; rerun to resume")(fail)(KeyboardInterrupt())
    assert stop.value.code == 130 and capsys.readouterr().err == "interrupted; rerun to resume\n"
    with pytest.raises(ValueError):  # a bug is not a user mistake: its traceback stays
        cli_errors(fail)(ValueError("bug"))


def test_ctrl_c_stops_an_async_evaluation_with_one_line(saved, tmp_path):
    """Ctrl-C signals the whole process group: the env workers ignore it, the parent closes them and
    prints one line (exit 130), with no traceback from any process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-X", "faulthandler", "-m", "vla_prefix.evaluate", f"backbone={saved / 'base'}",
           "prefix=null", "suite=tiny", f"task={RED}", "task_modules=[tiny_task]", "n_episodes=1000", "num_envs=2",
           "video_episodes=0", "progress=true", f"out={tmp_path / 'out'}"]
    # A job a script starts with `&` inherits SIGINT ignored, and Python keeps an inherited SIG_IGN, so under
    # such a runner the child would never see Ctrl-C. A handler (unlike SIG_IGN) resets to the default on exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    stderr = b""
    deadline = time.monotonic() + 120
    while not re.search(rb"\b[1-9]\d*/1000", stderr):  # episodes are finishing: the rollout loop runs
        assert time.monotonic() < deadline and proc.poll() is None, stderr.decode()[-2000:]
        if select.select([proc.stderr], [], [], 1.0)[0]:
            stderr += os.read(proc.stderr.fileno(), 4096)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, rest = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # show where it hangs: faulthandler dumps every thread on SIGABRT
        os.killpg(proc.pid, signal.SIGABRT)
        _, rest = proc.communicate(timeout=30)
        pytest.fail("no exit 60 s after Ctrl-C:\n" + (stderr + rest).decode()[-6000:])
    lines = (stderr + rest).decode().replace("\r", "\n").strip().splitlines()
    assert proc.returncode == 130, lines[-20:]
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1].startswith("interrupted; the files already written are complete")
    assert not (tmp_path / "out" / "eval_info.json").exists()
