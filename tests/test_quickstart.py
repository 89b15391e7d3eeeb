"""The quickstart (`make demo`) end to end on a tiny base, and its errors for bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import HELDOUT_TASK, PRETRAIN_TASKS
from vla_prefix.errors import ConfigError
from vla_prefix.quickstart import QuickstartConfig, format_report, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_quickstart(base, tmp_path: Path, **overrides) -> QuickstartConfig:
    return replace(QuickstartConfig(), **{
        "task": HELDOUT_TASK, "base": str(base), "data": str(tmp_path / "demos"), "out": str(tmp_path / "out"),
        "n_demos": 2, "steps": 3, "batch_size": 8, "n_episodes": 2, "num_envs": 1, "video_episodes": 1,
        **overrides})


def test_quickstart_collects_tunes_evaluates_and_reports(tiny_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run(tiny_quickstart(tiny_base, tmp_path))

    assert report["task"] == HELDOUT_TASK and report["n_demos"] == 2 and report["steps"] == 3
    assert set(report["results"]) == {"zero-shot base", "prefix-tuned"}
    for res in report["results"].values():
        assert res["n_episodes"] == 2 and 0.0 <= res["success_rate"] <= 1.0
        lo, hi = res["ci95"]
        assert 0.0 <= lo <= res["success_rate"] <= hi <= 1.0
        assert Path(res["eval_info"]).is_file()
    assert Path(report["prefix_file"]).is_file() and report["prefix_bytes"] > 0
    assert 0 < report["trainable_pct"] < 100

    run_dir = Path(report["prefix_file"]).parents[2]
    assert json.loads((run_dir / "quickstart.json").read_text()) == report
    text = format_report(report, run_dir)
    assert "zero-shot base" in text and "prefix-tuned" in text and "trainable:" in text
    # paths under the working directory are printed relative to it, and name real files
    shown = {line.split(":", 1)[0]: line.split(":", 1)[1].split("   (")[0].strip()
             for line in text.splitlines() if line.startswith(("prefix:", "json:", "videos:", "summary:"))}
    assert set(shown) == {"prefix", "json", "videos", "summary"}
    for key, path in shown.items():
        assert not Path(path).is_absolute(), key
        assert all((tmp_path / p.strip()).is_file() for p in path.split(",")), key


def test_quickstart_refuses_a_pretraining_task(tiny_base, tmp_path):
    with pytest.raises(ConfigError, match="held-out task"):
        run(tiny_quickstart(tiny_base, tmp_path, task=PRETRAIN_TASKS[0]))


def test_quickstart_names_the_pretrain_command_when_the_base_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="mode=pretrain"):
        run(tiny_quickstart(tmp_path / "no_base", tmp_path))
