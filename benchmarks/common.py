"""Shared by the benchmark scripts: the default backbone, a synthetic batch, timing helpers."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def default_backbone(name: str = "default"):
    """The `conf/model/<name>.yaml` backbone, its tokenizer trained on the tabletop instructions."""
    from vla_prefix.models import build_backbone
    from vla_prefix.sim.registry import list_tasks

    corpus = [s for t in list_tasks("tabletop") for s in (t.instruction, *t.paraphrases)]
    torch.manual_seed(0)
    return build_backbone(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), corpus=corpus).eval()


def synthetic_batch(vla, b: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    size, cfg = vla.vision.img_size, vla.config
    return {
        "image": torch.randint(0, 256, (b, cfg.n_cameras, size, size, 3), generator=g, dtype=torch.uint8),
        "proprio": torch.randn(b, cfg.proprio_dim, generator=g),
        "actions": torch.rand(b, cfg.chunk, cfg.action_dim, generator=g) * 2 - 1,
        "action_valid": torch.ones(b, cfg.chunk, dtype=torch.bool),
        **vla.tokenize(["put the yellow ball in the bowl"] * b),
    }


def interleaved_medians(fns: dict, rounds: int, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each fn, measured in interleaved rounds (fair on a noisy machine)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def write_result(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
