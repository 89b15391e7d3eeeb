"""Measure every tabletop expert's success rate and write it as JSON and a markdown table.

    python -m vla_prefix_envs.expert_success --n 50 --out results/tabletop

Per task: successes / episodes on `n` seeds of the chosen seed range (vla_prefix.seeds), the mean
and max steps of the episodes, and the time limit. Episodes run through `make_env` (time limit on).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vla_prefix.errors import cli_errors
from vla_prefix.seeds import seeds as seed_range
from vla_prefix.sim.registry import list_tasks, make_env, make_expert, resolve_tasks
from vla_prefix.utils.atomic import atomic_write_bytes


def run_expert(task_id: str, seeds: list[int], image_size: int = 64) -> dict:
    """Roll out the task's expert once per seed. Returns counts, steps and per-seed outcomes."""
    env = make_env(task_id, image_size=image_size)
    expert = make_expert(task_id)
    outcomes, steps = [], []
    try:
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            expert.reset()
            done, n = False, 0
            while not done:
                obs, _, terminated, truncated, info = env.step(expert.act(env.unwrapped, obs))
                n += 1
                done = terminated or truncated
            outcomes.append(bool(info["is_success"]))
            steps.append(n)
    finally:
        env.close()
    return {
        "successes": int(sum(outcomes)),
        "episodes": len(seeds),
        "success_rate": float(np.mean(outcomes)),
        "mean_steps": float(np.mean(steps)),
        "max_steps": int(max(steps)),
        "failed_seeds": [s for s, ok in zip(seeds, outcomes) if not ok],
    }


def to_markdown(report: dict) -> str:
    lines = [
        f"# Tabletop expert success ({report['episodes_per_task']} episodes per task, "
        f"`{report['seed_range']}` seeds)",
        "",
        "| task | family | split | success | mean steps | max steps | time limit |",
        "|---|---|---|---|---|---|---|",
    ]
    for tid, r in report["tasks"].items():
        lines.append(
            f"| {tid} | {r['family']} | {r['split']} | {r['successes']}/{r['episodes']} ({r['success_rate']:.2f}) "
            f"| {r['mean_steps']:.1f} | {r['max_steps']} | {r['max_episode_steps']} |"
        )
    lines += ["", f"Lowest rate: {report['min_success_rate']:.2f}. Measured in {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="all", help="'all', a split name, a task id, or a comma list")
    p.add_argument("--n", type=int, default=50, help="episodes (seeds) per task")
    p.add_argument("--seed-range", default="eval", help="train | val | eval (see vla_prefix.seeds)")
    p.add_argument("--out", default="results/tabletop", help="folder for expert_success.json/.md")
    args = p.parse_args(argv)

    infos = list_tasks("tabletop") if args.tasks == "all" else resolve_tasks("tabletop", args.tasks)
    seeds = seed_range(args.seed_range, args.n)
    start = time.time()
    tasks = {}
    for info in infos:
        r = run_expert(info.id, seeds)
        tasks[info.id] = {"family": info.family, "split": info.split, "max_episode_steps": info.max_episode_steps, **r}
        print(f"{info.id:42s} {r['successes']:3d}/{r['episodes']} mean {r['mean_steps']:5.1f} max {r['max_steps']:3d} steps",
              flush=True)
    report = {
        "suite": "tabletop",
        "episodes_per_task": args.n,
        "seed_range": args.seed_range,
        "first_seed": seeds[0],
        "min_success_rate": min(t["success_rate"] for t in tasks.values()),
        "seconds": time.time() - start,
        "tasks": tasks,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "expert_success.json", (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(out / "expert_success.md", to_markdown(report).encode())
    return report


if __name__ == "__main__":
    main()
