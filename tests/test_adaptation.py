"""Adaptation on a real held-out task with the real (small) committed base VLA."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import train_config
from vla_prefix.training.loggers import MetricsFile
from vla_prefix.training.trainer import train

BASE = Path(__file__).resolve().parents[1] / "checkpoints" / "tabletop_base"
# a held-out task of a family the base never saw (stacking): its zero-shot BC loss starts high (L1 ~0.63). On the
# quickstart's task the base already starts at ~0.14, so even full fine-tuning falls only ~9x (README: "The overfit test")
TASK = "tabletop-stack-red-on-blue-v0"


@pytest.fixture(scope="module")
def heldout_demos(tmp_path_factory):
    from vla_prefix.collect import collect

    out = tmp_path_factory.mktemp("heldout") / "demos"
    collect({"suite": "tabletop", "task": TASK, "n_demos": 3, "out": str(out), "workers": 1, "progress": False})
    return out


def fit(mode: str, demos, run: Path) -> float:
    """Train `mode` for 1,000 steps on 3 demos (about 100 frames); -> first-step loss / mean of the last 10 steps."""
    cfg = train_config(mode=mode, base=str(BASE), task=TASK, model="default", **{
        "data.path": str(demos), "optim.steps": 1000, "optim.batch_size": 32, "optim.warmup_steps": 10,
        "checkpoint_every": 1000})
    train(cfg, run)
    losses = [r["loss"] for r in MetricsFile(run / "metrics.jsonl").read()]
    return losses[0] / (sum(losses[-10:]) / 10)


def test_prefix_overfits_a_handful_of_heldout_demos(heldout_demos, tmp_path):
    # the head-only reference fit was dropped from CI: it asserted nothing and doubled the suite's longest test
    prefix_ratio = fit("prefix", heldout_demos, tmp_path / "prefix")
    assert prefix_ratio > 10, f"prefix loss fell only {prefix_ratio:.1f}x"
