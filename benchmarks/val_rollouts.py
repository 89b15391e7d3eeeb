"""Checkpoint-selection rollouts in sync vs async vector envs, side by side in one run.

The trainer's `val` rollouts step their `val.num_envs` slots in the training process (sync). Async runs
one spawned process per slot: the same episodes (the rollout module's guarantee, checked here episode
by episode), but each validation pays the processes' start (imports, renderer). This measures whether
that pays off where simulation dominates (Meta-World renders about 54 steps/s per core; tabletop 580).

For each suite's committed base (zero-shot, like a validation early in a run):
  - <suite>_sync_s, <suite>_async_s   median wall seconds of one validation (`--episodes` val episodes,
                                      2 slots, n_action_steps 2), interleaved over `--rounds`
  - <suite>_async_speedup             sync_s / async_s (> 1: async is faster)
  - <suite>_env_steps, <suite>_same_episodes   env steps taken; every episode's seed, success and
                                      length agree in both modes
Writes benchmarks/results/val_rollouts.json and prints it as the last line.

    python benchmarks/val_rollouts.py [--episodes 4] [--rounds 1] [--metaworld-task metaworld-bin-picking-v3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_result  # noqa: E402

from vla_prefix.evaluation.rollout import rollout  # noqa: E402
from vla_prefix.models import VLA  # noqa: E402
from vla_prefix.policy import VLAPolicy  # noqa: E402

TASKS = {"metaworld": "metaworld-bin-picking-v3", "tabletop": "tabletop-pick-place-red-cube-v0"}


def validation(policy: VLAPolicy, task: str, episodes: int, vector: str) -> tuple[float, list]:
    start = time.perf_counter()
    result = rollout(policy, [task], episodes, n_action_steps=2, num_envs=2, image_size=policy.backbone.vision.img_size,
                     seed_range="val", vector=vector)
    wall = time.perf_counter() - start
    return wall, [(e.seed, e.success, e.steps) for e in result.episodes[task]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--metaworld-task", default=TASKS["metaworld"])
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"episodes": args.episodes, "rounds": args.rounds, "num_envs": 2, "threads": torch.get_num_threads()}
    for suite, task in {**TASKS, "metaworld": args.metaworld_task}.items():
        policy = VLAPolicy(VLA.from_pretrained(ROOT / "checkpoints" / f"{suite}_base"))
        walls, episodes = {"sync": [], "async": []}, {}
        for _ in range(args.rounds):
            for vector in walls:
                wall, episodes[vector] = validation(policy, task, args.episodes, vector)
                walls[vector].append(wall)
        sync_s, async_s = statistics.median(walls["sync"]), statistics.median(walls["async"])
        result.update({f"{suite}_task": task, f"{suite}_sync_s": round(sync_s, 2), f"{suite}_async_s": round(async_s, 2),
                       f"{suite}_async_speedup": round(sync_s / async_s, 2),
                       f"{suite}_env_steps": sum(steps for _, _, steps in episodes["sync"]),
                       f"{suite}_same_episodes": episodes["sync"] == episodes["async"]})
    write_result("val_rollouts", result)


if __name__ == "__main__":
    main()
