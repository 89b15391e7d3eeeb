"""Adaptation on a real held-out task with the real (small) committed base VLA."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import train_config
from vla_prefix.quickstart import QuickstartConfig
from vla_prefix.training.loggers import MetricsFile
from vla_prefix.training.trainer import train

BASE = Path(__file__).resolve().parents[1] / "checkpoints" / "tabletop_base"
TASK = QuickstartConfig.task  # the quickstart's held-out task


@pytest.fixture(scope="module")
def heldout_demos(tmp_path_factory):
    from vla_prefix.collect import collect

    out = tmp_path_factory.mktemp("heldout") / "demos"
    collect({"suite": "tabletop", "task": TASK, "n_demos": 3, "out": str(out), "workers": 1, "progress": False})
    return out


def fit(mode: str, demos, run: Path) -> float:
    """Train `mode` on a handful of demos; -> first-step loss / mean of the last 10 steps."""
    cfg = train_config(mode=mode, base=str(BASE), task=TASK, model="default", **{
        "data.path": str(demos), "optim.steps": 200, "optim.batch_size": 32, "optim.warmup_steps": 10,
        "checkpoint_every": 200, "threads": 2})
    train(cfg, run)
    losses = [r["loss"] for r in MetricsFile(run / "metrics.jsonl").read()]
    return losses[0] / (sum(losses[-10:]) / 10)


@pytest.mark.xfail(strict=False, reason=(
    "known gap (issue 4): on 3 held-out demos and 200 steps (75k-step language_first base) the prefix loss fell "
    "4.3x, the head's 4.7x and full fine-tuning's 9.0x, not the required 10x (prefix: 5.3x after 500 steps, 4.9x "
    "with 32-token prefixes); an XPASS means a better base or prefix fixed it: drop this mark"))
def test_prefix_overfits_a_handful_of_heldout_demos_with_head_as_reference(heldout_demos, tmp_path):
    prefix_ratio = fit("prefix", heldout_demos, tmp_path / "prefix")
    head_ratio = fit("head", heldout_demos, tmp_path / "head")
    print(f"loss fell {prefix_ratio:.1f}x with the prefix, {head_ratio:.1f}x with the head alone")
    assert prefix_ratio > 10, f"prefix loss fell only {prefix_ratio:.1f}x (head: {head_ratio:.1f}x)"
