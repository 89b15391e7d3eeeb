"""Two tiny MuJoCo tasks with predictable outcomes, for the evaluation tests (suite `evaltiny`).

Built on tests/tiny_task.py's `TinyReachEnv` (same scene and hand dynamics: the hand moves
`action[:3] * STEP` metres per step). `evaltiny-right-v0` succeeds once the hand's x passes
+GOAL_X, `evaltiny-left-v0` once it passes -GOAL_X, so a constant action succeeds or fails
predictably. The envs support `render_mode="rgb_array"` (front camera, `render_size` pixels), to
exercise the render path of the rollout's videos.
"""

from __future__ import annotations

import numpy as np
import tiny_task

from vla_prefix.errors import ConfigError
from vla_prefix.sim import registry
from vla_prefix.sim.registry import TaskInfo, register_split, register_task
from vla_prefix.sim.render import make_renderer, render

SUITE = "evaltiny"
GOAL_X = 0.15  # hand x starts in [-0.1, 0.1]: 3 to 13 steps of a full +x (or -x) action
MAX_STEPS = 20


class EdgeEnv(tiny_task.TinyReachEnv):
    """Move the hand past x = `sign` * GOAL_X."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, sign: float, image_size: int = 64, cameras=("top",), render_mode=None, render_size=None):
        super().__init__(target="red", image_size=image_size, cameras=cameras)
        self.sign = float(sign)
        self.render_mode = render_mode
        self.render_size = int(render_size or image_size)
        self._video_renderer = None

    def _success(self) -> bool:
        return bool(self.sign * self._pos("hand")[0] > GOAL_X)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._video_renderer is None:
            self._video_renderer = make_renderer(self.model, self.render_size, self.render_size)
        return render(self._video_renderer, self.data, "front")

    def close(self):
        if self._video_renderer is not None:
            self._video_renderer.close()
        super().close()


class EdgeExpert:
    def __init__(self, sign: float):
        self.sign = sign

    def reset(self) -> None:
        pass

    def act(self, env, obs) -> np.ndarray:
        return np.array([self.sign, 0, 0, -1], np.float32)


def _register() -> None:
    registry.SUITE_MODULES.setdefault(SUITE, __name__)
    ids = []
    for name, sign in (("right", 1.0), ("left", -1.0)):
        info = TaskInfo(id=f"evaltiny-{name}-v0", suite=SUITE, family="edge", split="pretrain",
                        instruction=f"move {name}", max_episode_steps=MAX_STEPS)
        register_task(info, lambda sign=sign, **kw: EdgeEnv(sign, **kw), lambda sign=sign: EdgeExpert(sign))
        ids.append(info.id)
    register_split(SUITE, "all", ids)


try:
    _register()
except ConfigError:  # already registered under another module name
    pass
