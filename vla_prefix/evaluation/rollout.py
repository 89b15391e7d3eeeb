"""`rollout`: run a policy on tasks in gymnasium vector envs, with batched inference.

    result = rollout(policy, ["tabletop-reach-red-cube-v0"], n_episodes=50, n_action_steps=2, num_envs=4)
    result.episodes["tabletop-reach-red-cube-v0"][0]   # Episode(seed=2000000, success=True, steps=37, ...)

The policy is anything with `act_batch(obs, instructions) -> (N, H, action_dim)`, where obs is
`{"image": uint8 (N, n_cam, S, S, 3), "proprio": float32 (N, 4)}` and instructions N strings (rows
may come from different tasks). A policy that picks a prefix per task (`BankPolicy`, `PolicyClient`)
sets `task_conditioned = True`; it is then called `act_batch(obs, task_ids, instructions=instructions)`.
Each predicted chunk executes its first `n_action_steps` actions;
a new chunk is asked for only when a row's queue is empty, one `act_batch` over all such rows.

Every task runs the same seeds, the first `n_episodes` of the `eval` range (or `val`, for choosing
checkpoints and hyperparameters) from `seed_offset`. Episodes are handed to vector-env slots in
order (task after task, seed after seed) whenever a slot finishes one. The envs step in lockstep,
so which slot runs which episode depends only on episode lengths, never on timing: the same
policy and settings give the same episodes, in sync or async mode.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from ..errors import ConfigError
from ..seeds import SEED_RANGES, seeds
from ..sim import registry
from ..sim.render import preload_triton
from ..utils.progress import progress_bar
from .slot import EvalSlot

EVAL_SEED_RANGES = ("eval", "val")  # train seeds are the demonstrations' seeds: never evaluate on them
VECTOR_MODES = ("async", "sync")


class Policy(Protocol):
    def act_batch(self, obs: dict, instructions: list[str]) -> np.ndarray:
        """obs with N rows, N instructions -> action chunks (N, H, action_dim).

        With `task_conditioned = True` on the policy: `act_batch(obs, task_ids, instructions=instructions)`.
        """


@dataclass
class Episode:
    """One evaluation episode. `steps` are env steps taken; `reward_sum` is the undiscounted return."""

    task: str
    seed: int
    success: bool
    steps: int
    reward_sum: float
    video: str | None = None
    engaged_object: str | None = None  # what the gripper went for, where the env says (info["engaged_object"])

    def record(self) -> dict:
        """The eval_info.json form: {seed, success, steps, return[, engaged_object]}."""
        rec = {"seed": self.seed, "success": self.success, "steps": self.steps, "return": self.reward_sum}
        return rec if self.engaged_object is None else {**rec, "engaged_object": self.engaged_object}


@dataclass
class RolloutResult:
    """Episodes per task (in seed order) and the settings that produced them."""

    episodes: dict[str, list[Episode]]
    settings: dict
    instructions: dict[str, str]
    policy_calls: int = 0  # act_batch calls
    env_steps: int = 0
    wall_s: float = 0.0
    max_episode_steps: dict[str, int] = field(default_factory=dict)

    def success_rate(self, task: str) -> float:
        eps = self.episodes[task]
        return sum(e.success for e in eps) / len(eps)


@dataclass
class _Job:
    task: str
    seed: int
    index: int  # episode index within the task
    video: str | None


def probe_env(task_id: str, env_kwargs: dict, seed: int) -> dict:
    """Build the task's env once and check the env interface.

    -> {observation_space, action_space, cameras (names or None), image_shape [n_cam, S, S, 3]}.
    """
    preload_triton()
    env = registry.make_env(task_id, **env_kwargs)
    try:
        obs, _ = env.reset(seed=seed)
        cameras = getattr(env.unwrapped, "cameras", None) or env_kwargs.get("cameras")
        spec = {"observation_space": env.observation_space, "action_space": env.action_space,
                "cameras": list(cameras) if cameras is not None else None}
    finally:
        env.close()
    image, proprio = np.asarray(obs["image"]), np.asarray(obs["proprio"])
    size = env_kwargs.get("image_size")
    bad_size = size is not None and image.shape[1:3] != (size, size)
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3 or bad_size:
        raise ConfigError(f"task {task_id!r} returned images {image.dtype} {image.shape}; the env interface asks for "
                          f"uint8 (n_cameras, {size}, {size}, 3)")
    if proprio.ndim != 1:
        raise ConfigError(f"task {task_id!r} returned proprio of shape {proprio.shape}; expected (proprio_dim,)")
    if not isinstance(spec["action_space"], gym.spaces.Box) or len(spec["action_space"].shape) != 1:
        raise ConfigError(f"task {task_id!r} has action space {spec['action_space']}; expected a 1-D Box")
    spec["image_shape"] = list(image.shape)
    return spec


def _modules_for(tasks: list[registry.TaskInfo], task_modules: Sequence[str]) -> tuple[str, ...]:
    """Modules a fresh worker process imports to register these tasks."""
    suites = [registry.SUITE_MODULES[t.suite] for t in tasks if t.suite in registry.SUITE_MODULES]
    return tuple(dict.fromkeys([*task_modules, *suites]))


def rollout(
    policy: Policy,
    task_ids: Sequence[str],
    n_episodes: int,
    *,
    n_action_steps: int | None = None,
    num_envs: int = 1,
    image_size: int = 64,
    cameras: Sequence[str] | None = None,
    max_steps: int | None = None,
    seed_range: str = "eval",
    seed_offset: int = 0,
    video_episodes: int = 0,
    video_dir: str | Path | None = None,
    video_size: int = 128,
    vector: str = "async",
    task_modules: Sequence[str] = (),
    progress: bool = False,
) -> RolloutResult:
    """Run `n_episodes` episodes of each task; see the module docstring.

    n_action_steps: actions executed per predicted chunk (None: the whole chunk).
    num_envs: vector-env slots; with `vector="async"` and num_envs > 1 each is a spawned process.
    cameras: env camera names (None: the suite's default). max_steps: override the task time limit.
    video_episodes: the first K episodes of each task are saved as
        `<video_dir>/<task>/episode<k>_seed<seed>.mp4`, `video_size` pixels tall at least.
    task_modules: modules that register user tasks (imported again in async workers).
    """
    if n_episodes < 1:
        raise ConfigError(f"n_episodes={n_episodes}: evaluate at least 1 episode per task")
    if n_action_steps is not None and n_action_steps < 1:
        raise ConfigError(f"n_action_steps={n_action_steps}: execute at least 1 action per predicted chunk")
    if num_envs < 1:
        raise ConfigError(f"num_envs={num_envs}: use at least 1")
    if vector not in VECTOR_MODES:
        raise ConfigError(f"vector={vector!r}: use one of {VECTOR_MODES}")
    if seed_range not in EVAL_SEED_RANGES:
        raise ConfigError(f"seed_range={seed_range!r}: evaluate on 'eval' seeds (or 'val' to choose checkpoints); "
                          f"{sorted(set(SEED_RANGES) - set(EVAL_SEED_RANGES))} seeds are for demonstrations")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps={max_steps}: use at least 1, or null for the task's own time limit")
    if video_episodes < 0:
        raise ConfigError(f"video_episodes={video_episodes}: use 0 (no videos) or more")
    if video_episodes > 0 and video_dir is None:
        raise ConfigError("video_episodes > 0 needs a video_dir")
    if not task_ids:
        raise ConfigError("no tasks to evaluate")
    start = time.perf_counter()
    registry.load_task_modules(list(task_modules))
    tasks = [registry.get_task(t) for t in dict.fromkeys(task_ids)]
    seed_list = seeds(seed_range, n_episodes, seed_offset)
    env_kwargs: dict = {"image_size": int(image_size)}
    if cameras is not None:
        env_kwargs["cameras"] = tuple(cameras)
    spec = probe_env(tasks[0].id, env_kwargs, seed_list[0])
    action_space = spec["action_space"]

    jobs = deque(
        _Job(t.id, s, k, str(Path(video_dir) / t.id / f"episode{k:03d}_seed{s}.mp4") if k < video_episodes else None)
        for t in tasks for k, s in enumerate(seed_list)
    )
    n_slots = min(num_envs, len(jobs))
    use_async = vector == "async" and n_slots > 1
    make_slot = [functools.partial(EvalSlot, i, spec["observation_space"], action_space, env_kwargs, max_steps,
                                   _modules_for(tasks, task_modules), video_size, use_async) for i in range(n_slots)]

    instructions = {t.id: t.instruction for t in tasks}
    by_task = bool(getattr(policy, "task_conditioned", False))
    episodes: dict[str, list[Episode | None]] = {t.id: [None] * n_episodes for t in tasks}
    running: list[_Job | None] = [None] * n_slots
    queues = [deque() for _ in range(n_slots)]
    steps = np.zeros(n_slots, dtype=np.int64)
    returns = [0.0] * n_slots
    chunk_steps = n_action_steps
    calls = env_steps = 0

    def assign(slots: list[int]):
        """Give each slot its next job (or idle it) and reset those slots. -> the batched observations."""
        seeds_, assignment = [None] * n_slots, {}
        for i in slots:
            job = jobs.popleft() if jobs else None
            running[i], steps[i], returns[i] = job, 0, 0.0
            queues[i].clear()
            assignment[i] = None if job is None else {"task": job.task, "video": job.video}
            seeds_[i] = None if job is None else job.seed
        mask = np.zeros(n_slots, dtype=bool)
        mask[slots] = True
        return venv.reset(seed=seeds_, options={"assign": assignment, "reset_mask": mask})[0]

    if use_async:  # spawn: forking a process that holds GL contexts and torch threads is unsafe
        venv = AsyncVectorEnv(make_slot, context="spawn", autoreset_mode=AutoresetMode.DISABLED)
    else:
        venv = SyncVectorEnv(make_slot, autoreset_mode=AutoresetMode.DISABLED)
    bar = progress_bar(len(jobs), "eval", unit="episode", enabled=progress)
    try:  # from here on, Ctrl-C (or an error) closes the env workers and ends the progress line
        obs = assign(list(range(n_slots)))
        while any(job is not None for job in running):
            need = [i for i, job in enumerate(running) if job is not None and not queues[i]]
            if need:
                rows = {key: value[need] for key, value in obs.items()}
                row_tasks = [running[i].task for i in need]
                if by_task:
                    chunk = policy.act_batch(rows, row_tasks, instructions=[instructions[t] for t in row_tasks])
                else:
                    chunk = policy.act_batch(rows, [instructions[t] for t in row_tasks])
                chunk = np.asarray(chunk)
                calls += 1
                if chunk.ndim != 3 or chunk.shape[0] != len(need) or chunk.shape[2] != action_space.shape[0]:
                    raise ConfigError(f"the policy returned actions of shape {chunk.shape}; expected "
                                      f"({len(need)}, H, {action_space.shape[0]}) for {len(need)} observation(s)")
                if chunk_steps is None:
                    chunk_steps = chunk.shape[1]
                if chunk.shape[1] < chunk_steps:
                    raise ConfigError(f"n_action_steps={chunk_steps} exceeds the policy's chunk length "
                                      f"H={chunk.shape[1]}; use n_action_steps <= {chunk.shape[1]}")
                for row, i in enumerate(need):
                    queues[i].extend(chunk[row, :chunk_steps])
            actions = np.zeros((n_slots, *action_space.shape), dtype=action_space.dtype)
            for i, job in enumerate(running):
                if job is not None:
                    actions[i] = queues[i].popleft()
            obs, rewards, terminated, truncated, info = venv.step(actions)
            done = []
            for i, job in enumerate(running):
                if job is None:
                    continue
                steps[i] += 1
                env_steps += 1
                returns[i] += float(rewards[i])
                if terminated[i] or truncated[i]:
                    engaged = info["engaged_object"][i] if info.get("_engaged_object", [False] * n_slots)[i] else None
                    episodes[job.task][job.index] = Episode(job.task, job.seed, bool(info["is_success"][i]),
                                                            int(steps[i]), returns[i], job.video, engaged)
                    done.append(i)
                    bar.update(1)
            if done:
                obs = assign(done)
    finally:
        bar.close()
        venv.close()

    settings = {
        "n_action_steps": chunk_steps,
        "image_size": int(image_size),
        "cameras": spec["cameras"],
        "max_steps": max_steps,
        "seed_range": seed_range,
        "seed_offset": seed_offset,
        "first_seed": seed_list[0],
        "num_envs": n_slots,
        "vector": "async" if use_async else "sync",
        "video_episodes": video_episodes,
    }
    return RolloutResult(
        episodes={t: list(eps) for t, eps in episodes.items()},  # every slot ran to completion: no None left
        settings=settings,
        instructions=instructions,
        policy_calls=calls,
        env_steps=env_steps,
        wall_s=time.perf_counter() - start,
        max_episode_steps={t.id: max_steps or t.max_episode_steps for t in tasks},
    )
