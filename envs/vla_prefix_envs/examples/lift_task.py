"""A user task in a module of its own: "lift the orange cube".

Name this module in `task_modules` (or import it) and the task exists:
    task_modules: [vla_prefix_envs.examples.lift_task]
    make_env("tabletop-lift-orange-cube-v0")
Nothing in the library is edited: the module gives the objects, the words, a success check and an
expert, and registers them.
"""

from __future__ import annotations

import numpy as np

from vla_prefix_envs import ObjectSpec, TabletopTaskSpec, move, register, standard_scene


def lifted(env) -> bool:
    """Success: the orange cube's centre is 8 cm above the table."""
    return bool(env.pos("target")[2] > 0.08)


class LiftExpert:
    """Above the cube, down around it, close for 4 steps, then up. Reads privileged state."""

    def reset(self) -> None:
        self.closed_steps = 0

    def act(self, env, obs) -> np.ndarray:
        cube, ee = env.pos("target"), env.ee_pos
        if self.closed_steps == 0:
            if np.abs(ee[:2] - cube[:2]).max() > 0.008:
                return move(env, cube + [0, 0, 0.07], grip=-1.0)  # above it, gripper open
            if ee[2] - cube[2] > 0.006:
                return move(env, cube, grip=-1.0)  # down, fingers either side
        self.closed_steps += 1
        if self.closed_steps <= 4:
            return move(env, env.ee_target, grip=1.0)  # close in place
        return move(env, cube + [0, 0, 0.1], grip=1.0)  # lift


SPEC = TabletopTaskSpec(
    id="tabletop-lift-orange-cube-v0",
    family="lift",
    split="custom",
    instruction="lift the orange cube",
    paraphrases=("pick up the orange cube", "raise the orange block off the table"),
    objects=standard_scene(ObjectSpec("target", "cube", "orange")),  # + a cube, 2 balls, bowl, zone
    success=lifted,
    expert=LiftExpert,
    max_episode_steps=60,
)

register(SPEC)
