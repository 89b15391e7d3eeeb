"""The Meta-World suite: registration, splits, interface, seeding, privileged-state hiding, experts."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from vla_prefix.errors import ConfigError
from vla_prefix.sim import registry
from vla_prefix.sim.metaworld_suite import (
    MAX_EPISODE_STEPS,
    MetaWorldEnv,
    benchmark_splits,
    env_names,
    make_sawyer_env,
    seed_and_reset,
)

pytestmark = pytest.mark.xdist_group("metaworld")

HELDOUT = {"bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3", "door-unlock-v3"}


@pytest.fixture(scope="module")
def env():
    e = registry.make_env("metaworld-pick-place-v3")
    yield e
    e.close()


def test_all_50_tasks_registered_with_text():
    tasks = registry.list_tasks("metaworld")
    assert len(tasks) == 50
    for t in tasks:
        assert t.id.startswith("metaworld-") and t.id.endswith("-v3")
        assert t.gym_id == f"vla_prefix/{t.id}"
        assert t.family == t.id.removeprefix("metaworld-").removesuffix("-v3")
        assert t.instruction and len(t.paraphrases) >= 2
        assert len({t.instruction, *t.paraphrases}) == 1 + len(t.paraphrases)
        assert 0 < t.max_episode_steps <= 500
    assert {t.id.removeprefix("metaworld-") for t in tasks if t.split == "heldout"} == HELDOUT
    assert sum(t.split == "pretrain" for t in tasks) == 45
    assert set(MAX_EPISODE_STEPS) == set(env_names())  # every cap was measured


def test_named_splits_match_metaworld():
    splits = registry.list_splits("metaworld")
    sizes = {name: len(splits[name]) for name in ("MT10", "MT50", "ML10_train", "ML10_test", "ML45_train", "ML45_test")}
    assert sizes == {"MT10": 10, "MT50": 50, "ML10_train": 10, "ML10_test": 5, "ML45_train": 45, "ML45_test": 5}
    for name, env_names in benchmark_splits().items():
        assert splits[name] == [f"metaworld-{n}" for n in env_names]
    assert {t.id for t in registry.resolve_tasks("metaworld", "ML45_test")} == {f"metaworld-{n}" for n in HELDOUT}
    assert not set(splits["ML10_train"]) & set(splits["ML10_test"])


@pytest.mark.parametrize("task", ["metaworld-pick-place-v3", "metaworld-door-lock-v3", "metaworld-sweep-into-v3"])
def test_check_env(task):
    e = registry.make_env(task)
    check_env(e.unwrapped, skip_render_check=True)
    e.close()


def test_obs_and_action_spaces(env):
    obs, info = env.reset(seed=0)
    assert set(obs) == {"image", "proprio"}
    assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(info["is_success"], bool)
    assert env.observation_space.contains(obs)


def test_image_size_and_cameras_are_configurable():
    e = registry.make_env("metaworld-reach-v3", image_size=32, cameras=("corner4", "topview", "gripperPOV"))
    obs, _ = e.reset(seed=1)
    assert obs["image"].shape == (3, 32, 32, 3)
    assert e.unwrapped.render().shape == (256, 3 * 256, 3)
    e.close()


def test_bad_settings_name_the_fix():
    with pytest.raises(ConfigError, match="corner4"):
        MetaWorldEnv("reach-v3", cameras=("corner5",))
    with pytest.raises(ConfigError, match="image_size"):
        MetaWorldEnv("reach-v3", image_size=0)
    with pytest.raises(ConfigError, match="pick-place-v3"):
        MetaWorldEnv("pick-place-v2")


def test_bad_action_shape_is_rejected(env):
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="shape"):
        env.unwrapped.step(np.zeros(3, np.float32))


def test_same_seed_same_first_frame_after_other_episodes(env):
    first, _ = env.reset(seed=7)
    env.reset(seed=8)
    for _ in range(5):
        env.step(np.array([1.0, -1.0, 0.5, 1.0], np.float32))
    again, _ = env.reset(seed=7)
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["proprio"], again["proprio"])
    np.testing.assert_array_equal(env.unwrapped.state, seed_and_reset(make_sawyer_env("pick-place-v3"), 7))


def test_different_seeds_give_different_layouts(env):
    layouts, frames = [], []
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        layouts.append(env.unwrapped.state[4:7].copy())  # puck position
        frames.append(obs["image"])
        goal = env.unwrapped.sawyer._target_pos
        # the goal marker is drawn where the goal is on the first frame (not at an earlier draw)
        np.testing.assert_allclose(env.unwrapped.sawyer.data.site("goal").xpos, goal, atol=1e-9)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.linalg.norm(layouts[i] - layouts[j]) > 1e-3
            assert not np.array_equal(frames[i], frames[j])


def test_unseeded_resets_continue_the_seeded_stream():
    a = registry.make_env("metaworld-reach-v3", image_size=16, cameras=("corner4",))
    b = registry.make_env("metaworld-reach-v3", image_size=16, cameras=("corner4",))
    a.reset(seed=3)
    b.reset(seed=3)
    oa, ia = a.reset()
    ob, ib = b.reset()
    assert ia["seed"] == ib["seed"]
    np.testing.assert_array_equal(oa["image"], ob["image"])
    a.close()
    b.close()


def test_proprio_is_hand_and_gripper_only(env):
    obs, _ = env.reset(seed=2)
    u = env.unwrapped
    np.testing.assert_allclose(obs["proprio"][:3], u.sawyer.data.body("hand").xpos, atol=1e-6)
    assert 0.0 <= obs["proprio"][3] <= 1.0
    # move the puck and the goal in the simulator: the image changes, the proprio does not
    u.sawyer._target_pos = np.array([0.09, 0.85, 0.25])
    u.sawyer.model.site("goal").pos = u.sawyer._target_pos
    u.sawyer._set_obj_xyz(np.array([-0.08, 0.7, 0.02]))  # sets qpos and runs mj_forward
    u.state = u.sawyer._get_obs()
    moved = u._obs()
    np.testing.assert_array_equal(moved["proprio"], obs["proprio"])
    assert not np.array_equal(moved["image"], obs["image"])
    np.testing.assert_allclose(u.state[4:6], [-0.08, 0.7], atol=1e-6)  # the privileged state did change


def test_expert_solves_pick_place(env):
    expert = registry.make_expert("metaworld-pick-place-v3")
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        success = False
        for _ in range(env.spec.max_episode_steps):
            action = expert.act(env.unwrapped, obs)
            assert action.shape == (4,) and action.dtype == np.float32
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                success = info["is_success"]
                break
        assert success, f"expert failed on seed {seed}"


def test_time_limit_comes_from_registration():
    info = registry.get_task("metaworld-drawer-close-v3")
    e = registry.make_env(info.id, image_size=8, cameras=("corner4",), terminate_on_success=False)
    assert e.spec.max_episode_steps == info.max_episode_steps
    e.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, _, truncated, _ = e.step(np.zeros(4, np.float32))
        steps += 1
    assert steps == info.max_episode_steps
    e.close()


def test_torch_optimizer_after_rendering_does_not_crash():
    """Regression: triton imported after Mesa made a GL context segfaulted (needs a fresh process)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, vla_prefix.sim.registry as R\n"
        "e = R.make_env('metaworld-reach-v3', image_size=16, cameras=('corner4',)); e.reset(seed=0)\n"
        "import torch\n"
        "torch.optim.AdamW([torch.zeros(2, requires_grad=True)])\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
