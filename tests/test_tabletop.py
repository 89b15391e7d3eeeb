"""The tabletop suite: interface, determinism, physical grasping, experts, split, user tasks."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vla_prefix_envs
from vla_prefix.errors import ConfigError
from vla_prefix.sim.registry import get_task, list_splits, list_tasks, load_task_modules, make_env, make_expert
from vla_prefix_envs import Above, ObjectSpec, PickPlaceExpert, ReachExpert, TabletopTaskSpec, standard_scene
from vla_prefix_envs.scene import MAX_STEP

TASKS = [t.id for t in list_tasks("tabletop") if t.split in ("pretrain", "heldout")]
SMALL = 16  # image size for tests that do not look at pixels

_ENVS: dict = {}


def small_env(task_id: str):
    """One cached 16x16 env per task (building envs costs more than stepping them)."""
    if task_id not in _ENVS:
        _ENVS[task_id] = make_env(task_id, image_size=SMALL)
    return _ENVS[task_id]


def rollout(env, policy, seed: int) -> tuple[bool, int]:
    obs, info = env.reset(seed=seed)
    done, n = False, 0
    while not done:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        done, n = terminated or truncated, n + 1
    return bool(info["is_success"]), n


# ----------------------------------------------------------------------------- the suite
def test_suite_size_and_split():
    infos = list_tasks("tabletop")
    suite = [t for t in infos if t.split in ("pretrain", "heldout")]
    families = {t.family for t in suite}
    assert len(suite) >= 20 and len(families) >= 4
    splits = list_splits("tabletop")
    pre, held = set(splits["pretrain"]), set(splits["heldout"])
    assert len(held) >= 4 and not pre & held
    pre_families = {get_task(t).family for t in pre}
    # a whole family never seen in pretraining
    assert set(splits["heldout-family"]) and all(get_task(t).family not in pre_families for t in splits["heldout-family"])
    # new combinations: a pretrained family, and an object (kind, colour) that pretraining shows elsewhere
    seen_objects = {o[1:] for t in pre for o in get_task(t).extra["objects"] if o[0] == "target"}
    for tid in splits["heldout-combo"]:
        info = get_task(tid)
        target = next(o[1:] for o in info.extra["objects"] if o[0] == "target")
        assert info.split == "heldout" and info.family in pre_families and target in seen_objects
        same_family = [get_task(t) for t in pre if get_task(t).family == info.family]
        assert all(next(o[1:] for o in t.extra["objects"] if o[0] == "target") != target for t in same_family)
    for t in suite:
        assert len(t.paraphrases) >= 2 and t.instruction not in t.paraphrases
        assert t.id.startswith("tabletop-") and t.max_episode_steps <= 120


@pytest.mark.parametrize("task_id", TASKS)
def test_check_env(task_id):
    env = make_env(task_id, image_size=SMALL, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_default_interface_two_cameras():
    env = make_env("tabletop-pick-place-red-cube-v0", cameras=("scene", "wrist"), render_mode="rgb_array", render_size=96)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert info["is_success"] is False
    assert env.render().shape == (96, 96, 3)
    assert env.spec.max_episode_steps == get_task("tabletop-pick-place-red-cube-v0").max_episode_steps
    # the scene camera sees the objects: the first frame is far from a flat colour
    assert obs["image"][0].std() > 10 and obs["image"][1].std() > 5
    env.close()


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_state_and_first_image():
    a, b = make_env("tabletop-stack-red-on-blue-v0"), make_env("tabletop-stack-red-on-blue-v0")
    oa, _ = a.reset(seed=11)
    ob, _ = b.reset(seed=11)
    np.testing.assert_array_equal(oa["image"], ob["image"])
    np.testing.assert_array_equal(oa["proprio"], ob["proprio"])
    np.testing.assert_array_equal(a.unwrapped.data.qpos, b.unwrapped.data.qpos)
    a.reset(seed=12)  # reset again: the seed, not history, decides
    oa2, _ = a.reset(seed=11)
    np.testing.assert_array_equal(oa2["image"], ob["image"])
    a.close()
    b.close()


def test_different_seeds_different_layouts():
    env = small_env("tabletop-pick-place-red-cube-v0")
    layouts = []
    for seed in range(5):
        env.reset(seed=seed)
        layouts.append(np.concatenate([env.unwrapped.pos(n)[:2] for n in ("target", "bowl", "zone")]))
    for i in range(5):
        for j in range(i):
            assert np.abs(layouts[i] - layouts[j]).max() > 0.01


def test_distractors_never_match_the_named_object():
    env = small_env("tabletop-pick-place-red-cube-v0").unwrapped
    seen = set()
    for seed in range(20):
        env.reset(seed=seed)
        others = [(env.kind(n), env.color(n)) for n in env._objects if n != "target"]
        assert ("cube", "red") not in others
        assert len(set(others)) == len(others)
        seen.update(others)
    assert len({c for k, c in seen if k == "ball"}) >= 3  # distractor colours do vary


# ----------------------------------------------------------------------------- physics
def test_grasp_is_physical_object_falls_when_gripper_opens():
    env = small_env("tabletop-pick-place-red-ball-v0")
    u = env.unwrapped
    expert = PickPlaceExpert("target", "bowl")
    obs, _ = env.reset(seed=4)
    expert.reset()
    for _ in range(60):
        obs, _, _, _, info = env.step(expert.act(u, obs))
        if u.pos("target")[2] > 0.07:
            break
    assert u.pos("target")[2] > 0.07 and u.touching("target", "gripper")  # lifted, by the fingers
    assert info["engaged_object"] == "target"  # failure analysis names what was lifted
    for _ in range(10):  # open in place
        obs, *_ = env.step(np.array([0, 0, 0, -1], np.float32))
    assert u.pos("target")[2] < 0.03 and not u.touching("target", "gripper")


def test_open_gripper_cannot_lift():
    env = small_env("tabletop-pick-place-red-cube-v0")
    u = env.unwrapped
    expert = PickPlaceExpert("target", "bowl")
    obs, _ = env.reset(seed=2)
    expert.reset()
    top = 0.0
    for _ in range(40):
        a = expert.act(u, obs)
        a[3] = -1.0  # never close
        obs, *_ = env.step(a)
        top = max(top, u.pos("target")[2])
    assert top < 0.03


# ----------------------------------------------------------------------------- failure analysis
def test_engaged_object_names_a_distractor_the_gripper_hovers_over():
    env = small_env("tabletop-pick-place-red-ball-v0")
    u = env.unwrapped
    env.reset(seed=4)
    distractor = next(n for n, o in u._objects.items() if o.kind == "cube" and o.color is None)
    for _ in range(25):  # hover over a distractor cube without touching it
        delta = (u.pos(distractor) - u.ee_pos)[:2] / MAX_STEP
        obs, _, _, _, info = env.step(np.array([*np.clip(delta, -1, 1), 0, -1], np.float32))
    assert info["engaged_object"] == f"distractor {u.color(distractor)} cube"


# ----------------------------------------------------------------------------- experts and random policy
@pytest.mark.parametrize("task_id", TASKS)
def test_expert_succeeds_random_fails(task_id):
    env = small_env(task_id)
    expert = make_expert(task_id)

    def act(obs):
        return expert.act(env.unwrapped, obs)

    for seed in (100, 101):
        expert.reset()
        ok, steps = rollout(env, act, seed)
        assert ok, f"expert failed on seed {seed}"
        assert steps < get_task(task_id).max_episode_steps
    rng = np.random.default_rng(0)
    wins = sum(rollout(env, lambda obs: rng.uniform(-1, 1, 4).astype(np.float32), s)[0] for s in (200, 201))
    assert wins == 0


@pytest.mark.parametrize("task_id", ["tabletop-pick-place-red-cube-v0", "tabletop-push-red-cube-v0"])
def test_expert_acts_on_the_phase_it_ends_the_step_in(task_id):
    """Markov labels: asking the expert again, in the same state, gives the same action and no switch
    (an expert that returned the old phase's action at a switch fails this at every switch)."""
    env = small_env(task_id)
    expert = make_expert(task_id)
    expert.reset()
    obs, _ = env.reset(seed=100)
    phases, done = [expert.phase], False
    while not done:
        action = expert.act(env.unwrapped, obs)
        probe = copy.deepcopy(expert)
        again = probe.phase_action(env.unwrapped)
        assert probe.phase == expert.phase, f"step {len(phases)}: {expert.phase} -> {probe.phase}"
        np.testing.assert_array_equal(again, action)
        phases.append(expert.phase)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    assert info["is_success"]
    assert sum(a != b for a, b in zip(phases, phases[1:])) >= 2  # the episode did cross phase switches


def test_async_vector_env_with_default_fork_start():
    """Workers forked after the parent made a GL context must still render (LP_NUM_THREADS=0)."""
    import functools

    import gymnasium as gym

    small_env("tabletop-reach-red-cube-v0").reset(seed=0)  # a GL context in this process
    venv = gym.vector.AsyncVectorEnv([functools.partial(make_env, "tabletop-reach-red-cube-v0", image_size=SMALL)] * 2)
    try:
        venv.reset_async(seed=[0, 1])
        obs, _ = venv.reset_wait(timeout=60)
        assert obs["image"].shape == (2, 2, SMALL, SMALL, 3)  # scene + wrist (the default cameras)
        assert not np.array_equal(obs["image"][0], obs["image"][1])
        venv.step_async(np.zeros((2, 4), np.float32))
        obs, *_ = venv.step_wait(timeout=60)
        assert obs["proprio"].shape == (2, 4)
    finally:
        venv.close(terminate=True)


# ----------------------------------------------------------------------------- user tasks and bad input
def test_user_task_registered_from_test_code():
    spec = TabletopTaskSpec(
        id="tabletop-test-reach-purple-ball-v0",
        family="reach",
        split="custom",
        instruction="reach the purple ball",
        paraphrases=("go to the purple ball", "move the gripper over the purple ball"),
        objects=standard_scene(ObjectSpec("target", "ball", "purple")),
        success=Above("target"),
        expert=ReachExpert,
        max_episode_steps=30,
    )
    vla_prefix_envs.register(spec)
    assert get_task(spec.id).split == "custom" and spec.id in list_splits("tabletop")["custom"]
    env = make_env(spec.id, image_size=SMALL)
    expert = make_expert(spec.id)
    expert.reset()
    ok, _ = rollout(env, lambda obs: expert.act(env.unwrapped, obs), seed=0)
    assert ok and env.unwrapped.color("target") == "purple"
    with pytest.raises(ConfigError, match="already registered"):
        vla_prefix_envs.register(spec)
    env.close()


def test_example_task_module_loads_and_solves():
    load_task_modules(["vla_prefix_envs.examples.lift_task"])
    env = make_env("tabletop-lift-orange-cube-v0", image_size=SMALL)
    expert = make_expert("tabletop-lift-orange-cube-v0")
    for seed in (0, 1):
        expert.reset()
        assert rollout(env, lambda obs: expert.act(env.unwrapped, obs), seed)[0]
    env.close()


def test_bad_input_names_the_fix():
    with pytest.raises(ConfigError, match="cameras"):
        make_env("tabletop-reach-red-cube-v0", cameras=("top",))
    with pytest.raises(ConfigError, match="kind"):
        ObjectSpec("x", "pyramid")
    with pytest.raises(ConfigError, match="colour"):
        ObjectSpec("x", "cube", "teal")
    with pytest.raises(ConfigError, match="ambiguous"):
        TabletopTaskSpec("tabletop-x-v0", "f", "s", "i", ("a", "b"),
                         (ObjectSpec("a", "cube", "red"), ObjectSpec("b", "cube", "red")), Above(), ReachExpert)
    env = small_env("tabletop-reach-red-cube-v0")
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="shape"):
        env.step(np.zeros(3, np.float32))
