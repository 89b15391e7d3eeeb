"""The W&B sweep file, the offline local sweep runner and the Hydra SLURM launcher config."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import HELDOUT_TASK
from vla_prefix import sweep
from vla_prefix.errors import ConfigError
from vla_prefix.models.vla import VLA
from vla_prefix.training.config import CONF_DIR

SWEEP_FILE = CONF_DIR / "sweep" / "prefix_length.yaml"


def _sweeps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps  # W&B's sweep engine, the one `wandb sweep`/the local controller validate with
    return sweeps


def test_sweep_file_is_a_valid_wandb_grid_sweep():
    config = yaml.safe_load(SWEEP_FILE.read_text())
    sweeps = _sweeps()
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert sweeps.schema_violations_from_proposed_config({**config, "method": "grd"})  # the check does bite
    assert config["method"] == "grid"
    assert config["metric"] == {"name": "success_rate", "goal": "maximize"}
    for key in ("prefix.language.length", "prefix.visual.length"):
        assert {0, 1, 2, 4, 8, 16, 32} <= set(config["parameters"][key]["values"])
    command = config["command"]
    assert command[-1] == "${args_no_hyphens}" and command[-3:-1] == ["vla_prefix.sweep", "job"]
    # W&B's engine proposes the same grid the local runner runs, in the same order
    runs, proposed = [], []
    while (run := sweeps.next_run(config, runs)) is not None:
        proposed.append({k: v["value"] for k, v in run.config.items()})
        run.state = sweeps.RunState.finished
        runs.append(run)
    grid, fixed = sweep.split_parameters(config, {})
    assert proposed == [{**fixed, **p} for p in sweep.expand_grid(grid)]
    assert len(proposed) == 49
    # every job of the grid composes into a valid train config (real Hydra), and its keys are real
    settings, overrides = sweep.split_keys({**fixed, **sweep.expand_grid(grid)[-1]})
    cfg = sweep.compose_job(settings, overrides)
    assert (cfg.prefix.language.length, cfg.prefix.visual.length, cfg.optim.steps) == (32, 32, fixed["max_steps"])


@pytest.mark.parametrize("name,x_key,plot,n_runs", [
    ("ablation_variant", "prefix", "success_vs_prefix.png", 10),
    ("ablation_init", "prefix.language.init", "success_vs_init.png", 12),
    ("ablation_demos", "n_demos", "success_vs_n_demos.png", 8),
])
def test_ablation_sweep_files_compose_every_job(name, x_key, plot, n_runs):
    config = yaml.safe_load((CONF_DIR / "sweep" / f"{name}.yaml").read_text())
    assert _sweeps().schema_violations_from_proposed_config(config) == []
    grid, fixed = sweep.split_parameters(config, {})
    assert next(iter(grid)) == x_key and sweep.plot_name(grid) == plot
    assert fixed["n_episodes"] == 50 and fixed["seed"] == 0 and len(grid["task"]) == 2  # the ablation budget
    resolved = {}
    for params in sweep.expand_grid(grid):
        settings, overrides = sweep.split_keys({**fixed, **params})
        train_cfg = sweep.compose_job(settings, overrides)
        assert (train_cfg.mode, train_cfg.optim.steps, train_cfg.val.every) == ("prefix", 500, 100)
        resolved[sweep.run_name(params)] = (settings.n_demos, train_cfg.prefix.resolved())
    assert len(resolved) == n_runs
    if name == "ablation_variant":  # each variant is what its name says, with 20 prefix positions in all
        by_variant = {k.split(",")[0]: p for k, (_, p) in resolved.items()}
        none = by_variant.pop("prefix=none")  # the zero-shot reference: the sweep evaluates the base, trains nothing
        assert none.visual.length == none.language.length == 0
        assert by_variant["prefix=shallow"].visual.depth == by_variant["prefix=shallow"].language.depth == "shallow"
        assert by_variant["prefix=encoder"].visual.site == "encoder"
        assert (by_variant["prefix=shared"].visual.length, by_variant["prefix=shared"].language.length) == (20, 0)
        assert all(p.visual.length + p.language.length == 20 for p in by_variant.values())
    if name == "ablation_demos":
        assert sorted({n for n, _ in resolved.values()}) == [5, 10, 25, 50]
    assert sweep.plot_name({"prefix.language.length": [0, 4], "prefix.visual.length": [0]}) == sweep.PLOT


@pytest.mark.xdist_group("sweep")  # both tiny_base tests on one worker: the session fixture is built once
@pytest.mark.usefixtures("one_torch_thread")
def test_local_sweep_runs_logs_resumes_and_plots(tabletop_demos, tiny_base, tmp_path):
    spec = {
        "method": "grid",
        "metric": {"name": "success_rate", "goal": "maximize"},
        "parameters": {
            "prefix.language.length": {"values": [0, 2]},
            "prefix.visual.length": {"values": [0, 1]},
            "task": {"value": HELDOUT_TASK},
            "base": {"value": str(tiny_base)},
            "data": {"value": str(tabletop_demos)},
            "max_steps": {"value": 500},
            "optim.batch_size": {"value": 8},
            "data.num_workers": {"value": 0},
            "threads": {"value": 1},
        },
        "command": ["${env}", "${interpreter}", "-m", "vla_prefix.sweep", "job", "${args_no_hyphens}"],
    }
    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    cli = {"max_steps": "3", "n_episodes": "2", "num_envs": "1", "out": str(out),
           "prefix.visual.length": "0"}  # the command line restricts the 2x2 grid to 2 runs
    results = sweep.run_sweep(file, cli)

    on_disk = json.loads((out / sweep.RESULTS).read_text())
    assert on_disk == json.loads(json.dumps(results))
    rows = on_disk["rows"]
    assert [r["parameters"] for r in rows] == [{"prefix.language.length": 0, "prefix.visual.length": 0},
                                               {"prefix.language.length": 2, "prefix.visual.length": 0}]
    zero, two = rows
    assert zero["zero_shot"] and zero["trainable_params"] == 0 and zero["prefix_bytes"] == 0
    assert not two["zero_shot"] and two["trainable_params"] > 0 and two["prefix_bytes"] > 0
    assert two["train_wall_s"] > 0 and two["train_wall_s_partial"] is False  # trained in one part
    assert Path(two["prefix_file"]).is_file()
    for r in rows:
        assert r["n_episodes"] == 2 and 0.0 <= r["ci95"][0] <= r["success_rate"] <= r["ci95"][1] <= 1.0
        info = json.loads((Path(r["run_dir"]) / "eval" / "eval_info.json").read_text())
        assert info["tasks"][HELDOUT_TASK]["success_rate"] == r["success_rate"]
        assert r["wall_s"] > 0
        offline = list((Path(r["run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(offline) == 1 and b"success_rate" in offline[0].read_bytes()  # its own offline W&B run
    steps = [json.loads(line)["step"] for line in (Path(two["run_dir"]) / "train" / "metrics.jsonl").open()]
    assert steps == [0, 1, 2]  # max_steps from the command line beat the file's 500
    assert on_disk["fixed"]["max_steps"] == 3
    assert (out / sweep.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the README block is generated from the file, between the sweep's own markers
    from vla_prefix.experiments import report

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n<!-- results:sweep:{file.stem}:start -->\nold\n<!-- results:sweep:{file.stem}:end -->\n")
    assert report.main([str(out / sweep.RESULTS), "--readme", str(readme)]) == 0
    block = readme.read_text()
    assert "old" not in block and f"]({out.name}/{sweep.PLOT})" in block
    for r in rows:  # one line per grid point (a single task: no pooled column), its rate with the Wilson CI
        lo, hi = r["ci95"]
        language, visual = r["parameters"].values()
        rate = f"{r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"
        assert f"| {language} | {visual} | {rate} | {r['trainable_params']:,} |" in block

    # rerun: the finished rows are kept and skipped (also for a part of the grid)
    mtime = (Path(two["run_dir"]) / "result.json").stat().st_mtime_ns
    assert sweep.run_sweep(file, cli)["rows"] == rows
    assert sweep.run_sweep(file, {**cli, "prefix.language.length": "2"})["rows"] == rows
    assert (Path(two["run_dir"]) / "result.json").stat().st_mtime_ns == mtime
    # other fixed settings in the same out are refused: nothing is overwritten
    with pytest.raises(ConfigError, match="other settings"):
        sweep.run_sweep(file, {**cli, "n_episodes": "3"})
    # and so is a base retrained in place (same path, other weights)
    assert on_disk["fixed"]["base_fingerprint"] == VLA.from_pretrained(tiny_base).fingerprint()
    other_base = {**on_disk["fixed"], "base_fingerprint": "0" * 16}
    (out / sweep.RESULTS).write_text(json.dumps({**on_disk, "fixed": other_base}))
    with pytest.raises(ConfigError, match="another fixed: base_fingerprint: '0000000000000000' there"):
        sweep.run_sweep(file, cli)
    # and so is a changed prefix default (conf/prefix/deep.yaml edited between runs); swept keys are not part of it
    shared = on_disk["fixed"]["train_config"]
    assert "length" not in shared["prefix"]["language"] and shared["prefix"]["visual"]["reparam"] is True
    other_prefix = json.loads(json.dumps(on_disk["fixed"]))
    other_prefix["train_config"]["prefix"]["visual"]["reparam"] = False
    (out / sweep.RESULTS).write_text(json.dumps({**on_disk, "fixed": other_prefix}))
    with pytest.raises(ConfigError, match="another fixed: train_config.prefix.visual.reparam: False there, True now"):
        sweep.run_sweep(file, cli)


@pytest.mark.parametrize("content,cli,match", [
    (None, {}, "no sweep file"),
    ("method: grid\nparameters: [1, 2]\n", {}, "not a valid W&B sweep config"),
    ("method: random\nparameters:\n  prefix.language.length: {values: [0, 1]}\n", {}, "grid sweeps only"),
    ("method: grid\nparameters:\n  prefix.language.length: {min: 0, max: 4}\n", {}, "needs `values"),
    ("method: grid\nparameters:\n  prefix.langage.length: {values: [0, 1]}\n", {},
     "unknown sweep parameter 'prefix.langage.length'; did you mean prefix.language.length"),
    ("method: grid\nparameters:\n  prefix.language.length: {values: [0, 1]}\n", {"max_steps": "abc"},
     "bad sweep setting"),
    ("method: grid\nparameters:\n  prefix.language.length: {values: [-1]}\n", {"base": "."},
     "must be an integer >= 0"),
])
def test_bad_sweep_input_is_one_clear_error(tmp_path, content, cli, match):
    file = tmp_path / "s.yaml"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ConfigError, match=match):
        sweep.run_sweep(file, {"out": str(tmp_path / "out"), **cli})


def test_cli_bad_input_exits_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["no/such/sweep.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no sweep file") and "Traceback" not in err


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from vla_prefix.training.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
            "data.path=demos", "prefix.language.length=4"])
    launcher = cfg.hydra.launcher
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 30, 1)
    assert cfg.prefix.language.length == 4  # the app's own config is untouched
    # the launcher class accepts every field of the composed config (it is what Hydra instantiates)
    params = {k: v for k, v in OmegaConf.to_container(launcher, resolve=False).items() if k != "_target_"}
    get_class(launcher._target_)(**params)


@pytest.mark.xdist_group("sweep")
@pytest.mark.usefixtures("one_torch_thread")
def test_agent_job_from_wandb_command_args(tabletop_demos, tiny_base, tmp_path, monkeypatch, capsys):
    """The arguments `wandb agent` builds for the file's command (`${args_no_hyphens}`) run one job."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    params = {"prefix.language.length": 2, "prefix.visual.length": 1, "task": HELDOUT_TASK, "base": str(tiny_base),
              "data": str(tabletop_demos), "n_demos": None, "max_steps": 2, "n_episodes": 1, "num_envs": 1,
              "optim.batch_size": 8, "data.num_workers": 0, "threads": 1, "out": str(tmp_path / "jobs")}
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args_no_hyphens"]
    assert "n_demos=None" in args
    sweep.main(["job", *args])

    (run_dir,) = (tmp_path / "jobs" / "runs").iterdir()
    row = json.loads((run_dir / "result.json").read_text())
    assert row["n_episodes"] == 1 and row["trainable_params"] > 0 and not row["zero_shot"]
    assert (run_dir / "train" / "prefixes" / f"{HELDOUT_TASK}.safetensors").is_file()
    (offline,) = (tmp_path / "jobs" / "wandb").glob(f"offline-run-*-{run_dir.name}")  # the W&B run id names it
    (records,) = offline.glob("run-*.wandb")
    assert b"success_rate" in records.read_bytes() and b"train/loss" in records.read_bytes()
    assert f"{run_dir.name}: success {row['success_rate']:.3f}" in capsys.readouterr().out
