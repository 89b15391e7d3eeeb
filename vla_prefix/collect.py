r"""Collect scripted-expert demonstrations into a demo dataset (see `vla_prefix.data.dataset`).

    python -m vla_prefix.collect suite=tabletop task=pretrain n_demos=50 out=data/tabletop
    python -m vla_prefix.collect suite=metaworld task=MT10 n_demos=25 out=data/mt10 workers=2
    python -m vla_prefix.collect suite=metaworld task=[metaworld-reach-v3,metaworld-push-v3] n_demos=25 \
        out=data/mw image_size=84 cameras=[corner2,gripperPOV]
    python -m vla_prefix.collect suite=mine task=my-task-v0 task_modules=[my_tasks] n_demos=10 out=data/mine

Seeds come from the `train` range only (`vla_prefix.seeds`), starting at `seed_offset`. For each
task the expert runs on seeds in order; failed episodes are recorded and skipped, until `n_demos`
succeed or `max_attempts` seeds were tried. The dataset then holds exactly the first `n_demos`
successful seeds, whatever the number of workers (no worker ever runs a seed that could exceed
`n_demos`, counting every running seed as a success in advance).

Rerunning the same command resumes an interrupted run (even after `kill -9`) and never duplicates an
episode; a larger `n_demos` or more tasks append to the dataset. An `out` collected with another
suite, image size or cameras is refused. Hydra writes nothing (no outputs/ folder, no .hydra/) and
does not change the working directory.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
import multiprocessing as mp
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from . import __version__
from .data.dataset import SUMMARY, DatasetWriter, write_episode
from .utils.hydra_app import check_overrides, quiet_defaults, quiet_hydra, setting_names, to_dataclass
from .errors import ConfigError, GLBackendError, VLAPrefixError, cli_errors
from .seeds import seeds
from .sim import registry
from .utils.atomic import atomic_write_json
from .utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    """Settings of `python -m vla_prefix.collect` (every field is a command-line override)."""

    # Hydra: write nothing, keep the working directory, log to stdout.
    defaults: list[Any] = quiet_defaults()
    hydra: Any = quiet_hydra("vla_prefix.collect", __doc__)

    suite: str = "tabletop"  # tabletop | metaworld | a suite registered by `task_modules`
    task: Any = MISSING  # a task id, a split name, or a list of them: task=[a,b] (or task="'a,b'")
    n_demos: int = 50  # successful episodes per task
    out: str = MISSING  # dataset folder (created, or resumed/appended if it holds a matching dataset)
    image_size: int = 64  # square images, pixels
    cameras: Optional[list[str]] = None  # camera names; None: the suite's default cameras
    workers: int = 1  # processes running the expert (1: in this process)
    task_modules: list[str] = field(default_factory=list)  # user modules that call register_task
    max_attempts: Optional[int] = None  # seeds tried per task at most; None: 2 * n_demos + 10
    seed_offset: int = 0  # the first train seed tried is SEED_RANGES["train"][seed_offset]
    action_noise: float = 0.0  # std of Gaussian noise on the EXECUTED xyz action (DART); the clean expert action is recorded
    progress: bool = True  # a tqdm progress bar on stderr


ConfigStore.instance().store(name="collect", node=CollectConfig)
_FIELDS = setting_names(CollectConfig)


# ---------------------------------------------------------------------------- config


def _as_config(cfg: CollectConfig | DictConfig | dict) -> CollectConfig:
    """A validated CollectConfig from a dataclass, a Hydra DictConfig or a plain dict."""
    cfg = to_dataclass(cfg, CollectConfig, "collect", ("task", "out"),
                       "python -m vla_prefix.collect suite=... task=... out=...")
    if cfg.n_demos < 1:
        raise ConfigError(f"n_demos={cfg.n_demos}: ask for at least 1 demo per task")
    if cfg.image_size < 8:
        raise ConfigError(f"image_size={cfg.image_size}: use at least 8 pixels (64 is the default)")
    if cfg.workers < 1:
        raise ConfigError(f"workers={cfg.workers}: use at least 1 (1 runs in this process)")
    if cfg.max_attempts is not None and cfg.max_attempts < cfg.n_demos:
        raise ConfigError(f"max_attempts={cfg.max_attempts} is below n_demos={cfg.n_demos}; raise it or leave it unset")
    if cfg.cameras is not None and not cfg.cameras:
        raise ConfigError("cameras=[]: name at least one camera, e.g. cameras=[corner2,gripperPOV], or leave it unset")
    return cfg


def _task_names(task: Any) -> str:
    return ",".join(str(t) for t in task) if isinstance(task, (list, tuple)) else str(task)


def _env_kwargs(cfg: CollectConfig) -> dict:
    kwargs: dict[str, Any] = {"image_size": int(cfg.image_size)}
    if cfg.cameras is not None:
        kwargs["cameras"] = tuple(cfg.cameras)
    return kwargs


# ---------------------------------------------------------------------------- one episode (in a worker)

_ENVS: dict[tuple, Any] = {}  # per process: (task id, kwargs) -> env, the most recent few kept open
_MAX_ENVS = 2  # seeds are handed out task after task, so two open envs (GL contexts) suffice


def _env(task: str, env_kwargs: dict):
    key = (task, tuple(sorted(env_kwargs.items())))
    if key not in _ENVS:
        while len(_ENVS) >= _MAX_ENVS:
            _ENVS.pop(next(iter(_ENVS))).close()
        _ENVS[key] = registry.make_env(task, **env_kwargs)
    return _ENVS[key]


def _close_envs() -> None:
    while _ENVS:
        _, env = _ENVS.popitem()
        env.close()


def run_expert_episode(env, expert, seed: int, action_noise: float = 0.0) -> tuple[bool, dict]:
    """Run `expert` from `env.reset(seed=seed)` until success or the time limit.

    Returns (success, {"images": uint8 (T, n_cam, H, W, 3), "proprio": float32 (T, 4),
    "actions": float32 (T, 4)}): the observation at each step and the expert's action after it.
    The episode stops at the first step whose `info["is_success"]` is true.

    `action_noise` > 0 perturbs the executed xyz (DART: Laskey et al. 2017) with Gaussian noise seeded by
    `seed`, while the recorded label stays the expert's clean action; the closed-loop expert then
    demonstrates how to recover from the small errors a learned policy makes.
    """
    obs, info = env.reset(seed=seed)
    expert.reset()
    low, high = env.action_space.low, env.action_space.high
    noise_rng = np.random.default_rng([seed, 0xDA27])
    images, proprio, actions = [], [], []
    success = False
    while True:
        action = np.asarray(expert.act(env.unwrapped, obs), np.float32)
        if action.shape != (4,):
            raise ValueError(f"the expert returned an action of shape {action.shape}; expected (4,)")
        action = np.clip(action, low, high)
        images.append(obs["image"])
        proprio.append(obs["proprio"])
        actions.append(action)
        executed = action.copy()
        if action_noise > 0:
            executed[:3] += noise_rng.normal(0.0, action_noise, 3).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(np.clip(executed, low, high))
        if info.get("is_success", False):
            success = True
            break
        if terminated or truncated:
            break
    episode = {
        "images": np.stack(images).astype(np.uint8, copy=False),
        "proprio": np.stack(proprio).astype(np.float32),
        "actions": np.stack(actions).astype(np.float32),
    }
    return success, episode


def _episode_job(job: dict) -> dict:
    """Run one seed; a success is written to `job["tmp"]`. Runs in a worker (or in-process)."""
    task, seed = job["task"], job["seed"]
    try:
        env = _env(task, job["env_kwargs"])
        expert = registry.make_expert(task)
        success, episode = run_expert_episode(env, expert, seed, job["action_noise"])
        expected = (job["n_cameras"], job["image_size"], job["image_size"], 3)  # the dataset's spec
        cameras = getattr(env.unwrapped, "cameras", None)
        if episode["images"].shape[1:] != expected or (cameras is not None and list(cameras) != job["cameras"]):
            raise ValueError(
                f"the env returned images {episode['images'].shape[1:]} from cameras {cameras}; "
                f"the dataset holds {expected} from {job['cameras']}"
            )
        length = len(episode["actions"])
        if success:
            attrs = {"task": task, "seed": seed, "instruction": job["instruction"], "cameras": job["cameras"]}
            write_episode(job["tmp"], episode, attrs)
    except VLAPrefixError:
        raise
    except Exception as err:
        raise RuntimeError(f"collecting {task} seed {seed} failed: {type(err).__name__}: {err}") from err
    return {"task": task, "seed": seed, "success": success, "length": length, "tmp": job["tmp"] if success else None}


def _init_worker(suite: str, task_modules: list[str], parent_pid: int) -> None:
    """Worker start-up: one software-GL thread, the same tasks as the parent, and exit with the parent."""
    os.environ.setdefault("LP_NUM_THREADS", "1")  # Mesa llvmpipe: no thread pool per worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which shuts the pool down
    registry.load_task_modules(task_modules)
    registry.load_suite(suite)

    def watch_parent() -> None:  # after `kill -9` of the collector, don't keep running seeds
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()


class _InlinePool:
    """The executor interface, running each job at submit time in this process (workers=1)."""

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 - re-raised by fut.result()
            fut.set_exception(err)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        _close_envs()


# ---------------------------------------------------------------------------- the collection loop


def _check_gl() -> None:
    """Fail early, naming the fix, if MuJoCo cannot render offscreen (or cannot even load its GL backend)."""
    try:
        from .sim import render
    except Exception as err:  # e.g. MUJOCO_GL=osmesa without libOSMesa breaks `import mujoco`
        raise GLBackendError(
            f"MuJoCo could not load its OpenGL backend (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): "
            f"{type(err).__name__}: {err}. Install a GL backend (Debian/Ubuntu: `apt-get install -y libegl1 libgl1 "
            "libosmesa6`) and set MUJOCO_GL=egl (GPU or Mesa) or MUJOCO_GL=osmesa (software)"
        ) from None
    render.check_gl()



def _probe(task: registry.TaskInfo, env_kwargs: dict, suite: str) -> dict:
    """Build one env to learn the camera names and check the observation against the interface."""
    env = registry.make_env(task.id, **env_kwargs)
    try:
        obs, _ = env.reset(seed=seeds("train", 1)[0])
        cams = getattr(env.unwrapped, "cameras", None) or env_kwargs.get("cameras")
    finally:
        env.close()
    image, proprio = np.asarray(obs["image"]), np.asarray(obs["proprio"])
    size = env_kwargs["image_size"]
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != (size, size, 3) or proprio.shape != (4,):
        raise ConfigError(
            f"task {task.id!r}: the env returned image {image.dtype} {image.shape} and proprio {proprio.shape}; "
            f"the env interface asks for uint8 (n_cameras, {size}, {size}, 3) and (4,)"
        )
    n_cams = int(image.shape[0])
    if cams is not None and len(cams) != n_cams:
        raise ConfigError(f"task {task.id!r}: {n_cams} images for the cameras {list(cams)}")
    cams = list(cams) if cams is not None else None
    return {"suite": suite, "image_size": size, "cameras": cams, "n_cameras": n_cams}


def _task_meta(task: registry.TaskInfo, cfg: CollectConfig, spec: dict) -> dict:
    import gymnasium
    import mujoco

    versions = {"vla_prefix": __version__, "mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__}
    if task.suite == "metaworld":
        import metaworld

        versions["metaworld"] = getattr(metaworld, "__version__", "unknown")
    return {
        "instruction": task.instruction,
        "paraphrases": list(task.paraphrases),
        "suite": task.suite,
        "family": task.family,
        "split": task.split,
        "gym_id": task.gym_id,
        "max_episode_steps": task.max_episode_steps,
        "env_kwargs": {"image_size": spec["image_size"], "cameras": spec["cameras"]},
        "versions": versions,
        "seed_range": "train",
        "seed_offset": cfg.seed_offset,
        "expert_version": task.extra.get("expert_version"),  # None: the suite does not version its experts
    }


class _SeedPlan:
    """Hands out (task, seed) jobs, tasks in order and seeds in order within a task.

    A seed is handed out only while `n_ok + running < n_demos` for its task: even if every running
    seed succeeds the task cannot pass `n_demos`. So no success is ever surplus, the seeds tried form
    a prefix of the candidates, and the dataset holds exactly the first `n_demos` successful seeds,
    however many workers run and in whatever order they finish.
    """

    def __init__(self, todo: dict[str, list[int]], n_ok: dict[str, int], n_demos: int):
        self.todo, self.n_ok, self.n_demos = todo, n_ok, n_demos
        self.running = {task: 0 for task in todo}

    def next(self) -> tuple[str, int] | None:
        for task, seeds_left in self.todo.items():
            if seeds_left and self.n_ok[task] + self.running[task] < self.n_demos:
                self.running[task] += 1
                return task, seeds_left.pop(0)
        return None

    def finished(self, task: str, success: bool) -> None:
        self.running[task] -= 1
        self.n_ok[task] += int(success)


def _make_pool(cfg: CollectConfig):
    if cfg.workers == 1:
        return _InlinePool(), 1
    pool = ProcessPoolExecutor(
        cfg.workers,
        mp_context=mp.get_context("spawn"),  # fork is unsafe with GL contexts and threads
        initializer=_init_worker,
        initargs=(cfg.suite, list(cfg.task_modules), os.getpid()),
    )
    return pool, 2 * cfg.workers  # jobs queued per worker: keep each busy while results are committed


def collect(cfg: CollectConfig | DictConfig | dict) -> dict:
    """Collect `n_demos` successful expert episodes per task into `cfg.out`; returns the summary dict.

    Resumable and appendable (see the module docstring). Raises ConfigError for bad settings or an
    incompatible `out`, UnknownTaskError for an unknown task, GLBackendError without offscreen GL,
    and VLAPrefixError when a task stays short of `n_demos` after `max_attempts` seeds (the episodes
    collected are kept; rerun with a larger `max_attempts` to continue).
    """
    cfg = _as_config(cfg)
    _check_gl()
    registry.load_task_modules(list(cfg.task_modules))
    tasks = {t.id: t for t in registry.resolve_tasks(cfg.suite, _task_names(cfg.task))}
    env_kwargs = _env_kwargs(cfg)
    max_attempts = cfg.max_attempts if cfg.max_attempts is not None else 2 * cfg.n_demos + 10
    candidates = seeds("train", max_attempts, offset=cfg.seed_offset)
    spec = {**_probe(next(iter(tasks.values())), env_kwargs, cfg.suite), "action_noise": float(cfg.action_noise)}
    start, new_frames = time.perf_counter(), 0

    with DatasetWriter(cfg.out, spec) as writer:
        if writer.removed_orphans:
            log.info("removed %d unlisted episode(s) left by an interrupted run", writer.removed_orphans)
        for tid, task in tasks.items():
            writer.add_task(tid, _task_meta(task, cfg, spec))
        plan = _SeedPlan(
            todo={tid: [s for s in candidates if s not in writer.resolved_seeds(tid)] for tid in tasks},
            n_ok={tid: writer.task_record(tid)["n_episodes"] for tid in tasks},
            n_demos=cfg.n_demos,
        )
        bar = progress_bar(len(tasks) * cfg.n_demos, "collect", unit="demo", enabled=cfg.progress,
                           initial=sum(min(n, cfg.n_demos) for n in plan.n_ok.values()))
        pool, slots = _make_pool(cfg)
        pending: set[Future] = set()
        try:
            while True:
                while len(pending) < slots and (job := plan.next()) is not None:
                    tid, seed = job
                    pending.add(pool.submit(_episode_job, {
                        "task": tid, "seed": seed, "env_kwargs": env_kwargs, "tmp": str(writer.new_tmp_path(tid, seed)),
                        "instruction": tasks[tid].instruction, **spec}))  # fmt: skip
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    res = fut.result()  # a worker's exception stops the run here
                    plan.finished(res["task"], res["success"])
                    if res["success"]:
                        writer.commit_episode(res["task"], res["seed"], res["tmp"], res["length"])
                        new_frames += res["length"]
                        bar.update(1)
                    else:
                        writer.record_failure(res["task"], res["seed"])
                    n_failed = sum(len(writer.task_record(t)["failed_seeds"]) for t in tasks)
                    bar.set_postfix(failed=n_failed, refresh=False)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        summary = _summary(writer, cfg, spec, time.perf_counter() - start, new_frames)
        atomic_write_json(Path(cfg.out) / SUMMARY, summary)

    for tid in tasks:
        rec = summary["tasks"][tid]
        log.info("%s: %d demos, expert success %.2f (%d seeds tried)",
                 tid, rec["n_episodes"], rec["expert_success_rate"], rec["n_attempts"])  # fmt: skip
    short = [
        f"{tid} ({rec['n_episodes']}/{cfg.n_demos}, expert success {rec['expert_success_rate']:.2f})"
        for tid, rec in summary["tasks"].items()
        if tid in tasks and rec["n_episodes"] < cfg.n_demos
    ]
    if short:
        raise VLAPrefixError(
            f"after max_attempts={max_attempts} seeds, too few demos for: {', '.join(short)}; the episodes so far "
            f"are kept in {cfg.out}; rerun with a larger max_attempts to continue, or check the expert"
        )
    return summary


def _summary(writer: DatasetWriter, cfg: CollectConfig, spec: dict, seconds: float, new_frames: int) -> dict:
    tasks = {}
    for tid, rec in writer.index["tasks"].items():
        frames = sum(e["length"] for e in writer.index["episodes"] if e["task"] == tid)
        tasks[tid] = {
            "n_episodes": rec["n_episodes"],
            "n_frames": frames,
            "expert_success_rate": rec["expert_success_rate"],
            "n_attempts": rec["n_attempts"],
            "failed_seeds": rec["failed_seeds"],
        }
    n_eps = sum(t["n_episodes"] for t in tasks.values())
    n_att = sum(t["n_attempts"] for t in tasks.values())
    return {
        "out": str(cfg.out),
        "spec": spec,
        "config": {k: getattr(cfg, k) for k in _FIELDS},
        "tasks": tasks,
        "totals": {
            "n_tasks": len(tasks),
            "n_episodes": n_eps,
            "n_frames": sum(t["n_frames"] for t in tasks.values()),
            "n_attempts": n_att,
            "expert_success_rate": n_eps / n_att if n_att else None,
        },
        "this_run": {"seconds": round(seconds, 2), "new_frames": new_frames,
                     "frames_per_second": round(new_frames / seconds, 1) if seconds > 0 else None},  # fmt: skip
    }


# ---------------------------------------------------------------------------- command line


INTERRUPTED = "interrupted; every episode listed so far is kept: rerun the same command to resume"


@hydra.main(version_base=None, config_name="collect")
@cli_errors(interrupted=INTERRUPTED)
def _hydra_main(cfg: DictConfig) -> None:
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL logs an INFO line about its accelerator
    summary = collect(cfg)
    totals = summary["totals"]
    print(
        f"{totals['n_episodes']} episodes of {totals['n_tasks']} task(s) in {summary['out']} "
        f"(expert success {totals['expert_success_rate']:.2f}); summary: {Path(summary['out']) / SUMMARY}"
    )


@cli_errors(interrupted=INTERRUPTED)
def main() -> None:
    check_overrides(sys.argv[1:], CollectConfig)
    _hydra_main()


if __name__ == "__main__":
    main()
