"""What a deep prefix pair costs at inference, and what it weighs.

Side by side, in one run, on the default backbone at B=1 (one observation -> one action chunk):
  - no prefix (the bare backbone)
  - a deep 10+10 prefix pair with its K/V precomputed once (`PrefixSet.cached`, the deploy path)
  - the same prefix with its reparameterisation MLP left unfolded (recomputed every call)
It also counts the deployed prefix's parameters and bytes, and the FLOPs of one full fine-tuning
training step at B=64 (torch.utils.flop_counter). Writes benchmarks/results/prefix_overhead.json.

    python benchmarks/prefix_overhead.py [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_backbone, interleaved_medians, synthetic_batch, write_result  # noqa: E402

from vla_prefix.prefix.config import PrefixConfig, StreamConfig  # noqa: E402
from vla_prefix.prefix.prefix_set import PrefixSet  # noqa: E402


def train_step_flops(vla, batch_size: int) -> int:
    batch = synthetic_batch(vla, batch_size)
    vla.train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = vla(batch)
        loss.backward()
    vla.zero_grad(set_to_none=True)
    vla.eval()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vla = default_backbone()
    batch = synthetic_batch(vla, 1)
    deep = PrefixConfig(StreamConfig(length=10, depth="deep"), StreamConfig(length=10, depth="deep"))
    reparam = PrefixConfig(StreamConfig(length=10, depth="deep", reparam=True),
                           StreamConfig(length=10, depth="deep", reparam=True))
    cached = PrefixSet(deep, vla, init_text="put the yellow ball in the bowl").cached()
    unfolded = PrefixSet(reparam, vla, init_text="put the yellow ball in the bowl")
    with torch.no_grad():
        fns = {
            "none": lambda: vla.predict_actions(batch),
            "cached": lambda: vla.predict_actions(batch, cached),
            "unfolded": lambda: vla.predict_actions(batch, unfolded()),
        }
        t = interleaved_medians(fns, args.rounds, args.reps)

    prefix = PrefixSet(deep, vla)
    backbone_params = vla.num_parameters()
    result = {
        "backbone": "conf/model/default.yaml",
        "backbone_params": backbone_params,
        "threads": args.threads,
        "latency_ms_none": round(t["none"] * 1e3, 3),
        "latency_ms_cached": round(t["cached"] * 1e3, 3),
        "latency_ms_unfolded": round(t["unfolded"] * 1e3, 3),
        "latency_ratio_cached": round(t["cached"] / t["none"], 4),
        "latency_ratio_unfolded": round(t["unfolded"] / t["none"], 4),
        "prefix": "deep, visual 10 + language 10, trunk",
        "trainable_params": prefix.deployed_params(),
        "trainable_pct": round(100.0 * prefix.deployed_params() / backbone_params, 4),
        "training_params_with_reparam": unfolded.training_params(),
        "prefix_bytes": prefix.deployed_bytes(),
        "flops_per_train_step": train_step_flops(vla, 64),
        "flops_batch_size": 64,
    }
    write_result("prefix_overhead", result)


if __name__ == "__main__":
    main()
