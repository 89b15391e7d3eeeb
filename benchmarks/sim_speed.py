"""Simulation and rendering speed, measured side by side in one run.

    python benchmarks/sim_speed.py [--seconds 3] [--out benchmarks/results/sim_speed.json]

Keys (all measured in this run):
- tabletop_render_fps: 64x64 renders/s of the tabletop scene camera, render only, pinned to one
  core, with vla_prefix.sim.render.make_renderer (fast settings). Goal >= 2000.
- default_renderer_fps: the same scene and state through a plain mujoco.Renderer with MuJoCo's
  default render settings (offscreen buffer size, shadow map size, multisampling, mesh quality,
  scene flags). render_speedup = tabletop_render_fps / default_renderer_fps. Goal >= 20.
- default_renderer_fps_shadow_light, render_speedup_vs_shadow_light: the same, with one
  shadow-casting light added (MJCF lights cast shadows by default). Context only: the tabletop
  scene itself is lit by the headlight alone, which casts no shadow.
- tabletop_step_render_per_s (scene camera) and tabletop_step_render_per_s_2cams (scene + wrist):
  env.step with 64x64 observations and random actions, one core.
- metaworld_step_render_per_s: the same on make_env("metaworld-pick-place-v3", image_size=64) with
  its default cameras (metaworld_cameras of them), one core.
- vector_scaling_2_workers: env steps/s of a gymnasium AsyncVectorEnv with 2 workers over 1 worker
  (tabletop pick-place, 64x64, random actions, not pinned). Goal >= 1.7 on 2 idle cores.
  vector_worker_cpu_ms_per_step_*: the workers' CPU time per env step; equal values mean the
  workers do not slow each other down, only compete for cores.
Threads are fixed: BLAS/OpenMP at 1, Mesa llvmpipe at LP_NUM_THREADS=0 (render on the calling
thread, no helper threads) unless set. Other processes on the same cores lower every number, so
the load average before and after is recorded. The JSON is printed as the last line.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("LP_NUM_THREADS", "0")

import vla_prefix  # noqa: E402,F401  (first: sets MUJOCO_GL=egl before mujoco is imported)

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from vla_prefix.sim.registry import make_env  # noqa: E402
from vla_prefix.sim.render import render  # noqa: E402

TABLETOP_TASK = "tabletop-pick-place-red-cube-v0"
METAWORLD_TASK = "metaworld-pick-place-v3"
SIZE = 64


def rate(fn, seconds: float, warmup: int = 20) -> float:
    """Calls of `fn` per second over about `seconds`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def default_render_fps(model: mujoco.MjModel, state: mujoco.MjData, seconds: float) -> float:
    """Renders/s through a plain mujoco.Renderer, the model's render settings reset to MuJoCo's defaults."""
    default = mujoco.MjModel.from_xml_string("<mujoco/>")
    for field in ("shadowsize", "offsamples", "numslices", "numstacks", "numquads"):
        setattr(model.vis.quality, field, getattr(default.vis.quality, field))
    model.vis.global_.offwidth = default.vis.global_.offwidth
    model.vis.global_.offheight = default.vis.global_.offheight
    data = mujoco.MjData(model)
    data.qpos[:] = state.qpos
    data.mocap_pos[:] = state.mocap_pos
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, SIZE, SIZE)

    def frame():
        renderer.update_scene(data, camera="scene")
        return renderer.render()

    fps = rate(frame, seconds, warmup=5)
    renderer.close()
    return fps


def render_rates(seconds: float) -> dict:
    """Fast vs default rendering of one tabletop scene and state (render only)."""
    from vla_prefix_envs.scene import build_spec

    env = make_env(TABLETOP_TASK, image_size=SIZE)
    env.reset(seed=0)
    u = env.unwrapped
    out = {"tabletop_render_fps": rate(lambda: render(u._renderer, u.data, "scene"), seconds)}
    out["default_renderer_fps"] = default_render_fps(build_spec(u.task.objects).compile(), u.data, seconds)
    spec = build_spec(u.task.objects)
    spec.worldbody.add_light(name="sun", pos=[0, 0, 1.5], dir=[0.2, 0.3, -1], castshadow=True)
    out["default_renderer_fps_shadow_light"] = default_render_fps(spec.compile(), u.data, seconds)
    out["render_speedup"] = out["tabletop_render_fps"] / out["default_renderer_fps"]
    out["render_speedup_vs_shadow_light"] = out["tabletop_render_fps"] / out["default_renderer_fps_shadow_light"]
    env.close()
    return out


def step_rate(task_id: str, seconds: float, **kwargs) -> tuple[float, int]:
    """(env steps/s with image observations, number of cameras), random actions, resets included."""
    env = make_env(task_id, **kwargs)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    state = {"seed": 0}

    def step():
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            state["seed"] += 1
            env.reset(seed=state["seed"])

    r = rate(step, seconds)
    env.close()
    return r, obs["image"].shape[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vector_rate(n_workers: int, seconds: float) -> tuple[float, float]:
    """(env steps/s of all workers together, worker CPU ms per env step) for an AsyncVectorEnv
    of `n_workers` tabletop envs."""
    fns = [functools.partial(make_env, TABLETOP_TASK, image_size=SIZE)] * n_workers
    venv = gym.vector.AsyncVectorEnv(fns, context="spawn")  # fresh processes: no inherited GL state
    venv.reset(seed=list(range(n_workers)))
    venv.action_space.seed(0)
    for _ in range(10):
        venv.step(venv.action_space.sample())
    cpu0 = sum(cpu_seconds(p.pid) for p in venv.processes)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        venv.step(venv.action_space.sample())
        n += 1
    wall = time.perf_counter() - start
    cpu = sum(cpu_seconds(p.pid) for p in venv.processes) - cpu0
    venv.close()
    return n_workers * n / wall, 1000 * cpu / (n_workers * n)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="timing window per measurement")
    p.add_argument("--out", default="benchmarks/results/sim_speed.json")
    args = p.parse_args(argv)

    result: dict = {"loadavg_before": os.getloadavg()[0], "cpus": len(os.sched_getaffinity(0))}
    # Vector envs first, unpinned, before this process opens any GL context.
    (one, cpu_one), (two, cpu_two) = vector_rate(1, args.seconds), vector_rate(2, args.seconds)
    result |= {"vector_1_worker_steps_per_s": one, "vector_2_workers_steps_per_s": two,
               "vector_scaling_2_workers": two / one,
               "vector_worker_cpu_ms_per_step_1_worker": cpu_one, "vector_worker_cpu_ms_per_step_2_workers": cpu_two}

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # one core for everything below
    result |= render_rates(args.seconds)
    result["tabletop_step_render_per_s"], _ = step_rate(TABLETOP_TASK, args.seconds, image_size=SIZE, cameras=("scene",))
    result["tabletop_step_render_per_s_2cams"], _ = step_rate(
        TABLETOP_TASK, args.seconds, image_size=SIZE, cameras=("scene", "wrist"))
    result["metaworld_step_render_per_s"], result["metaworld_cameras"] = step_rate(
        METAWORLD_TASK, args.seconds, image_size=SIZE)
    os.sched_setaffinity(0, cpus)

    result |= {
        "image_size": SIZE,
        "lp_num_threads": os.environ["LP_NUM_THREADS"],
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "mujoco": mujoco.__version__,
        "loadavg_after": os.getloadavg()[0],
    }
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
