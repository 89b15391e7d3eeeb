"""A tiny real MuJoCo task suite (`tiny`), registered the way a user adds tasks.

Importing this module registers two reach tasks and a split `all`. It follows the env interface:
obs = {"image": uint8 (n_cam, H, W, 3), "proprio": float32 (4,)}, action = Box(-1, 1, (4,)),
`info["is_success"]` every step. The hand is a mocap sphere moved by `action[:3] * STEP` metres and
clipped to a box of half-width `REACH`; `action[3] > 0` closes the (virtual) gripper. Targets are
drawn a bit wider than `REACH`, so about one seed in six is unreachable and the expert fails on it.

Use it from the CLI with `task_modules=[tiny_task]` (with `tests/` on PYTHONPATH) and `suite=tiny`.
"""

from __future__ import annotations

import vla_prefix  # noqa: F401  (first: it sets MUJOCO_GL=egl before mujoco is imported)

import gymnasium as gym
import mujoco
import numpy as np

from vla_prefix.errors import ConfigError
from vla_prefix.sim import registry
from vla_prefix.sim.registry import TaskInfo, register_split, register_task
from vla_prefix.sim.render import make_renderer, render

SUITE = "tiny"
STEP = 0.02  # metres per unit action
REACH = 0.25  # the hand stays within |x|, |y| <= REACH
SUCCESS_DIST = 0.03

XML = """
<mujoco model="tiny-reach">
  <option timestep="0.01"/>
  <worldbody>
    <light pos="0 0 1.5" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="0.5 0.5 0.01" rgba="0.8 0.8 0.8 1"/>
    <body name="hand" mocap="true" pos="0 0 0.1">
      <geom type="sphere" size="0.025" rgba="0.9 0.9 0.2 1" contype="0" conaffinity="0"/>
    </body>
    <body name="red" mocap="true" pos="0.1 0 0.05">
      <geom type="sphere" size="0.025" rgba="0.9 0.1 0.1 1" contype="0" conaffinity="0"/>
    </body>
    <body name="blue" mocap="true" pos="-0.1 0 0.05">
      <geom type="sphere" size="0.025" rgba="0.1 0.2 0.9 1" contype="0" conaffinity="0"/>
    </body>
    <camera name="top" pos="0 0 0.9"/>
    <camera name="front" pos="0 -0.9 0.5" xyaxes="1 0 0 0 0.5 0.87"/>
  </worldbody>
</mujoco>
"""


class TinyReachEnv(gym.Env):
    """Move the hand to the `target` sphere. The other sphere is a distractor."""

    metadata = {"render_modes": []}

    def __init__(self, target: str = "red", image_size: int = 64, cameras: tuple[str, ...] = ("top",)):
        self.target = target
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.model = mujoco.MjModel.from_xml_string(XML)
        self.data = mujoco.MjData(self.model)
        self.renderer = make_renderer(self.model, self.image_size, self.image_size)
        self.gripper = 0.0
        n = len(self.cameras)
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (n, self.image_size, self.image_size, 3), np.uint8),
                "proprio": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._mocap = {name: self.model.body(name).mocapid[0] for name in ("hand", "red", "blue")}

    def _pos(self, name: str) -> np.ndarray:
        return self.data.mocap_pos[self._mocap[name]]

    def _obs(self) -> dict:
        images = np.stack([render(self.renderer, self.data, cam) for cam in self.cameras])
        proprio = np.append(self._pos("hand"), self.gripper).astype(np.float32)
        return {"image": images, "proprio": proprio}

    def _success(self) -> bool:
        return bool(np.linalg.norm(self._pos("hand") - self._pos(self.target)) < SUCCESS_DIST)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        rng = self.np_random
        self._pos("hand")[:] = [*rng.uniform(-0.1, 0.1, 2), 0.1]
        self._pos("red")[:] = [*rng.uniform(-0.3, 0.3, 2), 0.05]
        self._pos("blue")[:] = [*rng.uniform(-0.3, 0.3, 2), 0.05]
        self.gripper = 0.0
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), {"is_success": self._success()}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        hand = self._pos("hand")
        hand[:] = hand + STEP * action[:3]
        hand[:2] = np.clip(hand[:2], -REACH, REACH)
        hand[2] = np.clip(hand[2], 0.03, 0.3)
        self.gripper = 1.0 if action[3] > 0 else 0.0
        mujoco.mj_step(self.model, self.data)
        success = self._success()
        reward = -float(np.linalg.norm(hand - self._pos(self.target)))
        return self._obs(), reward, False, False, {"is_success": success}

    def close(self):
        self.renderer.close()


def reachable(env: TinyReachEnv) -> bool:
    """Whether the hand can get within SUCCESS_DIST of the target (an independent check of the expert)."""
    x, y = env._pos(env.target)[:2]
    return bool(np.hypot(max(0.0, abs(x) - REACH), max(0.0, abs(y) - REACH)) < SUCCESS_DIST)


class TinyReachExpert:
    """Proportional control towards the target, read from privileged simulator state."""

    def reset(self) -> None:
        pass

    def act(self, env: TinyReachEnv, obs: dict) -> np.ndarray:
        delta = (env._pos(env.target) - env._pos("hand")) / STEP
        return np.append(np.clip(delta, -1, 1), -1.0).astype(np.float32)


def _register() -> None:
    registry.SUITE_MODULES.setdefault(SUITE, __name__)  # `suite=tiny` resolves to this module
    ids = []
    for colour in ("red", "blue"):
        info = TaskInfo(
            id=f"tiny-reach-{colour}-v0",
            suite=SUITE,
            family="reach",
            split="pretrain" if colour == "red" else "heldout",
            instruction=f"reach the {colour} ball",
            max_episode_steps=30,
        )
        register_task(info, lambda colour=colour, **kw: TinyReachEnv(target=colour, **kw), TinyReachExpert)
        ids.append(info.id)
    register_split(SUITE, "all", ids)


try:
    _register()
except ConfigError:  # already registered: this file was imported under another name (e.g. `tests.tiny_task`)
    pass
