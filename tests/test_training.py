"""The trainer: every mode, resume bit-exactness after kill -9, NaN guard, W&B offline, Hydra typos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file, save_file

from conftest import HELDOUT_TASK, PRETRAIN_TASKS, train_config
from vla_prefix.errors import ConfigError
from vla_prefix.models import VLA
from vla_prefix.prefix.io import load_prefix
from vla_prefix.training.loggers import MetricsFile
from vla_prefix.training.trainer import TrainingError, train

ROOT = Path(__file__).resolve().parents[1]


def adapt(mode, base, demos, **kw):
    args = {"mode": mode, "base": str(base), "task": HELDOUT_TASK, "data.path": str(demos),
            "optim.steps": 12, "optim.batch_size": 8, "checkpoint_every": 6}
    args.update(kw)
    return train_config(**args)


SUMMARY_KEYS = {"mode", "trainable_params", "total_params", "trainable_pct", "steps", "final_loss", "wall_s"}


@pytest.mark.parametrize("mode", ["prefix", "prompt", "lora", "full", "head", "scratch"])
def test_every_mode_trains_and_writes_its_outputs(mode, tiny_base, tabletop_demos, tmp_path):
    summary = train(adapt(mode, tiny_base, tabletop_demos), tmp_path)
    assert SUMMARY_KEYS <= set(summary) and summary["mode"] == mode
    assert json.loads((tmp_path / "train_summary.json").read_text())["final_loss"] == summary["final_loss"]
    base = VLA.from_pretrained(tiny_base)
    if mode in ("prefix", "prompt"):
        prefix, meta = load_prefix(summary["outputs"]["prefixes"][HELDOUT_TASK], base)
        assert "prefix_bytes" in summary and meta["steps"] == 12
        if mode == "prompt":
            assert set(prefix.kinds.values()) == {"tokens"}
    else:
        model = VLA.from_pretrained(summary["outputs"]["model"])
        assert model.fingerprint() != base.fingerprint()
        changed = {n for n, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[n])}
        if mode == "head":
            assert changed and all(n.startswith("head.") for n in changed)
        if mode == "lora":  # merged adapters change only the trunk's attention projections
            assert changed and all(n.startswith("trunk.") for n in changed)
            assert (tmp_path / "lora_adapter" / "adapter_config.json").exists()
    assert 0 < summary["trainable_pct"] <= 100


@pytest.mark.parametrize("freeze", [["vision"], ["trunk", "projector", "head", "proprio_proj", "camera_embed",
                                                      "readout_embed"]])
def test_full_mode_keeps_the_frozen_parts_unchanged(freeze, tiny_base, tabletop_demos, tmp_path):
    summary = train(adapt("full", tiny_base, tabletop_demos, freeze=f"[{','.join(freeze)}]"), tmp_path)
    model, base = VLA.from_pretrained(summary["outputs"]["model"]), VLA.from_pretrained(tiny_base)
    changed = {n.split(".")[0] for n, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[n])}
    assert changed and not changed & set(freeze)
    assert summary["trainable_params"] < summary["total_params"]


@pytest.mark.parametrize("mode,freeze,fix", [("prefix", "[vision]", "remove freeze"),
                                             ("full", "[encoder]", "choose among")])
def test_bad_freeze_fails_with_the_fix(mode, freeze, fix, tiny_base, tabletop_demos, tmp_path):
    with pytest.raises(ConfigError, match=fix):
        train(adapt(mode, tiny_base, tabletop_demos, freeze=freeze), tmp_path)


def test_bad_val_ties_fails_with_the_fix(tiny_base, tabletop_demos, tmp_path):
    with pytest.raises(ConfigError, match="val.ties must be first or last"):
        train(adapt("prefix", tiny_base, tabletop_demos, **{"val.ties": "best"}), tmp_path)


def test_prefix_training_leaves_the_base_untouched(tiny_base, tabletop_demos, tmp_path):
    before = VLA.from_pretrained(tiny_base).fingerprint()
    train(adapt("prefix", tiny_base, tabletop_demos), tmp_path)
    assert VLA.from_pretrained(tiny_base).refresh_fingerprint() == before


def test_multi_task_prefix_mode_writes_one_file_per_task(tiny_base, tabletop_demos, tmp_path):
    tasks = ["tabletop-push-blue-cube-v0", "tabletop-reach-red-cube-v0"]
    summary = train(adapt("prefix", tiny_base, tabletop_demos, task="[" + ",".join(tasks) + "]"), tmp_path)
    assert sorted(summary["outputs"]["prefixes"]) == sorted(tasks)
    files = [Path(p).read_bytes() for p in summary["outputs"]["prefixes"].values()]
    assert files[0] != files[1]


def test_pretraining_refuses_held_out_tasks(tabletop_demos, tmp_path):
    with pytest.raises(ConfigError, match="held-out"):
        train(train_config(mode="pretrain", task=HELDOUT_TASK, **{"data.path": str(tabletop_demos)}), tmp_path)


def test_nan_guard_names_the_step_and_keeps_the_last_good_checkpoint(tiny_base, tabletop_demos, tmp_path):
    cfg = adapt("prefix", tiny_base, tabletop_demos, checkpoint_every=3, debug_nan_at_step=5)
    with pytest.raises(TrainingError, match="at step 5"):
        train(cfg, tmp_path)
    state = json.loads((tmp_path / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 3


def test_an_existing_run_is_never_overwritten(tiny_base, tabletop_demos, tmp_path):
    train(adapt("head", tiny_base, tabletop_demos), tmp_path)
    with pytest.raises(ConfigError, match="resume=true"):
        train(adapt("head", tiny_base, tabletop_demos), tmp_path)


def test_a_typo_in_an_override_fails_clearly():
    with pytest.raises(ConfigCompositionException) as err:
        train_config(**{"optim.lrr": 1})
    assert "lrr" in str(err.value.__cause__ or err.value)


def test_wandb_offline_run_holds_the_logged_metrics(tiny_base, tabletop_demos, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(adapt("head", tiny_base, tabletop_demos, logger="wandb"), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))  # the offline run's record log
    steps = len(MetricsFile(tmp_path / "metrics.jsonl").read())
    assert records.count(b"samples_per_s") >= steps  # one history row per step
    final = json.loads((tmp_path / "train_summary.json").read_text())["final_loss"]
    assert b"final_loss" in records and repr(final).encode() in records


def test_resume_after_kill_reproduces_the_loss_curve_bit_exactly(tiny_base, tabletop_demos, tmp_path):
    """kill -9 between two checkpoints, with DataLoader workers, then resume=true."""
    common = {"mode": "prefix", "base": str(tiny_base), "task": HELDOUT_TASK, "data.path": str(tabletop_demos),
              "optim.steps": 60, "optim.batch_size": 8, "checkpoint_every": 20, "data.num_workers": 2}
    reference = tmp_path / "reference"
    train(train_config(**common), reference)

    killed = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in {**common, "model": "tiny", "threads": 1, "progress": "false",
                                     "out_dir": str(killed)}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "vla_prefix.train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    metrics = MetricsFile(killed / "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        rows = [r for r in _safe_rows(metrics) if r["step"] >= 24]
        if rows:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt_step = json.loads((killed / "checkpoints" / "last" / "state.json").read_text())["step"]
    last_logged = max(r["step"] for r in _safe_rows(metrics))
    assert ckpt_step == 20 and last_logged >= 24  # the kill landed between two checkpoints

    train(train_config(**common, resume="true"), killed)
    ref = [(r["step"], r["loss"]) for r in MetricsFile(reference / "metrics.jsonl").read()]
    got = [(r["step"], r["loss"]) for r in MetricsFile(killed / "metrics.jsonl").read()]
    assert got == ref and len(ref) == 60
    base = VLA.from_pretrained(tiny_base)
    (a, meta_a), (b, meta_b) = (load_prefix(run / "prefixes" / f"{HELDOUT_TASK}.safetensors", base)
                                for run in (reference, killed))
    assert meta_a["sha256"] == meta_b["sha256"]  # the same tensors, bit for bit
    assert all(torch.equal(a.values()[k], b.values()[k]) for k in a.values())
    summary = json.loads((killed / "train_summary.json").read_text())
    history = summary["history"]  # provenance across the resume
    assert [(h["from_step"], h["steps"]) for h in history] == [(0, 60), (20, 60)]
    assert history[0]["command"].startswith("python -m vla_prefix.train ") and f"out_dir={killed}" in history[0]["command"]
    # wall-clock time sums both parts: the killed one up to its last checkpoint, and the resume
    assert history[0]["wall_s"] > 0 and summary["wall_s"] >= history[0]["wall_s"] + history[1]["wall_s"]
    assert not summary["wall_s_partial"]
    state_file = killed / "checkpoints" / "last" / "state.json"  # a checkpoint from before parts were timed
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "history": [{k: v for k, v in h.items() if k != "wall_s"}
                                                           for h in state["history"]]}))
    assert train(train_config(**common, resume="true"), killed)["wall_s_partial"]



def test_export_writes_a_runs_outputs_from_its_last_checkpoint(tiny_base, tabletop_demos, tmp_path):
    """A finished run exports, from checkpoints/last, what it wrote itself: the pretraining run its base (with
    the normalisation statistics, recomputed from its data), a prefix run its folded prefix, bit for bit."""
    from vla_prefix.export import export_checkpoint

    out = export_checkpoint(tiny_base.parent, tmp_path / "base_export")
    exported, base = VLA.from_pretrained(out["base"]), VLA.from_pretrained(tiny_base)
    assert exported.fingerprint() == base.fingerprint()
    assert json.loads((Path(out["base"]) / "training.json").read_text())["checkpoint_step"] == 40
    run = tmp_path / "prefix_run"
    train(adapt("prefix", tiny_base, tabletop_demos, **{"prefix.visual.reparam": "true"}), run)
    out = export_checkpoint(run, tmp_path / "prefix_export")
    (a, meta_a), (b, meta_b) = (load_prefix(path, base) for path in
                                (run / "prefixes" / f"{HELDOUT_TASK}.safetensors", out["prefixes"][HELDOUT_TASK]))
    assert meta_a["sha256"] == meta_b["sha256"] and meta_b["steps"] == 12


def test_batchnorm_statistics_survive_a_resume_and_an_export(tabletop_demos, tmp_path, capsys):
    """A CNN encoder's BatchNorm running statistics train too: a run stopped (by a NaN) and resumed, and the
    export of its last checkpoint, give the uninterrupted run's base bit for bit."""
    from vla_prefix.export import export_checkpoint

    common = {"mode": "pretrain", "task": "[" + ",".join(PRETRAIN_TASKS) + "]", "data.path": str(tabletop_demos),
              "optim.steps": 8, "optim.batch_size": 8, "checkpoint_every": 4,
              "model.vision.name": "test_resnet", "model.vision.model_kwargs": "null"}
    train(train_config(**common), tmp_path / "straight")
    with pytest.raises(TrainingError):
        train(train_config(**common, debug_nan_at_step=6), tmp_path / "stopped")
    train(train_config(**common, resume="true"), tmp_path / "stopped")
    exported = export_checkpoint(tmp_path / "stopped", tmp_path / "export")["base"]
    straight = VLA.from_pretrained(tmp_path / "straight" / "base")
    initial = VLA.from_recipe(tmp_path / "straight" / "base").state_dict()
    trained_stats = [n for n, v in straight.state_dict().items() if "running_var" in n and not torch.equal(v, initial[n])]
    assert trained_stats
    for other in (tmp_path / "stopped" / "base", exported):
        assert VLA.from_pretrained(other).fingerprint() == straight.fingerprint()
    checkpoint = tmp_path / "stopped" / "checkpoints" / "last" / "trainable.safetensors"  # as written before the
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # statistics were kept: parameters only
    save_file({n: v for n, v in load_file(checkpoint).items() if not n.endswith(statistics)}, checkpoint)
    with pytest.raises(ConfigError, match="lacks BatchNorm statistics"):
        export_checkpoint(tmp_path / "stopped", tmp_path / "export_without_statistics")
    with pytest.raises(ConfigError, match="use them as they are"):  # a finished run keeps its own outputs
        train(train_config(**common, resume="true"), tmp_path / "stopped")
    train(train_config(**{**common, "optim.steps": 12}, resume="true"), tmp_path / "stopped")  # re-accumulates
    assert "lacks BatchNorm statistics" in capsys.readouterr().out


def test_export_refuses_what_it_cannot_export_in_one_line(tiny_base, tmp_path, capsys):
    import shutil

    from vla_prefix.export import export_checkpoint, main

    with pytest.raises(ConfigError, match="holds no checkpoint"):
        export_checkpoint(tmp_path / "no_run", tmp_path / "out")
    with pytest.raises(ConfigError, match="no val-selected checkpoint.*checkpoint=last"):
        export_checkpoint(tiny_base.parent, tmp_path / "out", checkpoint="best")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_base.parent), str(tmp_path / "used")])
    assert exit_info.value.code == 2 and "is not empty" in capsys.readouterr().err
    old = tmp_path / "old_run"  # a checkpoint written before checkpoints stored their config
    shutil.copytree(tiny_base.parent / "checkpoints", old / "checkpoints")
    state_file = old / "checkpoints" / "last" / "state.json"
    state_file.write_text(json.dumps({k: v for k, v in json.loads(state_file.read_text()).items() if k != "config"}))
    with pytest.raises(ConfigError, match="resume=true"):
        export_checkpoint(old, tmp_path / "out")

def _safe_rows(metrics):
    rows = []
    if metrics.path.exists():
        for line in metrics.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


@pytest.mark.parametrize("ties", ["first", "last"])
def test_validation_selects_the_checkpoint_on_val_seeds(tiny_base, tabletop_demos, tmp_path, ties):
    cfg = adapt("prefix", tiny_base, tabletop_demos,
                **{"val.every": 6, "val.n_episodes": 2, "val.num_envs": 1, "val.ties": ties})
    summary = train(cfg, tmp_path)
    rows = MetricsFile(tmp_path / "val.jsonl").read()
    assert [r["step"] for r in rows] == [6, 12]
    # of equal scores, the first or the last checkpoint wins
    best = max(rows, key=lambda r: (r["val_success"], r["step"] if ties == "last" else -r["step"]))
    assert summary["val_best"] == {"score": best["val_success"], "step": best["step"]}
    assert (tmp_path / "checkpoints" / "best.safetensors").exists()
    assert list((tmp_path / "val_videos" / "step6").rglob("*.mp4"))  # rollout videos of each validation
    from vla_prefix.export import export_checkpoint

    out = export_checkpoint(tmp_path, tmp_path / "export", checkpoint="best")  # what the run wrote, its best
    base = VLA.from_pretrained(tiny_base)
    (_, meta_run), (_, meta_export) = (load_prefix(path, base) for path in
                                       (summary["outputs"]["prefixes"][HELDOUT_TASK], out["prefixes"][HELDOUT_TASK]))
    assert meta_export["sha256"] == meta_run["sha256"] and meta_export["steps"] == best["step"]


def test_lora_leaves_the_frozen_vision_encoder_in_eval_mode(tiny_base):
    from vla_prefix.training.config import LoraSettings
    from vla_prefix.training.modes import make_learner

    learner = make_learner("lora", VLA.from_pretrained(tiny_base), [HELDOUT_TASK], {HELDOUT_TASK: "x"},
                           None, LoraSettings(), seed=0).train()
    assert learner.backbone.trunk.training and not learner.backbone.vision.training


def test_progress_bar_writes_a_line_per_interval_when_stderr_is_a_log_file(capsys):
    from vla_prefix.utils.progress import progress_bar

    bar = progress_bar(10**9, "train[prefix]", unit="step")
    end = time.perf_counter() + 0.6  # a live bar would redraw ~6 times in this
    while time.perf_counter() < end:  # each step sets its loss, as the trainer does
        bar.set_postfix(loss="0.1234", refresh=False)
        bar.update(1)
    bar.close()
    log = capsys.readouterr().err
    assert log.count("\r") == 2, "redraws between opening and closing would fill a nohup log"
    assert "loss=0.1234" in log

    quiet = progress_bar(10, "eval", enabled=False)
    quiet.set_postfix(failed=1, refresh=False)
    quiet.update(10)
    quiet.close()
    assert capsys.readouterr().err == ""
