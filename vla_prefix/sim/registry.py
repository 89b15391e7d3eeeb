"""The task registry: one place that knows every task of every suite.

A suite registers each task with `register_task(info, env_factory, expert_factory)` and its named
splits with `register_split`. Suites load lazily, on first lookup. Users add tasks the same way
from their own module (see README, "Adding a task") and name that module in `task_modules`.

Task ids are gymnasium env names, e.g. `tabletop-pick-red-cube-v0`; the gymnasium id is
`vla_prefix/<task id>`, so `gymnasium.make("vla_prefix/tabletop-pick-red-cube-v0")` works too.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Protocol

import gymnasium as gym
import numpy as np

from ..errors import ConfigError, UnknownTaskError, closest

GYM_NAMESPACE = "vla_prefix"

# suite name -> module that registers its tasks when imported
SUITE_MODULES: dict[str, str] = {
    "tabletop": "vla_prefix_envs",
    "metaworld": "vla_prefix.sim.metaworld_suite",
}


@dataclass(frozen=True)
class TaskInfo:
    """What a task is. `split` is the suite's own pretrain/heldout membership."""

    id: str
    suite: str
    family: str
    split: str
    instruction: str
    paraphrases: tuple[str, ...] = ()
    max_episode_steps: int = 100
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def gym_id(self) -> str:
        return f"{GYM_NAMESPACE}/{self.id}"

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "suite": self.suite,
            "family": self.family,
            "split": self.split,
            "instruction": self.instruction,
            "paraphrases": list(self.paraphrases),
            "max_episode_steps": self.max_episode_steps,
        }


class Expert(Protocol):
    """A scripted expert. `act` may read privileged state from `env` (the unwrapped env)."""

    def reset(self) -> None: ...

    def act(self, env: gym.Env, obs: dict) -> np.ndarray: ...


_TASKS: dict[str, TaskInfo] = {}
_EXPERTS: dict[str, Callable[[], Expert]] = {}
_SPLITS: dict[str, dict[str, list[str]]] = {}
_LOADED: set[str] = set()


def register_task(info: TaskInfo, env_factory: Callable[..., gym.Env], expert_factory: Callable[[], Expert]) -> None:
    """Register a task. `env_factory(**kwargs)` builds the unwrapped env; gymnasium adds the time limit."""
    if info.id in _TASKS:
        raise ConfigError(f"task {info.id!r} is already registered; give the new task another id")
    _TASKS[info.id] = info
    _EXPERTS[info.id] = expert_factory
    gym.register(id=info.gym_id, entry_point=env_factory, max_episode_steps=info.max_episode_steps)
    _SPLITS.setdefault(info.suite, {}).setdefault(info.split, []).append(info.id)


def register_split(suite: str, name: str, task_ids: list[str]) -> None:
    """Register a named split (e.g. `ML45_train`) of already-registered tasks."""
    _SPLITS.setdefault(suite, {})[name] = list(task_ids)


def load_suite(suite: str) -> None:
    """Import the module that registers `suite` (once)."""
    if suite in _LOADED:
        return
    if suite not in SUITE_MODULES:
        raise UnknownTaskError(f"unknown suite {suite!r}; use one of {sorted(SUITE_MODULES)}")
    _LOADED.add(suite)
    importlib.import_module(SUITE_MODULES[suite])


def load_task_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules that call `register_task` (the `task_modules` config entry)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            raise ConfigError(f"task module {name!r} could not be imported ({err}); check `task_modules`") from None


def _load_all() -> None:
    for suite in SUITE_MODULES:
        load_suite(suite)


def list_tasks(suite: str | None = None) -> list[TaskInfo]:
    """Every registered task, in registration order (optionally of one suite)."""
    if suite is None:
        _load_all()
    else:
        load_suite(suite)
    return [t for t in _TASKS.values() if suite is None or t.suite == suite]


def list_splits(suite: str) -> dict[str, list[str]]:
    load_suite(suite)
    return {k: list(v) for k, v in _SPLITS.get(suite, {}).items()}


def get_task(task_id: str) -> TaskInfo:
    """The task with this id; an unknown id names the closest valid ones."""
    if task_id not in _TASKS:
        _load_all()
    if task_id not in _TASKS:
        hint = closest(task_id, _TASKS)
        raise UnknownTaskError(
            f"unknown task {task_id!r}"
            + (f"; did you mean {', '.join(hint)}?" if hint else "")
            + " (list them all with `python -m vla_prefix.tasks`)"
        )
    return _TASKS[task_id]


def resolve_tasks(suite: str, name: str) -> list[TaskInfo]:
    """A task id, a split name, or a comma-separated list of either, within `suite`."""
    load_suite(suite)
    out: list[TaskInfo] = []
    for part in [p.strip() for p in str(name).split(",") if p.strip()]:
        splits = _SPLITS.get(suite, {})
        if part in splits:
            out.extend(_TASKS[t] for t in splits[part])
        elif part in _TASKS and _TASKS[part].suite == suite:
            out.append(_TASKS[part])
        else:
            choices = list(splits) + [t for t, i in _TASKS.items() if i.suite == suite]
            hint = closest(part, choices)
            raise UnknownTaskError(
                f"{part!r} is neither a task nor a split of suite {suite!r}"
                + (f"; did you mean {', '.join(hint)}?" if hint else "")
                + f" (splits: {', '.join(sorted(splits))})"
            )
    if not out:
        raise UnknownTaskError(f"no task selected by {name!r} in suite {suite!r}")
    return list(dict.fromkeys(out))  # keep order, drop repeats


def make_env(task_id: str, **kwargs) -> gym.Env:
    """`gymnasium.make` for a registered task (time limit included). kwargs go to the env."""
    info = get_task(task_id)
    return gym.make(info.gym_id, **kwargs)


def make_expert(task_id: str) -> Expert:
    """A fresh scripted expert for the task."""
    get_task(task_id)
    return _EXPERTS[task_id]()
