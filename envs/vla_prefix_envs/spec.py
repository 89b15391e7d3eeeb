"""What a tabletop task is: its objects, its words, its success check and its expert.

A task is one `TabletopTaskSpec`. The suite's own tasks are listed in `tasks.py`; a user's task is
a spec in the user's own module, registered with `vla_prefix_envs.register(spec)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from vla_prefix.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from vla_prefix.sim.registry import Expert

    from .scene import TabletopEnv

# Named colours (RGBA). The suite's tasks use the first four; the rest are free for user tasks.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.1, 1.0),
    "green": (0.12, 0.68, 0.15, 1.0),
    "blue": (0.12, 0.3, 0.92, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.2, 0.75, 1.0),
    "orange": (0.98, 0.5, 0.05, 1.0),
    "white": (0.92, 0.92, 0.92, 1.0),
    "grey": (0.42, 0.42, 0.46, 1.0),
}
# Colours a distractor (an object with `color=None`) is drawn from, per seed.
DISTRACTOR_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")

# Object kinds. cube/ball: free bodies the gripper can grasp. bowl: a static open container.
# zone: a flat coloured patch on the table (no collision).
KINDS: tuple[str, ...] = ("cube", "ball", "bowl", "zone")
GRASPABLE: tuple[str, ...] = ("cube", "ball")


@dataclass(frozen=True)
class ObjectSpec:
    """One object in the scene.

    name: the object's role in the task ("target", "bowl", ...); success checks and experts use it.
    kind: one of KINDS. color: a key of COLORS, or None for a distractor whose colour is drawn
    per seed from DISTRACTOR_COLORS, never repeating another object's (kind, colour).
    """

    name: str
    kind: str
    color: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"object {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.color is not None and self.color not in COLORS:
            raise ConfigError(f"object {self.name!r}: colour {self.color!r} is not one of {sorted(COLORS)}")


@dataclass(frozen=True)
class TabletopTaskSpec:
    """A tabletop task.

    id: the task id (`tabletop-<family>-...-v0`); family/split: see TaskInfo.
    instruction, paraphrases: the command and >= 2 rewordings of it.
    objects: everything on the table; positions are drawn per seed.
    success: `fn(env) -> bool`, a geometric check on the unwrapped env.
    expert: a zero-argument factory of a scripted expert (`reset()`, `act(env, obs) -> (4,) float32`).
    layout_ok: optional `fn({name: xy (2,)}) -> bool` that a drawn layout must satisfy
        (e.g. a clear path for pushing); layouts are redrawn until it holds.
    max_episode_steps: the time limit (20 Hz control steps).
    """

    id: str
    family: str
    split: str
    instruction: str
    paraphrases: tuple[str, ...]
    objects: tuple[ObjectSpec, ...]
    success: Callable[["TabletopEnv"], bool]
    expert: Callable[[], "Expert"]
    max_episode_steps: int = 100
    layout_ok: Callable[[dict], bool] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        names = [o.name for o in self.objects]
        if len(set(names)) != len(names):
            raise ConfigError(f"task {self.id!r}: object names must be unique, got {names}")
        if not self.objects:
            raise ConfigError(f"task {self.id!r}: give at least one object")
        if len(self.paraphrases) < 2:
            raise ConfigError(f"task {self.id!r}: give at least 2 paraphrases of the instruction")
        if not self.id.startswith("tabletop-"):
            raise ConfigError(f"task {self.id!r}: tabletop task ids start with 'tabletop-'")
        fixed = [(o.kind, o.color) for o in self.objects if o.color is not None]
        if len(set(fixed)) != len(fixed):
            raise ConfigError(f"task {self.id!r}: two objects share a kind and colour; the instruction would be ambiguous")
