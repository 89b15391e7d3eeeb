"""Meta-World (PyPI `metaworld` 3.1.1) as a vla-prefix suite: 50 v3 tasks with images, proprio and experts.

Task ids are `metaworld-<env name>` (e.g. `metaworld-pick-place-v3`, gym id
`vla_prefix/metaworld-pick-place-v3`); `family` is the Meta-World env name without `-v3`.
`TaskInfo.split` is `pretrain` for the 45 ML45 train tasks and `heldout` for the 5 ML45 test
tasks. Named splits (taken from `metaworld.env_dict`): MT10, MT50, ML10_train, ML10_test,
ML45_train, ML45_test.

Interface (same as every suite):
- observation `{"image": uint8 (n_cameras, S, S, 3), "proprio": float32 (4,)}`; proprio is the hand
  position (m, world frame) and the gripper opening (0 closed .. 1 open). Object and goal positions
  never reach the observation; the expert reads them from `env.unwrapped.state` (39-D).
- action `Box(-1, 1, (4,), float32)`: hand delta xyz (1 cm per unit, per step) and gripper
  command (+1 close, -1 open).
- `info["is_success"]` from Meta-World's `info["success"]`; with `terminate_on_success` (default)
  the episode terminates on the first success. The time limit comes from the registration.

Seeding: `reset(seed=s)` seeds Meta-World's own generator (`SawyerXYZEnv.seed(s)`) with
`seeded_rand_vec=True` and the random vector unfrozen, so every seed draws a fresh layout from the
task's full reset space and the same seed always gives the same state and first frame. (The
benchmark classes `MT1`/`ML1` instead freeze one of 50 fixed layouts per task and reseed from the
global numpy state.)

Cameras: the corner cameras render upside down through `mujoco.Renderer` and are flipped
vertically. `corner4` is `corner2` moved closer to the table (same orientation).
"""

from __future__ import annotations

import atexit
import pickle
import warnings
import weakref

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from ..errors import ConfigError, closest
from .metaworld_tasks import INSTRUCTIONS
from .registry import TaskInfo, register_split, register_task
from .render import make_renderer, render

SUITE = "metaworld"
# Chosen from benchmarks/metaworld_camera_choice.py (results/metaworld/camera_choice.json).
DEFAULT_CAMERAS: tuple[str, ...] = ("corner4", "gripperPOV")
DEFAULT_IMAGE_SIZE = 64
FLIPPED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
METAWORLD_MAX_PATH_LENGTH = 500  # Meta-World raises if stepped past this
PROPRIO_LOW = np.array([-0.525, 0.348, -0.0525, 0.0], np.float32)
PROPRIO_HIGH = np.array([0.525, 1.025, 0.7, 1.0], np.float32)

# Per-task episode caps (`max_episode_steps`), measured by benchmarks/metaworld_expert_success.py
# (results/metaworld/expert_success.json, key "caps"): the smallest of 100/150/200/250/300/400/500
# that is >= 1.25 x the slowest scripted-expert success over 50 seeds, so every success the expert
# reaches within Meta-World's 500 steps is kept. Regenerate from that file when metaworld changes.
MAX_EPISODE_STEPS: dict[str, int] = {
    "assembly-v3": 150,
    "basketball-v3": 500,
    "bin-picking-v3": 400,
    "box-close-v3": 250,
    "button-press-topdown-v3": 100,
    "button-press-topdown-wall-v3": 100,
    "button-press-v3": 100,
    "button-press-wall-v3": 200,
    "coffee-button-v3": 100,
    "coffee-pull-v3": 150,
    "coffee-push-v3": 100,
    "dial-turn-v3": 150,
    "disassemble-v3": 400,
    "door-close-v3": 100,
    "door-lock-v3": 200,
    "door-open-v3": 150,
    "door-unlock-v3": 150,
    "hand-insert-v3": 100,
    "drawer-close-v3": 100,
    "drawer-open-v3": 150,
    "faucet-open-v3": 100,
    "faucet-close-v3": 100,
    "hammer-v3": 100,
    "handle-press-side-v3": 100,
    "handle-press-v3": 100,
    "handle-pull-side-v3": 150,
    "handle-pull-v3": 200,
    "lever-pull-v3": 150,
    "pick-place-wall-v3": 150,
    "pick-out-of-hole-v3": 200,
    "pick-place-v3": 100,
    "plate-slide-v3": 100,
    "plate-slide-side-v3": 100,
    "plate-slide-back-v3": 150,
    "plate-slide-back-side-v3": 100,
    "peg-insert-side-v3": 500,
    "peg-unplug-side-v3": 250,
    "soccer-v3": 200,
    "stick-push-v3": 150,
    "stick-pull-v3": 250,
    "push-v3": 100,
    "push-wall-v3": 150,
    "push-back-v3": 500,
    "reach-v3": 100,
    "reach-wall-v3": 100,
    "shelf-place-v3": 150,
    "sweep-into-v3": 100,
    "sweep-v3": 150,
    "window-open-v3": 150,
    "window-close-v3": 150,
}


def env_names() -> list[str]:
    """All 50 Meta-World v3 env names, in Meta-World's own order."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def task_id(env_name: str) -> str:
    """`pick-place-v3` -> `metaworld-pick-place-v3`."""
    return f"{SUITE}-{env_name}"


def _check_env_name(env_name: str) -> None:
    names = env_names()
    if env_name not in names:
        hint = closest(env_name, names)
        raise ConfigError(
            f"unknown Meta-World env {env_name!r}"
            + (f"; did you mean {', '.join(hint)}?" if hint else "")
        )


def make_sawyer_env(env_name: str):
    """The raw Meta-World env, set up for per-seed random layouts (state only, no rendering).

    `set_task` is given a task whose rand vector is then unfrozen, with `seeded_rand_vec=True`: each
    `seed_and_reset(env, s)` draws the layout from `env.np_random`. The goal stays in the 39-D state
    (`partially_observable=False`) because the scripted experts read it there.
    """
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.types import Task

    _check_env_name(env_name)
    cls = ALL_V3_ENVIRONMENTS[env_name]
    env = cls()
    dummy = np.zeros(env._random_reset_space.low.size)  # replaced by a seeded draw on every reset
    env.set_task(Task(env_name=env_name, data=pickle.dumps({"env_cls": cls, "rand_vec": dummy, "partially_observable": False})))
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env.max_path_length = METAWORLD_MAX_PATH_LENGTH
    return env


def seed_and_reset(sawyer_env, seed: int) -> np.ndarray:
    """Seed Meta-World's generator and reset; returns the 39-D state. Same seed -> same state."""
    sawyer_env.seed(int(seed))
    state, _ = sawyer_env.reset()
    # Meta-World moves goal sites in the model after its last forward pass, so the first frame
    # would show the goal of an earlier draw; recompute positions (the physical state is unchanged).
    mujoco.mj_forward(sawyer_env.model, sawyer_env.data)
    return state


_OPEN_ENVS: "weakref.WeakSet[MetaWorldEnv]" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_renderers() -> None:
    for env in list(_OPEN_ENVS):
        env.close_renderers()


def _register_close_at_exit() -> None:
    """Free GL contexts at exit, before MuJoCo's EGL hook terminates the display.

    Otherwise every unclosed env prints an EGLError traceback at interpreter exit. MuJoCo registers
    its hook when the first context is made; registering ours after it makes ours run first.
    """
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_renderers)
        _ATEXIT_REGISTERED = True


class MetaWorldEnv(gym.Env):
    """One Meta-World task with image + proprio observations (see the module docstring).

    `image_size` (int, square pixels) and `cameras` (names from `metaworld_cameras()`) set the
    images; `render()` returns the cameras side by side at `render_size`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        env_name: str,
        image_size: int = DEFAULT_IMAGE_SIZE,
        cameras: tuple[str, ...] | list[str] | str = DEFAULT_CAMERAS,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        render_size: int = 256,
    ):
        if isinstance(cameras, str):
            cameras = (cameras,)
        cameras = tuple(cameras)
        if not isinstance(image_size, (int, np.integer)) or not 8 <= int(image_size) <= 1024:
            raise ConfigError(f"image_size must be an int in [8, 1024] (square images), got {image_size!r}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.env_name = env_name
        self.sawyer = make_sawyer_env(env_name)
        model = self.sawyer.model
        known = [model.camera(i).name for i in range(model.ncam)]
        if not cameras:
            raise ConfigError(f"cameras must name at least one camera of {known}")
        for cam in cameras:
            if cam not in known:
                hint = closest(cam, known)
                raise ConfigError(
                    f"unknown Meta-World camera {cam!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "") + f" (cameras: {known})"
                )
        self.cameras = cameras
        self.image_size = int(image_size)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self._renderer = None
        self._video_renderer = None
        _OPEN_ENVS.add(self)
        self.state = np.zeros(39)  # the last 39-D Meta-World state (privileged; for experts only)

        n, s = len(cameras), self.image_size
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (n, s, s, 3), np.uint8),
                # Meta-World clips the hand to its _HAND_SPACE and the gripper opening to [0, 1]
                "proprio": spaces.Box(PROPRIO_LOW, PROPRIO_HIGH, (4,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)

    # -- observation -------------------------------------------------------------------------
    def _frame(self, renderer, cam: str) -> np.ndarray:
        img = render(renderer, self.sawyer.data, cam)
        return np.ascontiguousarray(img[::-1]) if cam in FLIPPED_CAMERAS else img

    def _images(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = make_renderer(self.sawyer.model, self.image_size, self.image_size)
            _register_close_at_exit()
        return np.stack([self._frame(self._renderer, cam) for cam in self.cameras])

    def _obs(self) -> dict:
        return {"image": self._images(), "proprio": proprio_from_state(self.state)}

    # -- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """`seed` fixes the layout; without one, the next seed comes from this env's generator."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        self.state = seed_and_reset(self.sawyer, seed)
        return self._obs(), {"is_success": False, "seed": seed}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (4,):
            raise ConfigError(f"Meta-World actions have shape (4,) (dx, dy, dz, gripper), got {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        state, reward, _, mw_truncated, mw_info = self.sawyer.step(action)
        self.state = state
        success = bool(mw_info["success"])
        info = {"is_success": success}
        terminated = success and self.terminate_on_success
        return self._obs(), float(reward), terminated, bool(mw_truncated), info

    def render(self):
        """The cameras side by side, uint8 (render_size, n * render_size, 3)."""
        if self._video_renderer is None:
            self._video_renderer = make_renderer(self.sawyer.model, self.render_size, self.render_size)
            _register_close_at_exit()
        frames = [self._frame(self._video_renderer, cam) for cam in self.cameras]
        return np.concatenate(frames, axis=1)

    def close_renderers(self) -> None:
        for r in (self._renderer, self._video_renderer):
            if r is not None:
                r.close()
        self._renderer = self._video_renderer = None

    def close(self):
        self.close_renderers()
        self.sawyer.close()


def proprio_from_state(state: np.ndarray) -> np.ndarray:
    """Hand xyz + gripper opening: the first 4 entries of Meta-World's 39-D state, as float32 (4,)."""
    return np.asarray(state[:4], dtype=np.float32)


def metaworld_cameras() -> list[str]:
    """Camera names of the Meta-World scenes."""
    return ["topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV"]


class MetaWorldExpert:
    """Meta-World's scripted policy for one task (`metaworld.policies`), in the Expert protocol.

    `act(env, obs)` reads the privileged 39-D state from `env.unwrapped.state`; `obs` is unused.
    """

    def __init__(self, env_name: str):
        from metaworld.policies import ENV_POLICY_MAP

        self.env_name = env_name
        self.policy = ENV_POLICY_MAP[env_name]()

    def reset(self) -> None:
        pass  # Meta-World's policies are stateless

    def act(self, env, obs: dict | None = None) -> np.ndarray:
        state = getattr(env, "unwrapped", env).state
        return self.act_state(state)

    def act_state(self, state: np.ndarray) -> np.ndarray:
        """The expert action for a 39-D state, float32 (4,) in [-1, 1]."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high" on most steps
            action = self.policy.get_action(state)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


def _env_factory(env_name: str):
    def factory(**kwargs) -> MetaWorldEnv:
        return MetaWorldEnv(env_name, **kwargs)

    return factory


def _expert_factory(env_name: str):
    def factory() -> MetaWorldExpert:
        return MetaWorldExpert(env_name)

    return factory


def benchmark_splits() -> dict[str, list[str]]:
    """Meta-World's own benchmark membership (env names), from `metaworld.env_dict`."""
    from metaworld import env_dict

    return {
        "MT10": list(env_dict.MT10_V3),
        "MT50": list(env_dict.MT50_V3),
        "ML10_train": list(env_dict.ML10_V3["train"]),
        "ML10_test": list(env_dict.ML10_V3["test"]),
        "ML45_train": list(env_dict.ML45_V3["train"]),
        "ML45_test": list(env_dict.ML45_V3["test"]),
    }


def register_all() -> None:
    """Register the 50 tasks and the named splits (called once, on import)."""
    splits = benchmark_splits()
    heldout = set(splits["ML45_test"])
    for name in env_names():
        instruction, *paraphrases = INSTRUCTIONS[name]
        info = TaskInfo(
            id=task_id(name),
            suite=SUITE,
            family=name.removesuffix("-v3"),
            split="heldout" if name in heldout else "pretrain",
            instruction=instruction,
            paraphrases=tuple(paraphrases),
            max_episode_steps=MAX_EPISODE_STEPS.get(name, METAWORLD_MAX_PATH_LENGTH),
            extra={"metaworld_env": name, "benchmarks": sorted(k for k, v in splits.items() if name in v)},
        )
        register_task(info, _env_factory(name), _expert_factory(name))
    for split, names in splits.items():
        register_split(SUITE, split, [task_id(n) for n in names])


register_all()
