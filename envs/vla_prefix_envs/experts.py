"""Scripted experts for the tabletop tasks. They read privileged state from the unwrapped env.

Each expert: `reset()`, then `act(env, obs) -> float32 (4,)` per step (the env's action format:
end-effector delta xyz in units of MAX_STEP, gripper -1 open / +1 close). They are closed-loop:
a dropped object or a cube that slid off the pushing line is approached again.

They are Markov at phase switches: the step that completes a phase already acts on the next one, so
one observation never gets the old phase's action on one step and the new phase's on the next.
EXPERT_VERSION names the labels; bump it whenever an expert's actions change (a dataset collected
with another version can't be extended).
"""

from __future__ import annotations

import numpy as np

from .scene import BALL_RADIUS, CUBE_HALF, MAX_STEP, TabletopEnv

OPEN, CLOSE = -1.0, 1.0
HOVER = 0.07  # end-effector height above an object's centre before descending (metres)
CARRY_Z = 0.12  # end-effector height while carrying (metres)
EXPERT_VERSION = 2  # 1: acted on the old phase at a switch; 2: Markov at switches


def move(env: TabletopEnv, target: np.ndarray, grip: float, speed: float = 1.0) -> np.ndarray:
    """Action (4,) moving the commanded end-effector point toward `target` (3,), at most `speed` x MAX_STEP
    per axis, with gripper command `grip` (-1 open, +1 close)."""
    delta = (np.asarray(target, dtype=np.float64) - env.ee_target) / MAX_STEP
    norm = np.abs(delta).max()
    if norm > speed:
        delta *= speed / norm
    return np.array([*delta, grip], dtype=np.float32)


def half_height(env: TabletopEnv, name: str) -> float:
    return CUBE_HALF if env.kind(name) == "cube" else BALL_RADIUS


def act_in_final_phase(expert, env: TabletopEnv, max_switches: int = 8) -> np.ndarray:
    """The action (4,) of the phase the expert ends this step in: `expert.phase_action(env)`, asked
    again after each phase switch (so the labels stay Markov at switches)."""
    for _ in range(max_switches + 1):
        phase = expert.phase
        action = expert.phase_action(env)
        if expert.phase == phase:
            return action
    raise RuntimeError(f"{type(expert).__name__} switched phase {max_switches} times in one step "
                       f"(last: {phase} -> {expert.phase}); its phase conditions loop")


class ReachExpert:
    """Moves the end effector to `above` metres over object `obj`'s centre, gripper open."""

    def __init__(self, obj: str = "target", above: float = 0.05):
        self.obj, self.above = obj, above

    def reset(self) -> None:
        pass

    def act(self, env: TabletopEnv, obs: dict) -> np.ndarray:
        return move(env, env.pos(self.obj) + [0, 0, self.above], OPEN)


class PickPlaceExpert:
    """Picks `obj` and releases it with its centre `release_above` metres above `dest`'s origin.

    Phases: approach (above obj) -> descend -> grasp -> lift -> carry (over dest) -> lower ->
    release -> retreat. Placement aims the object, not the hand, at dest (the grasp may be off-centre).
    """

    def __init__(self, obj: str = "target", dest: str = "bowl", release_above: float = 0.04):
        self.obj, self.dest, self.release_above = obj, dest, release_above

    def reset(self) -> None:
        self.phase, self.count = "approach", 0

    def _go(self, phase: str) -> None:
        self.phase, self.count = phase, 0

    def act(self, env: TabletopEnv, obs: dict) -> np.ndarray:
        self.count += 1
        return act_in_final_phase(self, env)

    def phase_action(self, env: TabletopEnv) -> np.ndarray:
        """The current phase's action (4,); may switch phase first or instead (then `act` asks again)."""
        ee, obj, dest = env.ee_pos, env.pos(self.obj), env.pos(self.dest)
        held = env.touching(self.obj, "gripper") and obj[2] > half_height(env, self.obj) + 0.01
        if self.phase in ("lift", "carry", "lower") and not held and self.count > 3:
            self._go("approach")  # dropped it
        if self.phase == "approach":
            target = np.array([obj[0], obj[1], obj[2] + HOVER])
            if np.abs(ee[:2] - obj[:2]).max() < 0.008 and abs(ee[2] - target[2]) < 0.02:
                self._go("descend")
            return move(env, target, OPEN)
        if self.phase == "descend":
            target = obj.copy()
            if np.abs(target - ee).max() < 0.006:
                self._go("grasp")
            elif np.abs(ee[:2] - obj[:2]).max() > 0.02:  # object moved away
                self._go("approach")
            return move(env, target, OPEN)
        if self.phase == "grasp":
            if self.count >= 4:
                self._go("lift")
            return move(env, env.ee_target, CLOSE)
        offset = ee[:2] - obj[:2]  # where the hand holds the object, relative to its centre
        if self.phase == "lift":
            if ee[2] > CARRY_Z - 0.02:
                self._go("carry")
            return move(env, [ee[0], ee[1], CARRY_Z], CLOSE)
        if self.phase == "carry":
            target = np.array([*(dest[:2] + offset), CARRY_Z])
            if np.abs(ee[:2] - target[:2]).max() < 0.006:
                self._go("lower")
            return move(env, target, CLOSE)
        if self.phase == "lower":
            z = dest[2] + self.release_above + (ee[2] - obj[2])
            target = np.array([*(dest[:2] + offset), z])
            if abs(ee[2] - z) < 0.006:
                self._go("release")
            return move(env, target, CLOSE, speed=0.6)
        if self.phase == "release":
            if self.count >= 4:
                self._go("retreat")
            return move(env, env.ee_target, OPEN)
        # retreat: straight up; if the task is still unsolved up there, try again
        if ee[2] > CARRY_Z - 0.01 and self.count > 4:
            self._go("approach")
        return move(env, [ee[0], ee[1], CARRY_Z], OPEN)


class PushExpert:
    """Pushes `obj` (on the table) until its centre is within `tol` of `dest`'s centre, gripper closed.

    Lines up behind the object (seen from dest) at HOVER height, lowers, then moves along the
    object-to-dest direction while steering sideways onto the line through the object's centre;
    lines up again if the object slides off that line.
    """

    def __init__(self, obj: str = "target", dest: str = "zone", push_z: float = 0.012, speed: float = 0.4):
        self.obj, self.dest, self.push_z, self.speed = obj, dest, push_z, speed

    def reset(self) -> None:
        self.phase = "line_up"

    def act(self, env: TabletopEnv, obs: dict) -> np.ndarray:
        return act_in_final_phase(self, env)

    def phase_action(self, env: TabletopEnv) -> np.ndarray:
        """The current phase's action (4,); may switch phase first or instead (then `act` asks again)."""
        ee, obj, dest = env.ee_pos, env.pos(self.obj), env.pos(self.dest)
        d = dest[:2] - obj[:2]
        u = d / max(np.linalg.norm(d), 1e-6)
        behind = obj[:2] - u * (half_height(env, self.obj) + 0.03)
        rel = ee[:2] - obj[:2]
        lateral = abs(u[0] * rel[1] - u[1] * rel[0])
        along = float(rel @ u)  # negative: behind the object
        if self.phase == "push" and (lateral > 0.02 or along > -0.015):
            self.phase = "line_up"
        if self.phase == "line_up":
            if ee[2] < obj[2] + 0.035 and np.linalg.norm(ee[:2] - behind) > 0.015:
                return move(env, [ee[0], ee[1], obj[2] + HOVER], CLOSE)  # up first, clear of the object
            target = np.array([*behind, obj[2] + HOVER])
            if np.linalg.norm(ee[:2] - behind) < 0.008:
                self.phase = "lower"
            return move(env, target, CLOSE)
        if self.phase == "lower":
            target = np.array([*behind, self.push_z])
            if abs(ee[2] - self.push_z) < 0.006:
                self.phase = "push"
            return move(env, target, CLOSE)
        # push: forward along u at `speed`, sideways fully onto the line through the object's centre
        err = behind - ee[:2]
        sideways = err - (err @ u) * u
        xy = u * self.speed + sideways / MAX_STEP
        z = (self.push_z - env.ee_target[2]) / MAX_STEP
        return np.clip(np.array([*xy, z, CLOSE]), -1.0, 1.0).astype(np.float32)
