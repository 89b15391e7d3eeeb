"""Scripted-expert success on all 50 Meta-World v3 tasks, state only (no rendering).

For each task: `--n-seeds` episodes on the first seeds of the `train` range (the seeds demos are
collected on), each run until the first `success` or Meta-World's 500-step limit, with the same
seeded layouts as the image env (`metaworld_suite.seed_and_reset`). Records the first-success step
of every episode and picks an episode cap per task: the smallest of CAPS that is at least
`CAP_MARGIN` x the slowest observed success.

    nice -n 10 python benchmarks/metaworld_expert_success.py            # ~10 min on 2 cores
    python benchmarks/metaworld_expert_success.py --tasks pick-place-v3,reach-v3 --n-seeds 5

Partial results are checkpointed per task in `<out stem>.partial.json`; a rerun resumes from there
(`--fresh` ignores it); the checkpoint is removed once the run completes.
Writes results/metaworld/expert_success.json and .md (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from vla_prefix.utils.atomic import atomic_write_bytes

MAX_STEPS = 500
CAPS = (100, 150, 200, 250, 300, 400, 500)
CAP_MARGIN = 1.25


def run_task(args: tuple[str, list[int]]) -> tuple[str, dict]:
    """All episodes of one task; returns (env name, record)."""
    name, seed_list = args
    from vla_prefix.sim.metaworld_suite import MetaWorldExpert, make_sawyer_env, seed_and_reset

    env = make_sawyer_env(name)
    expert = MetaWorldExpert(name)
    first_success: list[int | None] = []
    t0 = time.time()
    n_steps = 0
    for seed in seed_list:
        state = seed_and_reset(env, seed)
        expert.reset()
        hit = None
        for step in range(1, MAX_STEPS + 1):
            state, _, _, _, info = env.step(expert.act_state(state))
            n_steps += 1
            if info["success"]:
                hit = step
                break
        first_success.append(hit)
    env.close()
    return name, {"seeds": seed_list, "first_success_step": first_success, "wall_s": time.time() - t0, "env_steps": n_steps}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def summarise(rec: dict) -> dict:
    steps = [s for s in rec["first_success_step"] if s is not None]
    n, k = len(rec["first_success_step"]), len(steps)
    slowest = max(steps) if steps else MAX_STEPS
    cap = next((c for c in CAPS if c >= CAP_MARGIN * slowest), MAX_STEPS)
    k_cap = sum(s <= cap for s in steps)
    lo, hi = wilson(k, n)
    return {
        "n": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "wilson95": [round(lo, 4), round(hi, 4)],
        "mean_steps_to_success": float(np.mean(steps)) if steps else None,
        "p95_steps_to_success": float(np.percentile(steps, 95)) if steps else None,
        "max_steps_to_success": max(steps) if steps else None,
        "cap": cap,
        "success_rate_at_cap": k_cap / n if n else 0.0,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Meta-World scripted-expert success (state only)",
        "",
        f"metaworld {result['metaworld_version']}, mujoco {result['mujoco_version']}; "
        f"{result['n_seeds']} seeds per task (`train` seeds {result['seeds'][0]}..{result['seeds'][-1]}), "
        f"run to first success or {MAX_STEPS} steps. `cap` = smallest of {list(CAPS)} >= "
        f"{CAP_MARGIN} x slowest success; it is the task's registered `max_episode_steps`.",
        "",
        f"Mean success over tasks: {result['mean_success_rate']:.3f}; at the caps: {result['mean_success_rate_at_cap']:.3f}; "
        f"tasks at >= 0.95: {result['n_tasks_ge_095']}/{len(result['tasks'])}.",
        "",
        "| task | split | success | Wilson 95% | mean steps | max steps | cap | success at cap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["tasks"].items():
        s = r["summary"]
        mean = f"{s['mean_steps_to_success']:.0f}" if s["mean_steps_to_success"] is not None else "-"
        mx = s["max_steps_to_success"] if s["max_steps_to_success"] is not None else "-"
        lines.append(
            f"| {name} | {r['split']} | {s['successes']}/{s['n']} | {s['wilson95'][0]:.2f}-{s['wilson95'][1]:.2f} | "
            f"{mean} | {mx} | {s['cap']} | {s['success_rate_at_cap']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="all", help="comma-separated Meta-World env names, or 'all'")
    parser.add_argument("--n-seeds", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="results/metaworld/expert_success.json")
    parser.add_argument("--fresh", action="store_true", help="ignore the checkpoint of an earlier run")
    parser.add_argument("--keep-partial", action="store_true", help="keep the checkpoint file after a complete run")
    args = parser.parse_args()

    import metaworld
    import mujoco

    from vla_prefix.seeds import seeds
    from vla_prefix.sim.metaworld_suite import benchmark_splits, env_names

    names = env_names() if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [n for n in names if n not in env_names()]
    if unknown:
        sys.exit(f"error: unknown Meta-World env(s) {unknown}; see metaworld.env_dict.ALL_V3_ENVIRONMENTS")
    seed_list = seeds("train", args.n_seeds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial_path = out.with_name(out.stem + ".partial.json")
    done: dict = json.loads(partial_path.read_text()) if partial_path.exists() and not args.fresh else {}
    done = {k: v for k, v in done.items() if v["seeds"] == seed_list}
    todo = [n for n in names if n not in done]
    print(f"{len(done)} tasks already done, {len(todo)} to run", flush=True)

    t0 = time.time()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for name, rec in pool.imap_unordered(run_task, [(n, seed_list) for n in todo]):
            done[name] = rec
            atomic_write_bytes(partial_path, json.dumps(done).encode())
            k = sum(s is not None for s in rec["first_success_step"])
            print(f"{name}: {k}/{len(seed_list)} in {rec['wall_s']:.0f}s ({time.time() - t0:.0f}s total)", flush=True)

    heldout = set(benchmark_splits()["ML45_test"])
    tasks = {}
    for name in names:
        rec = done[name]
        tasks[name] = {"split": "heldout" if name in heldout else "pretrain", "summary": summarise(rec), **rec}
    rates = [t["summary"]["success_rate"] for t in tasks.values()]
    result = {
        "metaworld_version": metaworld.__version__ if hasattr(metaworld, "__version__") else _dist_version("metaworld"),
        "mujoco_version": mujoco.__version__,
        "n_seeds": len(seed_list),
        "seeds": seed_list,
        "max_steps": MAX_STEPS,
        "caps_considered": list(CAPS),
        "cap_margin": CAP_MARGIN,
        "mean_success_rate": float(np.mean(rates)),
        "mean_success_rate_at_cap": float(np.mean([t["summary"]["success_rate_at_cap"] for t in tasks.values()])),
        "n_tasks_ge_095": int(sum(r >= 0.95 for r in rates)),
        "caps": {n: t["summary"]["cap"] for n, t in tasks.items()},
        "tasks": tasks,
    }
    atomic_write_bytes(out, json.dumps(result, indent=1).encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown(result).encode())
    if not args.keep_partial:
        partial_path.unlink(missing_ok=True)
    print(f"wrote {out} and {out.with_suffix('.md')}; mean success {result['mean_success_rate']:.3f}")


def _dist_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
