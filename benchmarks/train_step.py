"""Seconds per training step, per mode, on the default backbone and batch (B=64), side by side.

Modes measured in one run, interleaved: `full` (everything trains), `prefix` (the default config,
conf/prefix/deep.yaml: a deep 10+10 prefix pair through its reparameterisation MLP, visual prefix at
the trunk, frozen-encoder features cached), `lora` (PEFT on the trunk), and `prefix` with the visual
prefix inside the ViT (`prefix_encoder_site`, conf/prefix/encoder.yaml, no caching).
FLOPs are counted with torch.utils.flop_counter; the fp32 GEMM peak is measured in the same run with
the same thread count, so `mfu_pct` = achieved / peak for full fine-tuning.

    python benchmarks/train_step.py [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_backbone, interleaved_medians, synthetic_batch, write_result  # noqa: E402

from vla_prefix.training.config import LoraSettings, compose_train_config  # noqa: E402
from vla_prefix.training.modes import make_learner  # noqa: E402

TASK = "tabletop-pick-place-yellow-ball-v0"


def gemm_peak_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e9


def step_fn(learner, batch):
    optimizer = torch.optim.AdamW(learner.trainable_parameters(), lr=1e-4)

    def step():
        loss, _ = learner(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = default_backbone()
    batch = synthetic_batch(base, args.batch)
    batch["task_index"] = torch.zeros(args.batch, dtype=torch.long)
    with torch.no_grad():
        cached = dict(batch, visual_features=base.encode_images(batch["image"]))
    deep = compose_train_config(["data.path=unused"]).prefix  # conf/prefix/deep.yaml, as `mode=prefix` trains
    encoder = compose_train_config(["data.path=unused", "prefix=encoder"]).prefix
    instr = {TASK: "put the yellow ball in the bowl"}

    def learner(mode, prefix=deep):
        return make_learner(mode, copy.deepcopy(base), [TASK], instr, prefix, LoraSettings(), seed=0).train()

    steps = {
        "full": step_fn(learner("full"), batch),
        "prefix": step_fn(learner("prefix"), cached),
        "lora": step_fn(learner("lora"), cached),
        "prefix_encoder_site": step_fn(learner("prefix", encoder), batch),
    }
    flops = {k: count_flops(fn) for k, fn in steps.items()}
    t = interleaved_medians(steps, rounds=args.rounds, reps=1, warmup=2)
    peak = gemm_peak_gflops()
    achieved = flops["full"] / t["full"] / 1e9
    result = {
        "threads": args.threads,
        "batch_size": args.batch,
        "full_step_s": round(t["full"], 4),
        "prefix_step_s": round(t["prefix"], 4),
        "lora_step_s": round(t["lora"], 4),
        "prefix_encoder_site_step_s": round(t["prefix_encoder_site"], 4),
        "prefix_over_full": round(t["prefix"] / t["full"], 4),
        "lora_over_full": round(t["lora"] / t["full"], 4),
        "prefix_encoder_site_over_full": round(t["prefix_encoder_site"] / t["full"], 4),
        "flops_per_step": flops,
        "achieved_gflops": round(achieved, 2),
        "gemm_peak_gflops": round(peak, 2),
        "mfu_pct": round(100 * achieved / peak, 2),
    }
    write_result("train_step", result)


if __name__ == "__main__":
    main()
