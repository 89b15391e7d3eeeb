"""vla-prefix's own MuJoCo tabletop suite. Importing it registers every tabletop task and split.

    from vla_prefix.sim import make_env, make_expert
    env = make_env("tabletop-pick-place-red-cube-v0", image_size=64, cameras=("scene", "wrist"))

Add your own task: build a `TabletopTaskSpec` in your module, call `vla_prefix_envs.register(spec)`,
and name the module in `task_modules` (see the README, "Adding a task").
"""

import os

# Mesa's llvmpipe renders on the calling thread (no helper threads). Measured here: no slower at
# 64x64, and required for fork-started vector envs: with helper threads, a worker forked after the
# parent made a GL context (gymnasium's AsyncVectorEnv builds one env in the parent) hangs on its
# first render. Must be set before the first GL context; users may override.
os.environ.setdefault("LP_NUM_THREADS", "0")

import vla_prefix  # noqa: E402,F401  (before mujoco: sets MUJOCO_GL=egl)

from .experts import PickPlaceExpert, PushExpert, ReachExpert, move
from .scene import TabletopEnv, build_model
from .spec import COLORS, ObjectSpec, TabletopTaskSpec
from .tasks import Above, ClearPath, InBowl, InZone, StackedOn, register, standard_scene, suite_tasks, task_info
from .tasks import register_suite as _register_suite

__all__ = [
    "COLORS", "ObjectSpec", "TabletopTaskSpec", "TabletopEnv", "build_model", "register", "task_info",
    "standard_scene", "suite_tasks", "Above", "InZone", "InBowl", "StackedOn", "ClearPath",
    "ReachExpert", "PushExpert", "PickPlaceExpert", "move",
]

TASKS = _register_suite()
