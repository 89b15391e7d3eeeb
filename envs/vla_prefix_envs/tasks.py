"""The tabletop suite: success checks, the task list and its fixed pretrain/heldout split.

Families (ids `tabletop-<family>-...-v0`):
- reach:      move the gripper just above a named cube or ball (8 tasks).
- push:       push a named cube onto the grey zone, gripper closed (4 tasks).
- pick-place: put a named cube or ball in the white bowl (8 tasks).
- stack:      put one named cube on another (4 tasks).

Every scene holds 2 cubes, 2 balls, a white bowl and a grey zone; objects the instruction does not
name are distractors whose colours change per seed, so the policy must read the instruction.

The split (fixed; `TaskInfo.split`):
- pretrain (17): reach of all cubes and red/blue/yellow balls; push red/green/yellow; pick-place of
  all cubes and red/green/blue balls.
- heldout (7):
  - new combinations of seen parts (the skill and the object are each in pretraining, never
    together): reach-green-ball (the easiest: green balls are placed in pretraining),
    push-blue-cube (blue cubes are reached and placed), pick-place-yellow-ball (yellow balls are
    only reached);
  - a whole family never seen in pretraining: stack (4 colour pairs).
Named splits: "pretrain", "heldout", "heldout-combo", "heldout-family", and one per family.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vla_prefix.sim.registry import TaskInfo, register_split, register_task

from .experts import EXPERT_VERSION, PickPlaceExpert, PushExpert, ReachExpert
from .scene import BOWL_FLOOR, BOWL_INNER, CUBE_HALF, FOOTPRINT, ZONE_RADIUS, TabletopEnv
from .spec import ObjectSpec, TabletopTaskSpec

SUITE = "tabletop"


# ----------------------------------------------------------------------------- success checks
@dataclass(frozen=True)
class Above:
    """The end effector is within `tol` of the point `height` above object `obj`'s centre."""

    obj: str = "target"
    height: float = 0.05
    tol: float = 0.025

    def __call__(self, env: TabletopEnv) -> bool:
        goal = env.pos(self.obj) + np.array([0.0, 0.0, self.height])
        return bool(np.linalg.norm(env.ee_pos - goal) < self.tol)


@dataclass(frozen=True)
class InZone:
    """Object `obj` rests on the table with its centre within `tol` of zone `zone`'s centre."""

    obj: str = "target"
    zone: str = "zone"
    tol: float = ZONE_RADIUS - 0.02

    def __call__(self, env: TabletopEnv) -> bool:
        p, z = env.pos(self.obj), env.pos(self.zone)
        return bool(np.linalg.norm(p[:2] - z[:2]) < self.tol and p[2] < CUBE_HALF + 0.005)


@dataclass(frozen=True)
class InBowl:
    """Object `obj` lies inside bowl `bowl` (centre within the wall, below the rim), released."""

    obj: str = "target"
    bowl: str = "bowl"

    def __call__(self, env: TabletopEnv) -> bool:
        p, b = env.pos(self.obj), env.pos(self.bowl)
        inside = np.linalg.norm(p[:2] - b[:2]) < BOWL_INNER - 0.01 and p[2] - b[2] < BOWL_FLOOR + CUBE_HALF + 0.01
        return bool(inside and not env.touching(self.obj, "gripper"))


@dataclass(frozen=True)
class StackedOn:
    """Cube `top` rests on cube `base` (centred within `tol`, one cube height up), released."""

    top: str = "top"
    base: str = "base"
    tol: float = 0.02

    def __call__(self, env: TabletopEnv) -> bool:
        t, b = env.pos(self.top), env.pos(self.base)
        dz = t[2] - b[2]
        on = np.linalg.norm(t[:2] - b[:2]) < self.tol and abs(dz - 2 * CUBE_HALF) < 0.006
        return bool(on and b[2] < CUBE_HALF + 0.005 and not env.touching(self.top, "gripper"))


@dataclass(frozen=True)
class ClearPath:
    """Layout rule for pushing: no object's footprint within `margin` of the line from just behind
    `obj` to `dest` (zones excepted). `kinds` maps every object name to its kind."""

    kinds: dict
    obj: str = "target"
    dest: str = "zone"
    margin: float = 0.04

    def __call__(self, layout: dict) -> bool:
        a, b = layout[self.obj], layout[self.dest]
        start = a - (b - a) / np.linalg.norm(b - a) * 0.07  # where the pusher comes down
        for name, p in layout.items():
            if name in (self.obj, self.dest) or self.kinds[name] == "zone":
                continue
            t = np.clip((p - start) @ (b - start) / ((b - start) @ (b - start)), 0.0, 1.0)
            if np.linalg.norm(p - (start + t * (b - start))) < FOOTPRINT[self.kinds[name]] + self.margin:
                return False
        return True


# ----------------------------------------------------------------------------- scenes
STANDARD_COUNTS = {"cube": 2, "ball": 2}


def standard_scene(*named: ObjectSpec) -> tuple[ObjectSpec, ...]:
    """The named objects, a white bowl and a grey zone (unless named), and distractors up to 2 cubes and 2 balls."""
    objs = list(named)
    for kind, n in STANDARD_COUNTS.items():
        have = sum(o.kind == kind for o in named)
        objs += [ObjectSpec(f"{kind}_{i}", kind, None) for i in range(n - have)]
    if not any(o.kind == "bowl" for o in named):
        objs.append(ObjectSpec("bowl", "bowl", "white"))
    if not any(o.kind == "zone" for o in named):
        objs.append(ObjectSpec("zone", "zone", "grey"))
    return tuple(objs)


# ----------------------------------------------------------------------------- registration
def task_info(spec: TabletopTaskSpec) -> TaskInfo:
    """The registry entry for a spec."""
    return TaskInfo(
        id=spec.id,
        suite=SUITE,
        family=spec.family,
        split=spec.split,
        instruction=spec.instruction,
        paraphrases=tuple(spec.paraphrases),
        max_episode_steps=spec.max_episode_steps,
        extra={"objects": [(o.name, o.kind, o.color) for o in spec.objects], "expert_version": EXPERT_VERSION,
               **spec.extra},
    )


def register(spec: TabletopTaskSpec) -> TaskInfo:
    """Register a tabletop task: `make_env(spec.id, image_size=..., cameras=...)` then builds it."""
    info = task_info(spec)
    register_task(info, functools.partial(TabletopEnv, spec), spec.expert)
    return info


# ----------------------------------------------------------------------------- the suite
COLORS4 = ("red", "green", "blue", "yellow")
STEPS = {"reach": 30, "push": 100, "pick-place": 90, "stack": 90}  # ~1.5-2x the expert's longest episode


def reach_task(color: str, kind: str, split: str) -> TabletopTaskSpec:
    thing = f"{color} {kind}"
    return TabletopTaskSpec(
        id=f"tabletop-reach-{color}-{kind}-v0",
        family="reach",
        split=split,
        instruction=f"reach the {thing}",
        paraphrases=(f"move the gripper to the {thing}", f"go to the {thing}", f"put the gripper above the {thing}"),
        objects=standard_scene(ObjectSpec("target", kind, color)),
        success=Above("target"),
        expert=functools.partial(ReachExpert, "target"),
        max_episode_steps=STEPS["reach"],
    )


def push_task(color: str, split: str) -> TabletopTaskSpec:
    objects = standard_scene(ObjectSpec("target", "cube", color))
    return TabletopTaskSpec(
        id=f"tabletop-push-{color}-cube-v0",
        family="push",
        split=split,
        instruction=f"push the {color} cube to the grey zone",
        paraphrases=(
            f"slide the {color} cube onto the grey patch",
            f"push the {color} block into the grey circle",
            f"move the {color} cube to the grey zone by pushing it",
        ),
        objects=objects,
        success=InZone("target", "zone"),
        expert=functools.partial(PushExpert, "target", "zone"),
        max_episode_steps=STEPS["push"],
        layout_ok=ClearPath({o.name: o.kind for o in objects}, "target", "zone"),
    )


def pick_place_task(color: str, kind: str, split: str) -> TabletopTaskSpec:
    thing = f"{color} {kind}"
    return TabletopTaskSpec(
        id=f"tabletop-pick-place-{color}-{kind}-v0",
        family="pick-place",
        split=split,
        instruction=f"put the {thing} in the bowl",
        paraphrases=(
            f"place the {thing} into the white bowl",
            f"pick up the {thing} and drop it in the bowl",
            f"move the {thing} into the bowl",
        ),
        objects=standard_scene(ObjectSpec("target", kind, color)),
        success=InBowl("target", "bowl"),
        expert=functools.partial(PickPlaceExpert, "target", "bowl", BOWL_FLOOR + CUBE_HALF + 0.015),
        max_episode_steps=STEPS["pick-place"],
    )


def stack_task(top: str, base: str, split: str) -> TabletopTaskSpec:
    return TabletopTaskSpec(
        id=f"tabletop-stack-{top}-on-{base}-v0",
        family="stack",
        split=split,
        instruction=f"stack the {top} cube on the {base} cube",
        paraphrases=(
            f"put the {top} cube on top of the {base} cube",
            f"place the {top} block onto the {base} block",
            f"pick up the {top} cube and set it on the {base} cube",
        ),
        objects=standard_scene(ObjectSpec("top", "cube", top), ObjectSpec("base", "cube", base)),
        success=StackedOn("top", "base"),
        expert=functools.partial(PickPlaceExpert, "top", "base", 2 * CUBE_HALF + 0.006),
        max_episode_steps=STEPS["stack"],
    )


def suite_tasks() -> list[TabletopTaskSpec]:
    """All suite tasks with their split. Changing a split changes every result: don't."""
    tasks = [reach_task(c, k, "heldout" if (c, k) == ("green", "ball") else "pretrain")
             for k in ("cube", "ball") for c in COLORS4]
    tasks += [push_task(c, "heldout" if c == "blue" else "pretrain") for c in COLORS4]
    tasks += [pick_place_task(c, "cube", "pretrain") for c in COLORS4]
    tasks += [pick_place_task(c, "ball", "heldout" if c == "yellow" else "pretrain") for c in COLORS4]
    tasks += [stack_task(t, b, "heldout") for t, b in
              (("red", "blue"), ("green", "yellow"), ("yellow", "red"), ("blue", "green"))]
    return tasks


HELDOUT_COMBO = ("tabletop-reach-green-ball-v0", "tabletop-push-blue-cube-v0", "tabletop-pick-place-yellow-ball-v0")


def register_suite() -> list[TaskInfo]:
    """Register every suite task and the named splits (called on `import vla_prefix_envs`)."""
    infos = [register(spec) for spec in suite_tasks()]
    for family in dict.fromkeys(i.family for i in infos):
        register_split(SUITE, family, [i.id for i in infos if i.family == family])
    register_split(SUITE, "heldout-combo", list(HELDOUT_COMBO))
    register_split(SUITE, "heldout-family", [i.id for i in infos if i.family == "stack"])
    return infos
