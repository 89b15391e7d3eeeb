"""The held-out experiment command on a tiny setting: records, summary, figures, resume, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import HELDOUT_TASK, PRETRAIN_TASKS
from vla_prefix.errors import ConfigError, VLAPrefixError
from vla_prefix.experiments import heldout, merge, report
from vla_prefix.experiments.records import Ledger, record_key, summarize
from vla_prefix.prefix.io import read_prefix_metadata
from vla_prefix.seeds import SEED_RANGES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(base, demos, tmp_path, **changes) -> dict:
    """1 held-out task, prefix (a grid of 2 lrs) + head + zero-shot, 1 seed, 3 steps, 2 val and 2 eval episodes."""
    return {"suite": "tabletop", "task": [HELDOUT_TASK], "methods": ["prefix", "head", "zero-shot"], "seeds": [0],
            "n_demos": [2], "base": str(base), "data": str(demos), "collect_demos": False, "steps": 3,
            "batch_size": 8, "lr_grid": {"prefix": [1e-3, 1e-2], "head": [1e-3]}, "val_episodes": 2,
            "n_episodes": 2, "max_episode_steps": 20, "forgetting_task": [PRETRAIN_TASKS[0]],
            "forgetting_episodes": 1, "threads": 1, "num_workers": 0, "num_envs": 1,
            "results": str(tmp_path / "results" / "heldout.json"), "out": str(tmp_path / "work"), **changes}


def _forbid(monkeypatch, *names):
    """Make training and/or evaluating fail loudly: a resumed run must not redo finished cells."""
    import vla_prefix.evaluate
    import vla_prefix.training.trainer

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    for name in names:
        module = vla_prefix.training.trainer if name == "train" else vla_prefix.evaluate
        monkeypatch.setattr(module, name, refuse)


def _seeds(eval_info: str) -> list[int]:
    info = json.loads(Path(eval_info).read_text())
    return [e["seed"] for task in info["tasks"].values() for e in task["episodes"]]


@pytest.mark.xdist_group("sweep")  # the tests that need tiny_base share one worker: the fixture is built once
def test_heldout_experiment_records_resumes_and_reports(tiny_base, tabletop_demos, tmp_path, monkeypatch, capsys):
    settings = tiny(tiny_base, tabletop_demos, tmp_path)
    results = heldout.run(settings)
    path = Path(settings["results"])
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["protocol"]["steps"] == 3 and on_disk["config"]["tasks"] == [HELDOUT_TASK]

    # ---- every cell has its record
    records = {(r["stage"], r["method"], r["lr"]): r for r in on_disk["records"]}
    chosen = on_disk["summary"]["n_demos"]["2"]["prefix"]["lr"][HELDOUT_TASK]["0"]
    assert chosen in (1e-3, 1e-2)
    assert len(records) == len(on_disk["records"]) == 9
    assert set(records) == {("train", "prefix", 1e-3), ("train", "prefix", 1e-2), ("eval", "prefix", chosen),
                            ("forgetting", "prefix", chosen), ("train", "head", 1e-3), ("eval", "head", 1e-3),
                            ("forgetting", "head", 1e-3), ("eval", "zero-shot", None), ("forgetting", "base", None)}
    for lr in (1e-3, 1e-2):  # the grid's lrs were scored on the val seeds; a one-lr grid needs no val
        val = records[("train", "prefix", lr)]["val"]
        assert val["n_episodes"] == 2 and 0 <= val["ci95"][0] <= val["success_rate"] <= val["ci95"][1] <= 1
        assert all(s in SEED_RANGES["val"] for s in _seeds(Path(records[("train", "prefix", lr)]["run_dir"])
                                                           / "val" / "eval_info.json"))
    assert records[("train", "head", 1e-3)]["val"] is None
    assert records[("train", "head", 1e-3)]["val_best"] is None  # no trainer checkpoint selection here
    evals = [r for r in on_disk["records"] if r["stage"] == "eval"]
    for r in evals:  # the same eval seeds for every method
        assert r["n_episodes"] == 2 and 0 <= r["ci95"][0] <= r["success_rate"] <= r["ci95"][1] <= 1
        assert _seeds(r["eval_info"]) == [SEED_RANGES["eval"][0], SEED_RANGES["eval"][1]]
        # every failed episode is counted once, under what the gripper went for (the tabletop env reports it)
        assert sum(r["failures"].values()) == r["n_episodes"] - r["n_successes"]
        assert set(r["failures"]) <= {"target", "distractor", "none"}

    # ---- what each method stores and trains
    prefix_train = [r for r in on_disk["records"] if r["stage"] == "train" and r["method"] == "prefix"]
    head = records[("train", "head", 1e-3)]
    for r in prefix_train:
        assert r["stored_bytes"] == Path(r["artifact"]).stat().st_size > 0
        assert read_prefix_metadata(r["artifact"])["backbone_fingerprint"] == on_disk["protocol"]["base_fingerprint"]
        assert 0 < r["trainable_params"] and 0 < r["trainable_pct"] < 100 and r["train_wall_s"] > 0
    assert head["stored_bytes"] > (Path(head["artifact"]) / "model.safetensors").stat().st_size > 0
    assert 0 < head["trainable_params"] < head["total_params"]

    # ---- forgetting: the prefix's backbone is the base (checked by fingerprint); head changed it
    base = records[("forgetting", "base", None)]
    assert base["measured"] and base["identical_to_base"] and list(base["tasks"]) == [PRETRAIN_TASKS[0]]
    prefix_forget = records[("forgetting", "prefix", chosen)]
    assert not prefix_forget["measured"] and prefix_forget["identical_to_base"]
    assert prefix_forget["tasks"] == base["tasks"]
    head_forget = records[("forgetting", "head", 1e-3)]
    assert head_forget["measured"] and not head_forget["identical_to_base"] and head_forget["n_episodes"] == 1

    # ---- the summary
    summary = on_disk["summary"]["n_demos"]["2"]
    vals = summary["prefix"]["val"][HELDOUT_TASK]["0"]
    assert vals[repr(chosen)] == max(vals.values())
    for method in ("prefix", "head", "zero-shot"):
        m = summary[method]
        assert m["complete"] and m["mean"]["n_episodes"] == 2
        assert 0 <= m["mean"]["ci95"][0] <= m["mean"]["success_rate"] <= m["mean"]["ci95"][1] <= 1
        assert m["tasks"][HELDOUT_TASK]["success_rate"] == m["mean"]["success_rate"]
    assert summary["prefix"]["stored_bytes"] > 0 and summary["zero-shot"]["stored_bytes"] == 0
    assert summary["head"]["failures"] == records[("eval", "head", 1e-3)]["failures"]
    assert summary["prefix"]["tuning_wall_s"] > summary["prefix"]["train_wall_s"] > 0
    assert summary["head"]["forgetting"]["measured"] and summary["prefix"]["forgetting"]["identical_to_base"]
    assert [c["goal"] for c in on_disk["summary"]["goals"]["2"]][0] == "prefix mean success >= target"
    assert (path.parent / "heldout_success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert on_disk["figures"] == ["heldout_success.png"]

    # ---- resume: a rerun runs nothing, and a file made with another protocol is refused
    mtime = (Path(head["run_dir"]) / "train_summary.json").stat().st_mtime_ns
    with monkeypatch.context() as m:
        _forbid(m, "train", "evaluate")
        again = heldout.run(settings)
    assert again["records"] == on_disk["records"] and again["runs"][-1]["cells_run"] == 0
    assert (Path(head["run_dir"]) / "train_summary.json").stat().st_mtime_ns == mtime
    # a run of fewer cells (one method) keeps the file's other cells in its config, summary and report
    with monkeypatch.context() as m:
        _forbid(m, "train", "evaluate")
        narrow = heldout.run({**settings, "methods": ["head"]})
    assert narrow["runs"][-1]["cells_run"] == 0 and narrow["config"] == on_disk["config"]
    assert narrow["summary"] == on_disk["summary"]
    other = "first_seed" if on_disk["config"]["lr_selection"] == "per_seed" else "per_seed"
    with pytest.raises(ConfigError, match=f"lr_selection='{other}'.*use the same lr_selection, or another results"):
        heldout.run({**settings, "lr_selection": other})
    # cells lost after their work finished (a kill before the record was written): trained models are reused
    lost = {("train", "prefix", 1e-2), ("eval", "head", 1e-3), ("forgetting", "head", 1e-3)}
    kept = [r for r in on_disk["records"] if (r["stage"], r["method"], r["lr"]) not in lost]
    path.write_text(json.dumps({**on_disk, "records": kept}))
    with monkeypatch.context() as m:
        _forbid(m, "train")
        redone = heldout.run(settings)
    assert redone["runs"][-1]["cells_run"] == 3
    assert {(r["stage"], r["method"], r["lr"]) for r in redone["records"][-3:]} == lost
    assert redone["summary"]["n_demos"] == on_disk["summary"]["n_demos"]  # deterministic: the same numbers
    # a recorded model that is gone (the results file moved to another machine) is trained again, same seed
    shutil.rmtree(head["run_dir"])
    gone = {("eval", "head", 1e-3), ("forgetting", "head", 1e-3)}
    path.write_text(json.dumps({**on_disk, "records": [r for r in on_disk["records"]
                                                       if (r["stage"], r["method"], r["lr"]) not in gone]}))
    again = heldout.run(settings)
    assert again["runs"][-1]["cells_run"] == 2 and Path(head["artifact"], "model.safetensors").is_file()
    for stage, method, lr in gone:  # the same weights (fingerprint) as the model first trained
        assert Ledger(again["records"]).get(stage, HELDOUT_TASK, method, 0, 2, lr)["backbone_fingerprint"] == \
            records[(stage, method, lr)]["backbone_fingerprint"]
    with pytest.raises(ConfigError, match="another protocol.*steps: 3 there, 4 now"):
        heldout.run({**settings, "steps": 4})
    # ... and so is one whose prefix config file has changed since (here: the MLP turned off on disk)
    assert on_disk["protocol"]["prefix_configs"]["prefix"]["visual"]["reparam"] is True
    edited = json.loads(json.dumps(on_disk))
    edited["protocol"]["prefix_configs"]["prefix"]["visual"]["reparam"] = False
    path.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="prefix_configs.prefix.visual.reparam: False there, True now"):
        heldout.run(settings)
    path.write_text(json.dumps(on_disk))
    # a widened grid (a calibration's one lr, then the protocol's grid) scores the lr trained without val
    widened = {**settings, "methods": ["head"], "lr_grid": {"head": [1e-3, 1e-2]},
               "results": str(tmp_path / "widened" / "heldout.json")}
    Path(widened["results"]).parent.mkdir()
    Path(widened["results"]).write_text(path.read_text())
    grown_results = heldout.run(widened)
    grown = Ledger(grown_results["records"])
    trains = [r for r in grown.records if (r["stage"], r["method"]) == ("train", "head")]
    assert sorted(r["lr"] for r in trains) == [1e-3, 1e-2] and all(r["val"]["n_episodes"] == 2 for r in trains)
    assert grown.get("train", HELDOUT_TASK, "head", 0, 2, 1e-3)["final_loss"] == head["final_loss"]
    chosen_head = grown.chosen_lr(grown_results["config"], HELDOUT_TASK, "head", 0, 2)
    assert chosen_head in (1e-3, 1e-2) and grown.get("eval", HELDOUT_TASK, "head", 0, 2, chosen_head)

    # ---- shards: the experiment split by method into two files merges back into the same summary
    def shard(methods: list[str]) -> dict:
        config = {**on_disk["config"], "methods": methods,
                  "lr_grid": {m: g for m, g in on_disk["config"]["lr_grid"].items() if m in methods}}
        return {**on_disk, "config": config, "records": [r for r in on_disk["records"]
                                                         if r["method"] in methods + ["base"]]}

    target, other = tmp_path / "shard_a.json", tmp_path / "shard_b.json"
    target.write_text(json.dumps(shard(["prefix", "zero-shot"])))
    other.write_text(json.dumps(shard(["head", "zero-shot"])))
    assert json.loads(target.read_text())["summary"] == on_disk["summary"]  # (shards start with the file's)
    merge.main([str(target), str(other)])
    merged = json.loads(target.read_text())
    assert len(merged["records"]) == len(on_disk["records"])
    assert {record_key(r) for r in merged["records"]} == {record_key(r) for r in on_disk["records"]}
    assert merged["config"] == on_disk["config"] and merged["runs"] == on_disk["runs"]
    assert merged["summary"] == on_disk["summary"] and merged["figures"] == ["heldout_success.png"]
    clash = shard(["head"])
    next(r for r in clash["records"] if r["stage"] == "eval")["n_successes"] += 1
    with pytest.raises(ConfigError, match="both hold the cell .*'eval'.*'head'.* with different numbers"):
        merge.merge(merged, clash)
    with pytest.raises(ConfigError, match=r"another protocol \(differs in steps\)"):
        merge.merge(merged, {**shard(["head"]), "protocol": {**on_disk["protocol"], "steps": 4}})
    with pytest.raises(SystemExit) as exit_info:
        merge.main([str(target), str(target)])
    assert exit_info.value.code == 2 and "both the target and a shard" in capsys.readouterr().err

    # ---- the report: a README block between the suite's markers, every number from the JSON
    readme = tmp_path / "README.md"
    readme.write_text("# x\nThe block between `<!-- results:tabletop:start -->` and `<!-- results:tabletop:end -->`\n"
                      "<!-- results:tabletop:start -->\nold text\n<!-- results:tabletop:end -->\nafter\n")
    capsys.readouterr()
    report.main([str(path), "--readme", str(readme)])
    text = readme.read_text()
    assert "old text" not in text and text.startswith("# x\nThe block between `<!-- results:tabletop:start -->` and")
    assert text.endswith("<!-- results:tabletop:end -->\nafter\n")
    block = text.split("\n<!-- results:tabletop:start -->\n")[1].split("\n<!-- results:tabletop:end -->\n")[0]
    rows = {}  # the first table's row per method (the per-task table repeats the names)
    for line in block.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    for method in ("prefix", "head", "zero-shot"):
        mean = redone["summary"]["n_demos"]["2"][method]["mean"]
        assert f"{mean['success_rate']:.2f} [{mean['ci95'][0]:.2f}, {mean['ci95'][1]:.2f}]" in rows[method]
    assert f"{summary['prefix']['trainable_params']:,}" in rows["prefix"]
    assert "(results/heldout_success.png)" in block  # figure links relative to the README
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    report.main([str(path), "--readme", str(plain)])
    assert plain.read_text() == "no markers\n" and "| prefix |" in capsys.readouterr().out
    calibration = tmp_path / "calibration.json"  # any other held-out file has its own markers
    calibration.write_text(path.read_text())
    assert (report.load(path)[1], report.load(calibration)[1]) == ("tabletop", "tabletop:calibration")


@pytest.mark.parametrize("changes,match", [
    ({"methods": ["prefix", "lora2"]}, "unknown method 'lora2'; did you mean lora"),
    ({"lr_grid": {"prefix": []}}, r"lr_grid.prefix=\[\]"),
    ({"lr_grid": {"prefx": [1e-3]}}, "unknown lr_grid method 'prefx'"),
    ({"n_demos": [0]}, "n_demos"),
    ({"lr_selection": "best"}, "per_seed or first_seed"),
    ({"train_overrides": {"optim": {"lr": 1.0}}}, "'optim.lr' is set by the experiment"),
    ({"task": [PRETRAIN_TASKS[0]]}, "not heldout tasks"),
    ({"forgetting_task": [HELDOUT_TASK]}, "not pretrain tasks"),
    ({"task": ["tabletop-push-blu-cube-v0"]}, "did you mean tabletop-push-blue-cube-v0"),
    ({}, "is not a base VLA folder"),
])
def test_bad_settings_are_one_clear_error(tmp_path, changes, match):
    with pytest.raises(VLAPrefixError, match=match):
        heldout.run(tiny(tmp_path / "no-base", tmp_path / "no-data", tmp_path, **changes))


def test_train_overrides_flatten_and_metaworld_defaults():
    cfg = heldout.as_config({"suite": "metaworld", "train_overrides": {"optim": {"warmup_steps": 5}}})
    assert cfg.train_overrides == {"optim.warmup_steps": 5}
    assert (cfg.base, cfg.results, cfg.out) == ("checkpoints/metaworld_base", "results/metaworld/heldout.json",
                                                "outputs/experiments/metaworld")
    assert set(heldout._task_ids("metaworld", cfg.task, "heldout", "task")) == {
        f"metaworld-{n}-v3" for n in ("bin-picking", "box-close", "hand-insert", "door-lock", "door-unlock")}


def test_headline_preset_is_the_committed_results_protocol(monkeypatch):
    """conf/experiments/tabletop_headline.yaml resumes results/tabletop/heldout.json: the same protocol,
    also when a run takes only some methods (a calibration, or two processes splitting the methods)."""
    from hydra import compose, initialize_config_dir

    from vla_prefix.models.vla import VLA
    from vla_prefix.training.config import CONF_DIR

    monkeypatch.chdir(CONF_DIR.parent)
    with initialize_config_dir(str(CONF_DIR / "experiments"), version_base=None):
        cfg = heldout.as_config(compose("tabletop_headline"))
    committed = json.loads(Path(cfg.results).read_text())["protocol"]
    forgetting = heldout._task_ids(cfg.suite, cfg.forgetting_task, "pretrain", "forgetting_task")
    fingerprint = VLA.from_pretrained(cfg.base).fingerprint()
    for methods in (cfg.methods, ["scratch", "full"]):
        cfg.methods = methods
        assert heldout.protocol(cfg, fingerprint, forgetting) == committed
    assert cfg.n_demos == [10, 50] and cfg.seeds == [0, 1, 2] and cfg.train_overrides == {
        "val.every": 100, "val.n_episodes": 10}


def test_metaworld_preset_composes_into_valid_trainings(monkeypatch, tmp_path):
    """conf/experiments/metaworld_ml45.yaml: ML45's 5 test tasks, and train configs the trainer accepts."""
    from hydra import compose, initialize_config_dir

    from vla_prefix.training.config import CONF_DIR

    monkeypatch.chdir(CONF_DIR.parent)
    with initialize_config_dir(str(CONF_DIR / "experiments"), version_base=None):
        cfg = heldout.as_config(compose("metaworld_ml45"))
    tasks = heldout._task_ids(cfg.suite, cfg.task, "heldout", "task")
    assert sorted(tasks) == sorted(f"metaworld-{t}-v3" for t in ("bin-picking", "box-close", "hand-insert",
                                                                  "door-lock", "door-unlock"))
    assert heldout._task_ids(cfg.suite, cfg.forgetting_task, "pretrain", "forgetting_task")
    experiment = heldout.Experiment(cfg, {"records": []}, tmp_path / "results.json")
    train_cfg = experiment.train_config(tasks[0], "prefix", seed=0, n=10, lr=1e-3)
    assert (train_cfg.val.every, train_cfg.val.ties, train_cfg.optim.steps) == (100, "last", 500)


def test_readme_results_blocks_are_generated_from_the_committed_files(monkeypatch):
    """Every results block in the README is what `report` renders from the file it names, today."""
    import re

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    text = (root / "README.md").read_text()
    blocks = re.findall(r"^<!-- results:(\S+):start -->\n(.*?)\n<!-- results:\1:end -->$", text, re.M | re.S)
    assert {"tabletop", "metaworld:single_lr"} <= {key for key, _ in blocks}
    for key, block in blocks:
        path = Path(re.match(r"<!-- generated from (\S+) by", block).group(1))
        assert report.block_of(path, root) == (key, block), f"regenerate the {key} block: report {path}"
    # and each committed held-out file's summary is what today's code derives from its records
    for path in sorted((root / "results").rglob("*.json")):
        results = json.loads(path.read_text())
        if isinstance(results, dict) and results.get("format") == heldout.FORMAT:
            assert json.loads(json.dumps(summarize(results))) == results["summary"], f"re-summarize {path}"


def test_report_cli_bad_file_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "none.json")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: no results file")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "other.json")])
    assert exit_info.value.code == 2 and "neither a held-out results file" in capsys.readouterr().err


def test_lr_choice_summary_and_figures_from_records(tmp_path):
    """Pure bookkeeping on hand-made records: lr choice (val, then loss), first_seed reuse, partial cells, plots."""
    from vla_prefix.experiments.figures import DEMOS_PLOT, SUCCESS_PLOT, write_figures
    from vla_prefix.experiments.records import choose_lr

    def val(rate):
        return {"success_rate": rate, "ci95": [0.0, 1.0], "n_episodes": 4, "n_successes": int(rate * 4)}

    assert choose_lr([1e-3, 1e-2], {1e-3: {"val": val(0.5), "final_loss": 0.2},
                                    1e-2: {"val": val(0.5), "final_loss": 0.1}}) == 1e-2  # tie: lower loss
    assert choose_lr([1e-3, 1e-2], {1e-3: {"val": val(0.75), "final_loss": 0.9}}) is None  # a grid lr unscored
    assert choose_lr([3e-4], {}) == 3e-4

    def train(seed, n, lr, rate, wall_s=2.0, **timing):
        return {"stage": "train", "task": "t", "method": "full", "seed": seed, "n_demos": n, "lr": lr,
                "val": rate if rate is None else val(rate), "final_loss": 0.1, "trainable_params": 100,
                "trainable_pct": 100.0, "stored_bytes": 400, "train_wall_s": wall_s, **timing,
                "val_best": {"score": 0.5, "step": 200} if seed == 0 else None}

    def evaluation(seed, n, lr, k):
        return {"stage": "eval", "task": "t", "method": "full", "seed": seed, "n_demos": n, "lr": lr,
                "success_rate": k / 4, "ci95": [0.0, 1.0], "n_episodes": 4, "n_successes": k,
                "failures": {"distractor": 4 - k - k // 2, "none": k // 2} if k < 4 else {}}

    records = [train(0, 5, 1e-4, 0.25), train(0, 5, 3e-4, 0.75), evaluation(0, 5, 3e-4, 3),
               train(1, 5, 3e-4, None, 0.5, resumed=True),  # seed 1 reuses seed 0's lr (first_seed); a resume
               evaluation(1, 5, 3e-4, 1),  # recorded before the trainer timed every part: its 0.5 s are partial
               train(0, 10, 1e-4, 0.5, 3.0, resumed=True, train_wall_s_partial=False),  # timed: all its parts
               train(0, 10, 3e-4, 0.25), evaluation(0, 10, 1e-4, 4)]  # seed 1 unfinished
    protocol = {"suite": "tabletop", "n_episodes": 4, "val_episodes": 4, "steps": 5, "batch_size": 8,
                "n_action_steps": 2, "base": "b", "base_fingerprint": "f"}
    results = {"protocol": protocol, "goals": {}, "records": records,
               "config": {"tasks": ["t"], "methods": ["full"], "seeds": [0, 1], "n_demos": [5, 10],
                          "lr_grid": {"full": [1e-4, 3e-4]}, "lr_selection": "first_seed"}}
    summary = summarize(results)
    five, ten = summary["n_demos"]["5"]["full"], summary["n_demos"]["10"]["full"]
    assert five["lr"] == {"t": {"0": 3e-4, "1": 3e-4}} and five["complete"]
    assert (five["mean"]["n_successes"], five["mean"]["n_episodes"], five["mean"]["success_rate"]) == (4, 8, 0.5)
    assert five["mean"]["seed_std"] == pytest.approx(0.3535, abs=1e-3)  # per-seed means 0.75 and 0.25
    assert five["tuning_wall_s"] == 4.5 and five["train_wall_s"] == 2.0  # the partial run: in the sum, not the mean
    assert ten["tuning_wall_s"] == 5.0 and ten["train_wall_s"] == 3.0
    assert not ten["complete"] and ten["mean"]["n_cells"] == 1 and ten["mean"]["success_rate"] == 1.0
    assert five["failures"] == {"distractor": 3, "none": 1} and ten["failures"] == {}  # seeds pooled
    assert five["kept_steps"] == [200]  # seed 1's run selected no checkpoint
    assert summary["goals"] == {"5": [], "10": []}  # no prefix results: nothing to check
    results["summary"] = summary
    assert write_figures(results, tmp_path) == [SUCCESS_PLOT, DEMOS_PLOT]
    for name in (SUCCESS_PLOT, DEMOS_PLOT):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    block = report.render(results)
    assert "| full | 100 | 100% | 400 B | 2 s | 0.50 [" in block and "partial (1/2 cells; per task below)" in block
    assert "| full | 4 | 3 (75%) | 1 (25%) |" in block  # 5 demos: failed episodes by what was engaged
    assert "| 0.0003 | 200 |" in block  # the chosen lr and the step its checkpoint was kept at
    assert block.count(" (1/2 seeds) |") == 1  # 10 demos: the per-task cell says it pools only seed 0
    assert "| success, 5 demos | success, 10 demos | forgetting after 5 demos | forgetting after 10 demos |" in block


def test_forgetting_pools_distinct_measurements_only():
    """A prefix method's forgetting records reuse the base's one measurement: it counts once, not once per seed."""
    from vla_prefix.experiments.records import pooled

    def forgetting(method, seed, k, measured):
        return {"stage": "forgetting", "task": None if method == "base" else "t", "method": method, "seed": seed,
                "n_demos": None if method == "base" else 10, "lr": None if method == "base" else 1e-3,
                **pooled([(k, 10)]), "measured": measured, "identical_to_base": method != "full"}

    def trained(method, seed):
        return [{"stage": "train", "task": "t", "method": method, "seed": seed, "n_demos": 10, "lr": 1e-3,
                 "val": None, "final_loss": 0.1, "trainable_params": 1, "trainable_pct": 1.0, "stored_bytes": 4,
                 "train_wall_s": 1.0},
                {"stage": "eval", "task": "t", "method": method, "seed": seed, "n_demos": 10, "lr": 1e-3,
                 "success_rate": 0.5, "ci95": [0.0, 1.0], "n_episodes": 10, "n_successes": 5}]

    records = [forgetting("base", None, 6, True)]
    for seed in (0, 1, 2):
        records += trained("prefix", seed) + [forgetting("prefix", seed, 6, False)]
        records += trained("full", seed) + [forgetting("full", seed, seed, True)]
    results = {"goals": {}, "records": records,
               "config": {"tasks": ["t"], "methods": ["prefix", "full"], "seeds": [0, 1, 2], "n_demos": [10],
                          "lr_grid": {"prefix": [1e-3], "full": [1e-3]}, "lr_selection": "first_seed"}}
    methods = summarize(results)["n_demos"]["10"]
    prefix, full = methods["prefix"]["forgetting"], methods["full"]["forgetting"]
    assert (prefix["n_successes"], prefix["n_episodes"], prefix["n_models"]) == (6, 10, 3)
    assert prefix["ci95"] == summarize(results)["base_forgetting"]["ci95"] and prefix["delta_vs_base"] == 0.0
    assert (full["n_successes"], full["n_episodes"], full["measured"]) == (3, 30, True)
    assert full["delta_vs_base"] == pytest.approx(0.1 - 0.6)


def test_goal_checks_compare_complete_means_only():
    """A goal ratio needs both means over the same (task, seed) cells: a partial one is left out, not compared."""

    def cell(method, task, seed, k):
        return [{"stage": "train", "task": task, "method": method, "seed": seed, "n_demos": 10, "lr": 1e-3,
                 "val": None, "final_loss": 0.1, "trainable_params": 1, "trainable_pct": 0.5, "stored_bytes": 4,
                 "train_wall_s": 1.0},
                {"stage": "eval", "task": task, "method": method, "seed": seed, "n_demos": 10, "lr": 1e-3,
                 "success_rate": k / 10, "ci95": [0.0, 1.0], "n_episodes": 10, "n_successes": k}]

    records = cell("prefix", "a", 0, 4) + cell("prefix", "b", 0, 2) + cell("lora", "a", 0, 5)
    results = {"goals": {"prefix_over_lora_min": 1.0, "prefix_max_trainable_pct": 1.0}, "records": records,
               "config": {"tasks": ["a", "b"], "methods": ["prefix", "lora"], "seeds": [0], "n_demos": [10],
                          "lr_grid": {"prefix": [1e-3], "lora": [1e-3]}, "lr_selection": "first_seed"}}
    # lora has task a only: its 0.5 would be compared with prefix's 0.3 over a and b
    assert [c["goal"] for c in summarize(results)["goals"]["10"]] == ["prefix trainable % of backbone <= target"]
    results["records"] += cell("lora", "b", 0, 1)
    ratio = summarize(results)["goals"]["10"][0]
    assert ratio["goal"] == "prefix / lora mean success >= target" and ratio["measured"] == pytest.approx(1.0)
    assert ratio["met"]
    # the report: one measured/met column pair per demo count that has checks, "–" where a goal is unchecked
    from vla_prefix.experiments.report import _goals_table
    checks = summarize(results)["goals"]["10"]
    table = _goals_table({"10": checks, "50": checks[1:], "25": []})
    assert table[3] == "| goal | target | measured, 10 demos | met | measured, 50 demos | met |"
    assert table[5] == "| prefix / lora mean success >= target | 1 | 1 | yes | – | – |"
    assert table[6] == "| prefix trainable % of backbone <= target | 1 | 0.5 | yes | 0.5 | yes |"
    assert _goals_table({"10": []}) == []


def test_merge_takes_scratch_cells_from_another_base_of_the_same_architecture(tmp_path):
    """`--methods scratch` imports a file made on another base (scratch never loads the base's weights) only where
    the two bases share an architecture; every other method, and any other protocol change, is refused."""

    def base(name, width):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "training.json").write_text(json.dumps({"config": {"model": {"trunk": {"hidden_size": width}}}}))
        return str(folder)

    def cells(method, k):
        return [{"stage": "train", "task": "t", "method": method, "seed": 0, "n_demos": 10, "lr": 1e-3, "val": None,
                 "final_loss": 0.1, "trainable_params": 1, "trainable_pct": 100.0, "stored_bytes": 4,
                 "train_wall_s": 1.0},
                {"stage": "eval", "task": "t", "method": method, "seed": 0, "n_demos": 10, "lr": 1e-3,
                 "success_rate": k / 4, "ci95": [0.0, 1.0], "n_episodes": 4, "n_successes": k}]

    def results_file(base_dir, fingerprint, methods, k):
        protocol = {"suite": "tabletop", "n_episodes": 4, "steps": 5, "base": base_dir,
                    "base_fingerprint": fingerprint, "scratch_model": None}
        return {"format": heldout.FORMAT, "protocol": protocol, "goals": {}, "runs": [],
                "records": [r for m in methods for r in cells(m, k)],
                "config": {"tasks": ["t"], "methods": methods, "seeds": [0], "n_demos": [10],
                           "lr_grid": {m: [1e-3] for m in methods}, "lr_selection": "per_seed", "forgetting": False}}

    old, new, wide = base("old", 256), base("new", 256), base("wide", 512)
    target = results_file(new, "f_new", ["full"], 3)
    with pytest.raises(ConfigError, match=r"another protocol \(differs in base, base_fingerprint\)"):
        merge.merge(json.loads(json.dumps(target)), results_file(old, "f_old", ["full", "scratch"], 1))
    with pytest.raises(ConfigError, match=r"another protocol \(differs in base, base_fingerprint\)"):
        merge.merge(json.loads(json.dumps(target)), results_file(old, "f_old", ["full"], 1), methods=["full"])
    merged = merge.merge(target, results_file(old, "f_old", ["full", "scratch"], 1), "old.json", methods=["scratch"])
    assert [(r["method"], r["stage"]) for r in merged["records"]] == \
        [("full", "train"), ("full", "eval"), ("scratch", "train"), ("scratch", "eval")]
    assert merged["protocol"]["base"] == new and merged["config"]["methods"] == ["full", "scratch"]
    assert merged["summary"]["n_demos"]["10"]["full"]["mean"]["success_rate"] == 0.75  # the target's own full
    assert merged["summary"]["n_demos"]["10"]["scratch"]["mean"]["success_rate"] == 0.25
    with pytest.raises(ConfigError, match="architecture differs from the target's base"):
        merge.merge(results_file(new, "f_new", ["full"], 3), results_file(wide, "f_wide", ["scratch"], 1),
                    methods=["scratch"])
    other_steps = results_file(old, "f_old", ["scratch"], 1)
    other_steps["protocol"]["steps"] = 6
    with pytest.raises(ConfigError, match=r"differs in steps\)"):
        merge.merge(results_file(new, "f_new", ["full"], 3), other_steps, methods=["scratch"])
    with pytest.raises(ConfigError, match="holds none of the methods"):
        merge.merge(results_file(new, "f_new", ["full"], 3), results_file(old, "f_old", ["full"], 1),
                    methods=["scratch"])
