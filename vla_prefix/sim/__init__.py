"""Simulated task suites behind one interface.

Every task, in every suite, is a gymnasium env with
- observation: `{"image": uint8 (n_cameras, H, W, 3), "proprio": float32 (4,)}`
  (proprio = end-effector xyz + gripper opening; never object or goal state),
- action: `Box(-1, 1, (4,), float32)` = end-effector delta xyz + gripper command,
- `info["is_success"]` (bool) and a time limit,
- optionally `info["engaged_object"]` (str): what the gripper went for, e.g. "target" or
  "distractor yellow cube"; evaluation counts it over failed episodes (tabletop provides it),
and a scripted expert that reads privileged simulator state.
"""

from .registry import (  # noqa: F401
    Expert,
    TaskInfo,
    get_task,
    list_splits,
    list_tasks,
    make_env,
    make_expert,
    register_split,
    register_task,
    resolve_tasks,
)
