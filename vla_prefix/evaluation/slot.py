"""`EvalSlot`: one sub-env of the evaluation vector env.

A slot runs whole episodes of any task it is told to, one at a time, and idles when there is
nothing left to run. The rollout tells it what to do at reset, through the shared options dict
(gymnasium gives every sub-env the same options, so each slot reads its own entry by index):

    reset(seed=s, options={"assign": {index: {"task": task_id, "video": path or None}}})
    reset(options={"assign": {index: None}})        # idle: zero observations, steps do nothing

An episode ends (terminated=True) at the first step whose `info["is_success"]` is true, or when the
task env terminates or its time limit truncates it. With a video path, the slot records the
episode (the env's `render()` frame if it supports `render_mode="rgb_array"`, else the observation
cameras side by side) and writes the mp4 itself when the episode ends.

Slots build their task envs lazily (AsyncVectorEnv builds one slot in the parent just to read its
spaces) and keep the `MAX_OPEN` most recently used ones open.
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import os
import signal
from collections import OrderedDict

import gymnasium as gym
import numpy as np

from ..errors import ConfigError, UnknownTaskError
from ..sim import registry
from .video import tile_cameras, video_frame, write_mp4

MAX_OPEN = 2  # task envs (GL contexts) kept open per slot; jobs come task after task


class EvalSlot(gym.Env):
    """A vector-env slot. `observation_space`/`action_space` are those every task must share."""

    metadata = {"render_modes": []}

    def __init__(self, index: int, observation_space: gym.Space, action_space: gym.Space, env_kwargs: dict,
                 max_steps: int | None = None, modules: tuple[str, ...] = (), video_size: int = 128,
                 in_worker: bool = False):
        self.index = index
        self.observation_space, self.action_space = observation_space, action_space
        self.env_kwargs, self.max_steps = dict(env_kwargs), max_steps
        self.modules, self.video_size, self.in_worker = tuple(modules), int(video_size), in_worker
        self._envs: OrderedDict[tuple[str, bool], gym.Env] = OrderedDict()
        self._env: gym.Env | None = None
        self._video: str | None = None
        self._frames: list[np.ndarray] = []
        self._fps = 20.0
        self._ready = False
        self._idle = {k: np.zeros(s.shape, s.dtype) for k, s in observation_space.spaces.items()}
        if in_worker and multiprocessing.parent_process() is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the workers

    # ---------------------------------------------------------------- task envs
    def _prepare(self) -> None:
        """First use in a process: one software-GL thread per worker; import the modules that register tasks."""
        if self._ready:
            return
        if self.in_worker:
            os.environ.setdefault("LP_NUM_THREADS", "1")  # Mesa llvmpipe: no render thread pool per worker
        for name in self.modules:
            importlib.import_module(name)
        self._ready = True

    def _make(self, task: str, video: bool) -> gym.Env:
        kwargs = dict(self.env_kwargs)
        if self.max_steps is not None:
            kwargs["max_episode_steps"] = self.max_steps
        try:
            env = registry.make_env(task, **kwargs)
        except UnknownTaskError as err:
            raise UnknownTaskError(f"{err} [in an env worker: register the task from an importable module and name "
                                   "it in task_modules, or evaluate with vector=sync]") from None
        if video and "rgb_array" in env.unwrapped.metadata.get("render_modes", ()):
            cls = type(env.unwrapped)
            env.close()
            kwargs["render_mode"] = "rgb_array"
            if "render_size" in inspect.signature(cls.__init__).parameters:
                kwargs["render_size"] = self.video_size
            env = registry.make_env(task, **kwargs)
        space = env.observation_space
        for key, want in self.observation_space.spaces.items():
            got = space.spaces.get(key) if isinstance(space, gym.spaces.Dict) else None
            if got is None or got.shape != want.shape or got.dtype != want.dtype:
                env.close()
                seen = None if got is None else (got.dtype, got.shape)
                raise ConfigError(f"task {task!r} observes {key} {seen} but the evaluation expects "
                                  f"{(want.dtype, want.shape)}; evaluate tasks with different observations separately")
        return env

    def _get_env(self, task: str, video: bool) -> gym.Env:
        key = (task, video)
        if key not in self._envs:
            while len(self._envs) >= MAX_OPEN:
                self._envs.popitem(last=False)[1].close()
            self._envs[key] = self._make(task, video)
        self._envs.move_to_end(key)
        return self._envs[key]

    # ---------------------------------------------------------------- video
    def _record(self, obs: dict) -> None:
        env = self._env
        frame = env.render() if getattr(env.unwrapped, "render_mode", None) == "rgb_array" else None
        if frame is None:
            frame = tile_cameras(obs["image"])
        self._frames.append(video_frame(frame, self.video_size))

    def _flush_video(self) -> None:
        if self._video is not None and self._frames:
            write_mp4(self._video, self._frames, self._fps)
        self._video, self._frames = None, []

    # ---------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._prepare()
        self._flush_video()  # an episode cut short by the caller still gets its video
        job = ((options or {}).get("assign") or {}).get(self.index)
        if job is None or job.get("task") is None:
            self._env = None
            return {k: v.copy() for k, v in self._idle.items()}, {"is_success": False}
        self._video = job.get("video")
        self._env = self._get_env(job["task"], self._video is not None)
        obs, info = self._env.reset(seed=seed)
        if self._video is not None:
            self._fps = float(min(30, self._env.unwrapped.metadata.get("render_fps") or 20))
            self._record(obs)
        return obs, {"is_success": bool(info.get("is_success", False))}

    def step(self, action):
        if self._env is None:  # idle
            return {k: v.copy() for k, v in self._idle.items()}, 0.0, False, False, {"is_success": False}
        obs, reward, terminated, truncated, info = self._env.step(action)
        success = bool(info.get("is_success", False))
        if self._video is not None:
            self._record(obs)
        done = bool(terminated or truncated or success)
        if done:
            self._flush_video()
            self._env = None  # the next call must be a reset
        out = {"is_success": success}
        if "engaged_object" in info:  # optional: what the gripper went for (failure analysis)
            out["engaged_object"] = str(info["engaged_object"])
        return obs, float(reward), bool(terminated or success), bool(truncated), out

    def close(self):
        self._flush_video()
        while self._envs:
            self._envs.popitem()[1].close()
