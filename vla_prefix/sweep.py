r"""Prefix-length sweeps from one W&B sweep file: W&B agent jobs, or an offline local grid runner.

    wandb sweep conf/sweep/prefix_length.yaml && wandb agent <entity>/<project>/<sweep id>
    python -m vla_prefix.sweep conf/sweep/prefix_length.yaml                  # the whole grid here, offline
    python -m vla_prefix.sweep conf/sweep/prefix_length.yaml max_steps=50 n_episodes=10 out=outputs/sweep_small
    python -m vla_prefix.sweep conf/sweep/prefix_length.yaml prefix.visual.length=0 prefix.language.length=0,4,16
    python -m vla_prefix.sweep job prefix.language.length=4 prefix.visual.length=8 max_steps=500   # one job

A job prefix-tunes the frozen `base` on one `task` (vla_prefix.training.trainer.train), evaluates the
prefix on the `eval` seeds (vla_prefix.evaluate.evaluate) and logs `success_rate` (with its Wilson 95%
CI, the trainable params and the prefix file's bytes) to its W&B run. A grid point whose prefix lengths
are all 0 is the frozen base itself: it is evaluated zero-shot, with nothing trained.

The sweep file is in W&B's own format (method: grid). Parameters with `values` are the grid; those with
one `value` are fixed. A key is either a job setting (the fields of `SweepSettings`) or any
`python -m vla_prefix.train` override (e.g. `optim.batch_size`, `prefix.visual.init`, `seed`, `device`).
Locally, `key=value` arguments after the file replace a fixed value, or restrict a grid key to
`key=v1,v2`. Each job is logged as its own offline W&B run (under its run folder). The runner writes
`<out>/sweep_results.json` (one row per run) after every run and, at the end, a plot of success against
the first grid key with 2+ values (`plot_name`: `<out>/success_vs_prefix_length.png` for prefix lengths).
Rerunning the same command resumes: rows already in sweep_results.json are kept and skipped, and an
interrupted run continues from its last checkpoint. Another set of fixed settings in the same `out` is
refused (nothing is overwritten). A grid key may also pick a prefix config (`prefix: {values: [deep, shared]}`)
or a task; conf/sweep/ablation_*.yaml are the held-out ablations (README, "Ablations").
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError, closest, cli_errors
from .utils.atomic import atomic_write_bytes, atomic_write_json
from .utils.results_file import load_frozen_results

RESULTS = "sweep_results.json"
PLOT = "success_vs_prefix_length.png"
FORMAT = "vla-prefix-sweep/1"
PREFIX_MODES = ("prefix", "prompt")


@dataclass
class SweepSettings:
    """The job settings that are not `python -m vla_prefix.train` overrides (every field is a sweep key)."""

    task: str = "tabletop-pick-place-yellow-ball-v0"  # one task id: the prefix is trained and evaluated on it
    base: str = "checkpoints/tabletop_base"  # the frozen base VLA (a `mode=pretrain` output)
    data: str = "data/quickstart"  # demos of `task` (python -m vla_prefix.collect)
    n_demos: Optional[int] = None  # demos used for training; null = all in `data`
    max_steps: int = 500  # prefix-tuning (optimizer) steps per run
    n_episodes: int = 50  # eval rollouts per run
    n_action_steps: int = 2  # actions executed per predicted chunk
    num_envs: int = 2  # eval vector-env slots
    video_episodes: int = 0  # eval videos kept per run
    out: Optional[str] = None  # null = outputs/sweeps/<sweep file name> (local) or outputs/sweeps/<sweep id> (job)
    project: str = "vla-prefix"  # W&B project of runs outside a W&B sweep (an agent's sweep sets its own)


SETTING_NAMES = [f.name for f in fields(SweepSettings)]
RESULT_SETTINGS = [n for n in SETTING_NAMES if n not in ("out", "project")]  # those that change results


# ---------------------------------------------------------------------------- parsing


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it: `4` -> 4, `null` -> None, `[a,b]` -> ['a', 'b'], `x/y` -> 'x/y'.

    `None` is None too: a W&B agent writes a null parameter as Python's str(None).
    """
    import yaml

    if text == "None":
        return None
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_args(args: list[str]) -> dict[str, str]:
    """`key=value` arguments -> {key: raw value text} (in order)."""
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("-")  # tolerate `--key=value`
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {arg!r} (e.g. max_steps=50 prefix.visual.length=4)")
        out[key] = value
    return out


def load_sweep_file(path: str | os.PathLike) -> dict:
    """The sweep file as a dict, checked against W&B's sweep schema (when the `sweeps` package is installed)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no sweep file at {str(path)!r}; give a W&B sweep YAML, e.g. conf/sweep/prefix_length.yaml")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a W&B sweep config (expected a mapping with method, metric, parameters)")
    if not isinstance(config.get("parameters"), dict) or not config["parameters"]:
        raise ConfigError(f"{path} is not a valid W&B sweep config: `parameters` must map each key to "
                          "{values: [...]} or {value: ...}")
    violations = schema_violations(config)
    if violations:
        raise ConfigError(f"{path} is not a valid W&B sweep config: {'; '.join(violations)}")
    if config.get("method") != "grid":
        raise ConfigError(f"{path} has method: {config.get('method')!r}; the local runner runs grid sweeps only "
                          "(run other methods with `wandb sweep` + `wandb agent`, or set method: grid)")
    return config


def schema_violations(config: dict) -> list[str]:
    """W&B's own sweep-config schema check (package `sweeps`, W&B's sweep engine); [] if it is not installed."""
    import warnings

    try:
        with warnings.catch_warnings():  # sweeps 0.2 uses a pydantic-1 config key that pydantic 2 warns about
            warnings.simplefilter("ignore")
            import sweeps
    except ImportError:
        return []
    return [str(v) for v in sweeps.schema_violations_from_proposed_config(config)]


def split_parameters(config: dict, cli: dict[str, str]) -> tuple[dict[str, list], dict[str, Any]]:
    """-> (grid {key: [values]}, fixed {key: value}) from the file's `parameters` and the command line."""
    grid, fixed = {}, {}
    for key, spec in (config.get("parameters") or {}).items():
        if not isinstance(spec, dict) or ("values" not in spec and "value" not in spec):
            raise ConfigError(f"parameter {key!r}: a grid sweep needs `values: [...]` or `value: ...` "
                              f"(got {spec!r}; distributions need method random/bayes on the W&B server)")
        if "values" in spec:
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise ConfigError(f"parameter {key!r}: `values` must be a non-empty list, got {spec['values']!r}")
            grid[key] = list(spec["values"])
        else:
            fixed[key] = spec["value"]
    for key, text in cli.items():
        if key in grid:  # restrict the grid: key=v1,v2
            grid[key] = [parse_value(t) for t in text.split(",")] if not text.startswith("[") else parse_value(text)
            if not isinstance(grid[key], list):
                grid[key] = [grid[key]]
        else:
            fixed[key] = parse_value(text)
    if not grid:
        raise ConfigError("the sweep has no grid: give at least one parameter `values: [...]`")
    return grid, fixed


# ---------------------------------------------------------------------------- one job


def split_keys(values: dict[str, Any]) -> tuple[SweepSettings, dict[str, Any]]:
    """{key: value} -> (SweepSettings, train overrides). Wrong types fail with one ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    settings = {k: v for k, v in values.items() if k in SETTING_NAMES}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepSettings), settings)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad sweep setting: {str(err).splitlines()[0]}") from None
    overrides = {k: v for k, v in values.items() if k not in SETTING_NAMES}
    return SweepSettings(**OmegaConf.to_container(merged)), overrides


def hydra_value(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if isinstance(value, str) and not re.fullmatch(r"[\w./:+@-]+", text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def _train_keys() -> list[str]:
    """Every dotted key of TrainConfig, for "did you mean" hints."""
    from omegaconf import OmegaConf

    from .training.config import TrainConfig

    def walk(node, prefix):
        for key in node:
            path = f"{prefix}{key}"
            yield path
            child = node._get_node(key)
            if OmegaConf.is_dict(child):
                yield from walk(child, path + ".")

    return list(walk(OmegaConf.structured(TrainConfig), ""))


def compose_job(settings: SweepSettings, overrides: dict[str, Any]):
    """The TrainConfig of one job: a prefix run of `settings.task` plus the overrides (real Hydra composition)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .training.config import compose_train_config

    base = {"mode": "prefix", "base": settings.base, "task": settings.task, "data.path": settings.data,
            "data.n_demos": settings.n_demos, "optim.steps": settings.max_steps, "progress": False}
    clash = sorted(set(overrides) & {"data.path", "data.n_demos", "optim.steps", "logger", "resume"})
    if clash:
        raise ConfigError(f"sweep parameter {clash[0]!r} is set by the sweep itself: use the sweep settings "
                          "data, n_demos and max_steps (each job logs to W&B and resumes on its own)")
    merged = {**base, **overrides, "logger": "none", "resume": True}
    try:
        return compose_train_config({k: hydra_value(v) for k, v in merged.items()})
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0]
        known = SETTING_NAMES + _train_keys()
        unknown = [k for k in overrides if k.lstrip("+~") not in known
                   and not k.lstrip("+~").startswith(("model.", "optim.lr_by_mode."))]
        if unknown:
            hint = closest(unknown[0], known)
            raise ConfigError(f"unknown sweep parameter {unknown[0]!r}" + (f"; did you mean {hint[0]}?" if hint else "")
                              + f" (keys are sweep settings {SETTING_NAMES} or `python -m vla_prefix.train` "
                              f"overrides; Hydra: {message})") from None
        raise ConfigError(f"bad sweep parameter: {message}") from None


def check_inputs(settings: SweepSettings, train_cfg) -> None:
    """Fail early, with the fix, on a missing base or dataset, an unknown task or bad prefix lengths."""
    from .models.vla import weights_file
    from .sim.registry import get_task

    if train_cfg.mode in PREFIX_MODES:
        train_cfg.prefix.resolved()  # lengths >= 0, valid depth/init/site
    get_task(settings.task)  # UnknownTaskError names the closest ids
    if not weights_file(settings.base):
        raise ConfigError(f"base={settings.base!r} is not a base VLA folder; make one with `python -m vla_prefix.train "
                          "mode=pretrain ...` or the quickstart (`python -m vla_prefix.quickstart`)")
    if not Path(settings.data).is_dir():
        raise ConfigError(f"data={settings.data!r} is not a demo dataset; collect one with `python -m "
                          f"vla_prefix.collect task={settings.task} n_demos=50 out={settings.data}`")


def run_job(settings: SweepSettings, train_cfg, run_dir: str | Path, wandb_run=None) -> dict:
    """Train a prefix (unless every prefix length is 0: the zero-shot base), evaluate it, log it; -> result row.

    Writes `<run_dir>/train/` (the trainer's files), `<run_dir>/eval/eval_info.json` and `<run_dir>/result.json`.
    """
    from .data.dataset import DemoDataset
    from .evaluate import evaluate
    from .sim.registry import get_task

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    task = get_task(settings.task)
    lengths = train_cfg.prefix.resolved() if train_cfg.mode in PREFIX_MODES else None
    zero_shot = lengths is not None and lengths.visual.length == 0 and lengths.language.length == 0
    if zero_shot:  # a prefix of length 0 is the frozen base itself: nothing to train
        summary = {"trainable_params": 0, "trainable_pct": 0.0, "prefix_bytes": 0, "final_loss": None, "wall_s": 0.0}
        prefix_file = None
    else:
        from .training.trainer import train

        summary = train(train_cfg, run_dir / "train")
        prefix_file = summary["outputs"]["prefixes"][task.id]
    info = evaluate({
        "backbone": train_cfg.base, "prefix": prefix_file, "suite": task.suite, "task": task.id,
        "device": train_cfg.device, "n_episodes": settings.n_episodes, "n_action_steps": settings.n_action_steps,
        "num_envs": settings.num_envs, "video_episodes": settings.video_episodes, "out": str(run_dir / "eval"),
        "cameras": DemoDataset(settings.data).cameras,  # the views the demos (and so the prefix) were made with
        "progress": False})
    result = info["tasks"][task.id]
    row = {
        "success_rate": result["success_rate"],
        "ci95": result["ci95"],
        "n_episodes": result["n_episodes"],
        "n_successes": result["n_successes"],
        "zero_shot": zero_shot,
        "trainable_params": summary["trainable_params"],
        "trainable_pct": summary["trainable_pct"],
        "prefix_bytes": summary.get("prefix_bytes", 0),
        "final_loss": summary["final_loss"],
        "train_wall_s": summary["wall_s"],
        "train_wall_s_partial": summary.get("wall_s_partial", False),  # resumed from an untimed checkpoint
        "eval_wall_s": round(info["wall_s"], 2),
        "wall_s": round(time.perf_counter() - t0, 2),
        "run_dir": str(run_dir),
        "prefix_file": prefix_file,
    }
    if wandb_run is not None:
        log_to_wandb(wandb_run, run_dir / "train" / "metrics.jsonl", row, settings.max_steps)
    atomic_write_json(run_dir / "result.json", row)
    return row


def log_to_wandb(run, metrics_file: Path, row: dict, final_step: int) -> None:
    """The training curve (from the trainer's metrics.jsonl) and the eval result, into one W&B run."""
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                run.log({f"train/{k}": v for k, v in m.items() if k != "step"}, step=m["step"])
    values = {"success_rate": row["success_rate"], "success_ci95_low": row["ci95"][0],
              "success_ci95_high": row["ci95"][1], "trainable_params": row["trainable_params"],
              "prefix_bytes": row["prefix_bytes"]}
    run.log(values, step=final_step)
    run.summary.update({**values, "n_episodes": row["n_episodes"], "wall_s": row["wall_s"]})


def _finish_wandb(run) -> None:
    import wandb

    run.finish()
    wandb.teardown()  # offline records are written asynchronously: flush them before the next run


def run_agent_job(values: dict[str, Any]) -> dict:
    """One `wandb agent` job (`python -m vla_prefix.sweep job k=v ...`): train, evaluate, log `success_rate`.

    Inside a W&B sweep the run is the sweep's; outside one it is a run of `project`, offline unless a
    W&B API key or WANDB_MODE is set. Writes `<out>/runs/<W&B run id>/`.
    """
    import wandb

    settings, overrides = split_keys(values)
    train_cfg = compose_job(settings, overrides)
    check_inputs(settings, train_cfg)
    in_sweep = bool(os.environ.get("WANDB_SWEEP_ID"))
    offline = not (in_sweep or os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))
    out = Path(settings.out or Path("outputs", "sweeps", os.environ.get("WANDB_SWEEP_ID", "jobs")))
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=None if in_sweep else settings.project, dir=str(out),
                     mode="offline" if offline else None, reinit="finish_previous")
    # a sweep's parameters are already in run.config (locked); add the settings it did not set
    run.config.update({k: v for k, v in {**asdict(settings), **overrides}.items() if k not in run.config})
    try:
        row = run_job(settings, train_cfg, out / "runs" / run.id, wandb_run=run)
    except BaseException:
        run.finish(exit_code=1)
        raise
    _finish_wandb(run)
    print(f"[vla_prefix.sweep] {run.id}: success {row['success_rate']:.3f} "
          f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] -> {row['run_dir']}")
    return row


# ---------------------------------------------------------------------------- the local grid runner


def run_name(params: dict[str, Any]) -> str:
    """A folder name from the swept values: {'prefix.language.length': 4, ...} -> 'language.length=4,...'."""
    parts = [f"{'.'.join(k.split('.')[-2:])}={v}" for k, v in params.items()]
    return re.sub(r"[^\w.=,+-]", "_", ",".join(parts))


def expand_grid(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination, the first key varying slowest (the order of W&B's grid search)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def run_sweep(sweep_file: str | os.PathLike, cli: dict[str, str] | None = None) -> dict:
    """Run a grid sweep file locally (offline W&B runs); -> the sweep_results.json dict. See the module doc."""
    config = load_sweep_file(sweep_file)
    grid, fixed = split_parameters(config, cli or {})
    settings, fixed_overrides = split_keys(fixed)
    name = str(config.get("name") or Path(sweep_file).stem)
    out = Path(settings.out or Path("outputs", "sweeps", name))
    points = expand_grid(grid)
    jobs = []
    for params in points:  # compose every job first: a bad key or value fails before any run starts
        job_settings, overrides = split_keys({**fixed, **params})
        train_cfg = compose_job(job_settings, overrides)
        check_inputs(job_settings, train_cfg)
        jobs.append((params, job_settings, train_cfg))

    fixed_record = {**{k: getattr(settings, k) for k in RESULT_SETTINGS if k not in grid}, **fixed_overrides,
                    "train_config": shared_train_config(jobs[0][2], grid)}
    if "base" not in grid:  # a base retrained in place must not resume onto rows measured with the old one
        from .models.vla import VLA

        fixed_record["base_fingerprint"] = VLA.from_pretrained(settings.base).fingerprint()
    results = load_results(out / RESULTS, fixed_record)
    results.update({"sweep": str(sweep_file), "metric": config.get("metric"), "grid": grid})
    done = {row["run"] for row in results["rows"]}
    todo = [job for job in jobs if run_name(job[0]) not in done]
    print(f"[vla_prefix.sweep] {name}: {len(points)} runs ({len(points) - len(todo)} already in "
          f"{out / RESULTS}) -> {out}", flush=True)
    atomic_write_json(out / RESULTS, results)
    for i, (params, job_settings, train_cfg) in enumerate(todo, start=1):
        run_id = run_name(params)
        print(f"[vla_prefix.sweep] ({i}/{len(todo)}) {run_id}", flush=True)
        run = _offline_run(out / "runs" / run_id, run_id, name, settings.project, {**fixed, **params})
        try:
            row = run_job(job_settings, train_cfg, out / "runs" / run_id, wandb_run=run)
        except BaseException:
            run.finish(exit_code=1)
            raise
        _finish_wandb(run)
        results["rows"].append({"run": run_id, "parameters": params, **row})
        atomic_write_json(out / RESULTS, results)  # after every run: an interruption loses nothing finished
        print(f"    success {row['success_rate']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}], "
              f"{row['trainable_params']} trainable params, {row['wall_s']:.0f} s", flush=True)
    wanted = {run_name(p) for p in points}
    current = [r for r in results["rows"] if r["run"] in wanted]
    plot = out / plot_name(grid)
    plot_results(current, list(grid), plot)
    print(format_table(current, list(grid)))
    print(f"results: {out / RESULTS}\nplot:    {plot}\n"
          f"W&B:     offline runs in {out / 'runs'}/*/wandb/ (upload: wandb sync {out / 'runs'}/*/wandb/offline-run-*)")
    return results


def _offline_run(run_dir: Path, run_id: str, group: str, project: str, config: dict):
    import wandb

    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(mode="offline", dir=str(run_dir), project=project, group=group, name=run_id,
                      config=config, reinit="finish_previous", settings=wandb.Settings(silent=True))


def shared_train_config(train_cfg, grid: dict) -> dict:
    """The prefix and optimiser settings every job trains with, swept keys left out. Kept in `fixed`, so a
    rerun after e.g. conf/prefix/deep.yaml changed is refused instead of mixing old and new rows."""
    from dataclasses import asdict

    shared = {"prefix": train_cfg.prefix.as_dict(), "optim": asdict(train_cfg.optim)}
    for key in grid:
        *path, leaf = key.split(".")
        node = shared
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return shared


def load_results(path: Path, fixed: dict) -> dict:
    """The results so far (resume), or a new, empty one. Refuses a file made with other fixed settings."""
    return load_frozen_results(path, FORMAT, "fixed", fixed, {"format": FORMAT, "fixed": fixed, "rows": []},
                               "sweep results file", "choose another out=")


# ---------------------------------------------------------------------------- reporting


def _short(key: str) -> str:
    return ".".join(key.split(".")[-2:])


def plot_name(grid: dict[str, list]) -> str:
    """The plot's file name, after its x axis (the first grid key with 2+ values): PLOT for a prefix length,
    else success_vs_<last part of the key>.png, e.g. success_vs_n_demos.png, success_vs_init.png."""
    x_key = next((k for k, values in grid.items() if len(values) > 1), next(iter(grid)))
    return PLOT if x_key.endswith(".length") else f"success_vs_{x_key.split('.')[-1]}.png"


def plot_results(rows: list[dict], grid_keys: list[str], path: Path) -> None:
    """Success rate (Wilson 95% CI error bars) vs the first varied grid key, one line per other grid values."""
    from matplotlib.figure import Figure  # renders with Agg; pyplot's global backend is left alone

    varied = [k for k in grid_keys if len({json.dumps(r["parameters"][k]) for r in rows}) > 1] or grid_keys[:1]
    x_key, series_keys = varied[0], varied[1:]
    xs = []
    for r in rows:  # in grid order
        if r["parameters"][x_key] not in xs:
            xs.append(r["parameters"][x_key])
    groups: dict[str, list[dict]] = {}
    for r in rows:
        label = ", ".join(f"{_short(k)}={r['parameters'][k]}" for k in series_keys) or "success rate"
        groups.setdefault(label, []).append(r)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    offsets = [0.0] if len(groups) == 1 else [0.3 * (i / (len(groups) - 1) - 0.5) for i in range(len(groups))]
    for (label, rs), dx in zip(groups.items(), offsets):
        rs = sorted(rs, key=lambda r: xs.index(r["parameters"][x_key]))
        pos = [xs.index(r["parameters"][x_key]) + dx for r in rs]
        sr = [r["success_rate"] for r in rs]
        err = [[s - r["ci95"][0] for s, r in zip(sr, rs)], [r["ci95"][1] - s for s, r in zip(sr, rs)]]
        ax.errorbar(pos, sr, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(f"{x_key} (prefix positions)" if x_key.endswith("length") else x_key)
    ax.set_ylabel("eval success rate (Wilson 95% CI)")
    ax.set_ylim(-0.02, 1.02)
    n = sorted({r["n_episodes"] for r in rows})
    constant = ", ".join(f"{_short(k)}={rows[0]['parameters'][k]}" for k in grid_keys if k not in varied and rows)
    what = "prefix length" if x_key.endswith(".length") else _short(x_key)
    ax.set_title(f"success vs {what} ({'/'.join(map(str, n))} episodes per point"
                 + (f"; {constant})" if constant else ")"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())


def format_table(rows: list[dict], grid_keys: list[str]) -> str:
    head = "  ".join(f"{_short(k):>16}" for k in grid_keys)
    lines = [f"{head}  {'success':>7}  {'95% CI':<14}  {'trainable':>9}  {'prefix KB':>9}"]
    for r in rows:
        cells = "  ".join(f"{str(r['parameters'].get(k)):>16}" for k in grid_keys)
        lo, hi = r["ci95"]
        lines.append(f"{cells}  {r['success_rate']:>7.3f}  [{lo:.3f}, {hi:.3f}]  {r['trainable_params']:>9}  "
                     f"{r['prefix_bytes'] / 1024:>9.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        print("Sweep settings (anything else is a `python -m vla_prefix.train` override):")
        for f in fields(SweepSettings):
            print(f"  {f.name} = {f.default!r}")
        return
    if argv[0] == "job":
        run_agent_job({k: parse_value(v) for k, v in parse_args(argv[1:]).items()})
    else:
        run_sweep(argv[0], parse_args(argv[1:]))


if __name__ == "__main__":
    main()
