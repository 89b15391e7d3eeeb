r"""The headline experiment: adapt the frozen base to each held-out task with every method, measure it.

    python -m vla_prefix.experiments.heldout --config-dir conf/experiments --config-name tabletop_headline
    python -m vla_prefix.experiments.heldout suite=tabletop                 # the defaults (hours)
    python -m vla_prefix.experiments.heldout suite=tabletop methods=[scratch,full] seeds=[0]   # calibration
    python -m vla_prefix.experiments.heldout suite=tabletop n_demos=[10,50] device=cuda
    python -m vla_prefix.experiments.heldout suite=metaworld n_episodes=50 seeds=[0] \
        forgetting_task=[metaworld-reach-v3,metaworld-push-v3]

For every held-out task, method, training seed and demo count, each method is trained by the one trainer
(`vla_prefix.training.trainer.train`) on the same first `n_demos` demos with the same step budget, once
per lr of its grid (`lr_grid`). The lr with the best success on `val_episodes` rollouts from the `val`
seed range is kept (ties: the lower final BC loss); only that model is evaluated on `n_episodes`
rollouts from the `eval` seed range, the same seeds for every method. `zero-shot` is the base with no
adaptation. Forgetting: success on `forgetting_task` (pretrain tasks) after adaptation; prefix methods
leave the backbone untouched (checked by fingerprint), so theirs is the base's, measured once.

Writes `results` (default results/<suite>/heldout.json: the protocol, every raw record, and a summary
with Wilson 95% CIs, trainable params, stored bytes per task and training time) and its figures
beside it; checkpoints and models go under `out` (default outputs/experiments/<suite>). A record is
appended after every finished cell, so rerunning the same command resumes: finished (task, method,
seed, n_demos, lr) cells are skipped, and an interrupted training continues from its last checkpoint.
A results file made with another protocol (base, data, steps, episodes, ...) is refused. Shards (other
`methods=` or `task=`, own `results=` and `out=`) run side by side and merge with
`python -m vla_prefix.experiments.merge`. Render the README table with
`python -m vla_prefix.experiments.report <results> --readme README.md`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ..errors import ConfigError, cli_errors, closest
from ..utils.atomic import atomic_write_json
from ..utils.hydra_app import check_overrides, quiet_defaults, quiet_hydra, to_dataclass
from ..utils.results_file import load_frozen_results
from .records import Ledger, failure_groups, pooled, rate, summarize

FORMAT = "vla-prefix-heldout/1"
METHODS = ("prefix", "prompt", "lora", "full", "head", "scratch", "zero-shot")
TRAINED = METHODS[:-1]
PREFIX_METHODS = ("prefix", "prompt")  # the backbone stays frozen: forgetting is the base's by construction
FORGETTING_METHODS = ("prefix", "prompt", "lora", "full", "head")  # scratch never saw the pretrain tasks
# set by the experiment itself for every run; train_overrides may not change them
RESERVED = ("mode", "suite", "task", "base", "data.path", "data.n_demos", "optim.steps", "optim.batch_size",
            "optim.lr", "seed", "device", "resume", "out_dir", "threads", "data.num_workers", "logger", "progress")
# the targets, copied into the results file so that the generated README quotes only its numbers
GOALS = {
    "tabletop": {"prefix_min_success": 0.90, "prefix_over_lora_min": 1.0, "prefix_over_full_min": 0.95,
                 "prefix_max_trainable_pct": 1.0},
    "metaworld": {"prefix_min_success": 0.87, "prefix_max_trainable_pct": 1.0},
}
USAGE = "python -m vla_prefix.experiments.heldout suite=<tabletop|metaworld> [key=value ...]"


@dataclass
class HeldoutConfig:
    """Settings of `python -m vla_prefix.experiments.heldout` (every field is a command-line override)."""

    defaults: list[Any] = quiet_defaults()
    hydra: Any = quiet_hydra("vla_prefix.experiments.heldout", __doc__)

    # ---- what is compared
    suite: str = "tabletop"  # tabletop | metaworld (its ML45 test tasks are its `heldout` split)
    task: Any = "heldout"  # held-out task id(s) or split name; a list: task=[a,b]
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds (init, data order)
    n_demos: List[int] = field(default_factory=lambda: [10])  # demos per task; the headline is 10 (also report 50)
    # ---- the protocol (fixed per results file)
    base: Optional[str] = None  # the frozen base VLA; null = checkpoints/<suite>_base
    data: Optional[str] = None  # demos of the held-out tasks; null = data/<suite>_heldout
    collect_demos: bool = True  # collect missing demos into `data` first (resumable; base's image size/cameras)
    action_noise: float = 0.3  # DART noise while collecting, as for the base's pretraining demos
    steps: int = 500  # optimizer steps, every method
    batch_size: int = 64
    lr_grid: Dict[str, List[float]] = field(default_factory=lambda: {
        "prefix": [1e-3, 3e-3, 1e-2], "prompt": [1e-3, 3e-3, 1e-2], "lora": [3e-4, 1e-3, 3e-3],
        "full": [3e-5, 1e-4, 3e-4], "head": [3e-4, 1e-3, 3e-3], "scratch": [1e-4, 3e-4, 1e-3]})
    lr_selection: str = "per_seed"  # per_seed: every seed runs the grid | first_seed: later seeds reuse its lr
    val_episodes: int = 20  # per task and grid lr, `val` seeds
    n_episodes: int = 100  # per task and seed, `eval` seeds (reported)
    n_action_steps: int = 2  # actions executed per predicted chunk
    max_episode_steps: Optional[int] = None  # episode step cap; null = each task's own time limit
    forgetting: bool = True  # measure success on pretrain tasks after adaptation
    forgetting_task: Any = "pretrain"  # pretrain task id(s) or split measured for forgetting
    forgetting_episodes: int = 20  # per forgetting task
    method_overrides: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "prefix": {"prefix": "deep"}, "prompt": {"prefix": "shallow"}})  # train overrides per method
    train_overrides: Dict[str, Any] = field(default_factory=dict)  # `python -m vla_prefix.train` overrides, all methods
    scratch_model: Optional[str] = None  # conf/model/<name> for scratch; null = the base's own architecture
    # ---- execution (does not change results)
    device: str = "cpu"  # cpu | cuda
    threads: Optional[int] = None  # torch threads while training; null = torch's default
    num_workers: int = 2  # training DataLoader workers
    num_envs: int = 2  # evaluation vector-env slots
    collect_workers: int = 2
    results: Optional[str] = None  # null = results/<suite>/heldout.json (figures beside it)
    out: Optional[str] = None  # work folder (checkpoints, models, eval_info); null = outputs/experiments/<suite>
    sweep_results: Optional[str] = None  # a sweep_results.json (vla_prefix.sweep): plot success vs prefix length
    figures: bool = True


ConfigStore.instance().store(name="experiments_heldout", node=HeldoutConfig)


# ---------------------------------------------------------------------------- config


def as_config(cfg: HeldoutConfig | DictConfig | dict) -> HeldoutConfig:
    """A validated HeldoutConfig with its suite defaults filled in."""
    cfg = to_dataclass(cfg, HeldoutConfig, "heldout", ("suite",), USAGE)
    cfg.base = cfg.base or f"checkpoints/{cfg.suite}_base"
    cfg.data = cfg.data or f"data/{cfg.suite}_heldout"
    cfg.results = cfg.results or f"results/{cfg.suite}/heldout.json"
    cfg.out = cfg.out or f"outputs/experiments/{cfg.suite}"
    check_names("method", cfg.methods, METHODS)
    if len(set(cfg.methods)) != len(cfg.methods) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"methods={cfg.methods} and seeds={cfg.seeds} must not repeat an entry")
    if not cfg.seeds or any(s < 0 for s in cfg.seeds):
        raise ConfigError(f"seeds={cfg.seeds}: give at least one seed >= 0, e.g. seeds=[0,1,2]")
    if not cfg.n_demos or any(n < 1 for n in cfg.n_demos) or len(set(cfg.n_demos)) != len(cfg.n_demos):
        raise ConfigError(f"n_demos={cfg.n_demos}: give distinct demo counts >= 1, e.g. n_demos=[10,50]")
    check_names("lr_grid method", list(cfg.lr_grid), TRAINED)
    for method in cfg.methods:
        grid = cfg.lr_grid.get(method) if method in TRAINED else [1.0]
        if not grid or any(lr <= 0 for lr in grid) or len(set(grid)) != len(grid):
            raise ConfigError(f"lr_grid.{method}={grid}: give distinct learning rates > 0, "
                              f"e.g. lr_grid.{method}=[1e-3,3e-3]")
    if cfg.lr_selection not in ("per_seed", "first_seed"):
        raise ConfigError(f"lr_selection={cfg.lr_selection!r}: use per_seed or first_seed")
    for name in ("steps", "batch_size", "val_episodes", "n_episodes", "forgetting_episodes", "n_action_steps",
                 "num_envs", "collect_workers"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: use at least 1")
    check_names("method_overrides method", list(cfg.method_overrides), TRAINED)
    cfg.train_overrides = flatten(cfg.train_overrides)
    cfg.method_overrides = {m: flatten(o) for m, o in cfg.method_overrides.items()}
    clash = sorted(k for k in [*cfg.train_overrides, *(k for o in cfg.method_overrides.values() for k in o)]
                   if k.lstrip("+~") in RESERVED)
    if clash:
        raise ConfigError(f"train override {clash[0]!r} is set by the experiment itself; use its own settings (task, "
                          "base, data, n_demos, steps, batch_size, lr_grid, seeds, device, threads, num_workers)")
    return cfg


def flatten(overrides: dict, prefix: str = "") -> dict:
    """{"optim": {"warmup_steps": 5}} -> {"optim.warmup_steps": 5}: train overrides as dotted keys."""
    flat = {}
    for k, v in overrides.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def check_names(what: str, names: list[str], valid: tuple[str, ...]) -> None:
    for name in names:
        if name not in valid:
            hint = closest(name, valid)
            raise ConfigError(f"unknown {what} {name!r}" + (f"; did you mean {hint[0]}?" if hint else "")
                              + f" (choose from {', '.join(valid)})")


def _task_ids(suite: str, names: Any, split: str, setting: str) -> list[str]:
    from ..sim.registry import resolve_tasks

    text = ",".join(map(str, names)) if isinstance(names, (list, tuple)) else str(names)
    tasks = resolve_tasks(suite, text)
    wrong = [t.id for t in tasks if t.split != split]
    if wrong:
        raise ConfigError(f"{setting}={text!r} includes {wrong}, which are not {split} tasks of {suite}; "
                          f"use the `{split}` split or some of its tasks (python -m vla_prefix.tasks --suite {suite})")
    return [t.id for t in tasks]


def protocol(cfg: HeldoutConfig, base_fingerprint: str, forgetting_ids: list[str]) -> dict:
    """The settings every record of one results file shares (anything that changes a cell's numbers)."""
    return {
        "suite": cfg.suite, "base": cfg.base, "base_fingerprint": base_fingerprint, "data": cfg.data,
        "action_noise": cfg.action_noise, "steps": cfg.steps, "batch_size": cfg.batch_size,
        "val_episodes": cfg.val_episodes, "n_episodes": cfg.n_episodes, "n_action_steps": cfg.n_action_steps,
        "max_episode_steps": cfg.max_episode_steps, "forgetting_task": forgetting_ids,
        "forgetting_episodes": cfg.forgetting_episodes, "method_overrides": cfg.method_overrides,
        "train_overrides": cfg.train_overrides, "scratch_model": cfg.scratch_model,
        "prefix_configs": prefix_configs(cfg), "seed_ranges": {"select": "val", "report": "eval"},
    }


def prefix_configs(cfg: HeldoutConfig) -> dict:
    """Each prefix method's composed prefix config (conf/prefix/*.yaml as it is now): an edited
    config file must not resume onto cells trained with the old one. Always both prefix methods, so
    that a run of some methods (a calibration without them) and a later run of the rest share one file."""
    from ..sweep import hydra_value
    from ..training.config import compose_train_config

    return {method: compose_train_config({k: hydra_value(v) for k, v in {
        **cfg.train_overrides, **cfg.method_overrides.get(method, {}), "data.path": "unused"}.items()}).prefix.as_dict()
        for method in PREFIX_METHODS}


def widen_config(recorded: dict, added: dict, source: str) -> dict:
    """The results file's config widened by `added` (a run's or a shard's): the union of tasks, methods, seeds,
    demo counts and lr grids, so a run of a few cells keeps every earlier cell in the summary and report.
    Both must agree on lr selection and forgetting."""
    for setting in ("lr_selection", "forgetting"):
        if recorded[setting] != added[setting]:
            raise ConfigError(f"{source} has {setting}={added[setting]!r}, the results file {recorded[setting]!r}; "
                              f"use the same {setting}, or another results file")
    grids = {m: _union(recorded["lr_grid"].get(m, []), added["lr_grid"].get(m, []))
             for m in METHODS if m in recorded["lr_grid"] or m in added["lr_grid"]}
    return {"tasks": _union(recorded["tasks"], added["tasks"]),
            "methods": [m for m in METHODS if m in recorded["methods"] or m in added["methods"]],
            "seeds": sorted(set(recorded["seeds"]) | set(added["seeds"])),
            "n_demos": sorted(set(recorded["n_demos"]) | set(added["n_demos"])),
            "lr_grid": grids, "lr_selection": recorded["lr_selection"], "forgetting": recorded["forgetting"]}


def _union(a: list, b: list) -> list:
    """a, then b's items not in a (first-seen order)."""
    return a + [x for x in b if x not in a]


def load_results(path: Path, proto: dict) -> dict:
    """The results so far (resume), or a new file's skeleton. Refuses a file made with another protocol."""
    empty = {"format": FORMAT, "protocol": proto, "runs": [], "records": []}
    return load_frozen_results(path, FORMAT, "protocol", proto, empty, "held-out results file",
                               "pass results=<new file> and out=<new folder>")


# ---------------------------------------------------------------------------- one experiment


class Experiment:
    """Runs the cells of one results file, appending a record (and rewriting the file) after each."""

    def __init__(self, cfg: HeldoutConfig, results: dict, path: Path):
        self.cfg, self.results, self.path = cfg, results, path
        self.ledger = Ledger(results["records"])
        self.out = Path(cfg.out)
        self.cameras = None
        self.ran = 0  # cells run (not skipped) by this call

    def add(self, record: dict) -> dict:
        record = self.ledger.add({**record, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.save()
        self.ran += 1
        return record

    def save(self) -> None:
        self.results["summary"] = summarize(self.results)  # always current: an interrupted run can be reported
        atomic_write_json(self.path, self.results)

    # ---- evaluation
    def evaluate(self, backbone: str, prefix: Optional[str], tasks: list[str], seed_range: str, n: int,
                 out: Path, cameras=None) -> dict:
        from ..evaluate import evaluate

        return evaluate({
            "backbone": backbone, "prefix": prefix, "suite": self.cfg.suite, "task": tasks,
            "device": self.cfg.device, "n_episodes": n, "seed_range": seed_range,
            "n_action_steps": self.cfg.n_action_steps, "max_steps": self.cfg.max_episode_steps,
            "num_envs": self.cfg.num_envs, "cameras": cameras, "video_episodes": 0, "out": str(out),
            "progress": False})

    # ---- training
    def train_config(self, task: str, method: str, seed: int, n: int, lr: float):
        from ..sweep import hydra_value
        from ..training.config import compose_train_config

        cfg = self.cfg
        overrides = {**cfg.train_overrides, **cfg.method_overrides.get(method, {}),
                     "mode": method, "suite": cfg.suite, "task": task, "base": cfg.base, "data.path": cfg.data,
                     "data.n_demos": n, "optim.steps": cfg.steps, "optim.batch_size": cfg.batch_size,
                     "optim.lr": lr, "seed": seed, "device": cfg.device, "threads": cfg.threads,
                     "data.num_workers": cfg.num_workers, "logger": "none", "progress": False, "resume": True}
        if method == "scratch" and cfg.scratch_model:
            overrides["model"] = cfg.scratch_model
        train_cfg = compose_train_config({k: hydra_value(v) for k, v in overrides.items()})
        if method == "scratch" and not cfg.scratch_model:
            train_cfg.model = base_architecture(cfg.base)
        return train_cfg

    def training(self, task: str, method: str, seed: int, n: int, lr: float) -> tuple[Path, dict, bool]:
        """(run dir, train summary, resumed) of one grid lr's training under `out`, run here unless its
        model is already there (trained before its record was written, an interruption in between)."""
        from ..training.checkpoint import checkpoint_dir

        run_dir = self.out / task / method / f"demos{n}" / f"seed{seed}" / f"lr{lr:g}"
        done = run_dir / "train_summary.json"
        if done.exists():
            summary = json.loads(done.read_text())
            if Path(artifact_of(method, task, summary)).exists():
                return run_dir, summary, False
            done.unlink()  # its model was deleted: train it again
        resumed = checkpoint_dir(run_dir).exists()
        from ..training import trainer

        return run_dir, trainer.train(self.train_config(task, method, seed, n, lr), run_dir), resumed

    def train_cell(self, task: str, method: str, seed: int, n: int, lr: float, validate: bool) -> dict:
        run_dir, summary, resumed = self.training(task, method, seed, n, lr)
        artifact = artifact_of(method, task, summary)
        stored = summary["outputs"]["lora_adapter"] if method == "lora" else artifact
        val = self.val_score(task, method, run_dir, artifact) if validate else None
        return self.add({
            "stage": "train", "task": task, "method": method, "seed": seed, "n_demos": n, "lr": lr,
            "run_dir": str(run_dir), "artifact": artifact, "stored_bytes": disk_bytes(stored),
            "trainable_params": summary["trainable_params"], "trainable_pct": summary["trainable_pct"],
            "total_params": summary["total_params"], "final_loss": summary["final_loss"],
            "train_wall_s": summary["wall_s"], "train_wall_s_partial": wall_s_partial_of(summary), "resumed": resumed,
            "val": val, "val_best": kept_checkpoint(summary)})

    def val_score(self, task: str, method: str, run_dir: Path, artifact: str) -> dict:
        """The trained model's success on `val_episodes` of the `val` seeds (choosing among grid lrs)."""
        info = self.evaluate(*self.policy(method, artifact), [task], "val", self.cfg.val_episodes,
                             run_dir / "val", self.cameras)
        return rate(info["tasks"][task])

    def policy(self, method: str, artifact: str) -> tuple[str, Optional[str]]:
        """(backbone dir, prefix file or None) that `evaluate` loads for a trained artifact."""
        return (self.cfg.base, artifact) if method in PREFIX_METHODS else (artifact, None)

    # ---- the cells of one (task, method, seed, n_demos)
    def cell(self, task: str, method: str, seed: int, n: int, forgetting_ids: list[str]) -> None:
        config = self.results["config"]
        grid = self.ledger.grid_for(config, task, method, seed, n)
        for lr in grid:
            trained = self.ledger.get("train", task, method, seed, n, lr)
            if trained is None:
                self.log(f"train {method} lr={lr:g}", task, seed, n)
                self.train_cell(task, method, seed, n, lr, validate=len(grid) > 1)
            elif len(grid) > 1 and trained["val"] is None:  # trained when its grid had one lr: score it now
                self.log(f"val {method} lr={lr:g} (trained when its grid had one lr)", task, seed, n)
                run_dir, summary, _ = self.training(task, method, seed, n, lr)  # its model (again, if gone)
                trained["val"] = self.val_score(task, method, run_dir, artifact_of(method, task, summary))
                self.save()
                self.ran += 1
        lr = self.ledger.chosen_lr(config, task, method, seed, n)
        trained = self.ledger.get("train", task, method, seed, n, lr)
        needs_eval = self.ledger.get("eval", task, method, seed, n, lr) is None
        needs_forgetting = bool(forgetting_ids) and method in FORGETTING_METHODS and \
            self.ledger.get("forgetting", task, method, seed, n, lr) is None
        if (needs_eval or (needs_forgetting and method not in PREFIX_METHODS)) and \
                not Path(trained["artifact"]).exists():  # recorded on another machine, or `out` was deleted
            self.log(f"retrain {method} lr={lr:g} (its model {trained['artifact']} is gone; same seed)", task, seed, n)
            run_dir, summary, _ = self.training(task, method, seed, n, lr)
            trained = {**trained, "run_dir": str(run_dir), "artifact": artifact_of(method, task, summary)}
        if needs_eval:
            self.log(f"eval {method} lr={lr:g}", task, seed, n)
            info = self.evaluate(*self.policy(method, trained["artifact"]), [task], "eval", self.cfg.n_episodes,
                                 Path(trained["run_dir"]) / "eval", self.cameras)
            self.add({"stage": "eval", "task": task, "method": method, "seed": seed, "n_demos": n, "lr": lr,
                      **_eval_fields(info, task), "eval_info": str(Path(trained["run_dir"]) / "eval" / "eval_info.json")})
        if needs_forgetting:
            self.forgetting(task, method, seed, n, lr, trained, forgetting_ids)

    def forgetting(self, task, method, seed, n, lr, trained: dict, forgetting_ids: list[str]) -> None:
        base = self.ledger.get("forgetting", None, "base", None, None, None)
        proto_fp = self.results["protocol"]["base_fingerprint"]
        if method in PREFIX_METHODS:  # the backbone under the prefix is the base: check it, reuse its measure
            fp = self.ledger.get("eval", task, method, seed, n, lr)["backbone_fingerprint"]
            rates = {k: base[k] for k in ("tasks", "success_rate", "ci95", "n_episodes", "n_successes")}
            measured = False
        else:
            self.log(f"forgetting {method} lr={lr:g}", task, seed, n)
            info = self.evaluate(trained["artifact"], None, forgetting_ids, "eval", self.cfg.forgetting_episodes,
                                 Path(trained["run_dir"]) / "forgetting")
            fp, measured = info["settings"]["backbone_fingerprint"], True
            rates = forgetting_rates(info)
        self.add({"stage": "forgetting", "task": task, "method": method, "seed": seed, "n_demos": n, "lr": lr,
                  **rates, "backbone_fingerprint": fp, "measured": measured, "identical_to_base": fp == proto_fp})

    def base_cells(self, tasks: list[str], forgetting_ids: list[str]) -> None:
        """The zero-shot base on each held-out task, and the base on the forgetting tasks (once each)."""
        if forgetting_ids and self.ledger.get("forgetting", None, "base", None, None, None) is None:
            self.log("forgetting base", None, None, None)
            info = self.evaluate(self.cfg.base, None, forgetting_ids, "eval", self.cfg.forgetting_episodes,
                                 self.out / "base" / "forgetting")
            fp = info["settings"]["backbone_fingerprint"]
            self.add({"stage": "forgetting", "task": None, "method": "base", "seed": None, "n_demos": None,
                      "lr": None, **forgetting_rates(info), "backbone_fingerprint": fp, "measured": True,
                      "identical_to_base": fp == self.results["protocol"]["base_fingerprint"]})
        if "zero-shot" not in self.cfg.methods:
            return
        for task in tasks:
            if self.ledger.get("eval", task, "zero-shot", None, None, None) is None:
                self.log("eval zero-shot", task, None, None)
                out = self.out / task / "zero-shot" / "eval"
                info = self.evaluate(self.cfg.base, None, [task], "eval", self.cfg.n_episodes, out, self.cameras)
                self.add({"stage": "eval", "task": task, "method": "zero-shot", "seed": None, "n_demos": None,
                          "lr": None, **_eval_fields(info, task), "eval_info": str(out / "eval_info.json")})

    def log(self, what: str, task, seed, n) -> None:
        where = ", ".join(f"{k}={v}" for k, v in (("task", task), ("seed", seed), ("n_demos", n)) if v is not None)
        print(f"[heldout] {what}" + (f" ({where})" if where else ""), flush=True)


def _eval_fields(info: dict, task: str) -> dict:
    """An eval record's measures: success (Wilson CI), what the failed episodes went for, backbone, time."""
    return {**rate(info["tasks"][task]), "failures": failure_groups(info["tasks"][task]["episodes"]),
            "backbone_fingerprint": info["settings"]["backbone_fingerprint"], "eval_wall_s": round(info["wall_s"], 2)}


def forgetting_rates(info: dict) -> dict:
    """Per forgetting task and pooled (the tasks have equal episode counts, so pooled = mean of tasks)."""
    tasks = {t: rate(r) for t, r in info["tasks"].items()}
    return {"tasks": tasks, **pooled((r["n_successes"], r["n_episodes"]) for r in tasks.values())}


def artifact_of(method: str, task: str, train_summary: dict) -> str:
    """What a training made for `task`: its prefix file (prefix methods) or its model folder."""
    outputs = train_summary["outputs"]
    return outputs["prefixes"][task] if method in PREFIX_METHODS else outputs["model"]


def kept_checkpoint(train_summary: dict) -> Optional[dict]:
    """{score, step} of the checkpoint the trainer's val selection kept; None when it selected none."""
    best = train_summary.get("val_best") or {}
    return best if best.get("step") is not None else None


def wall_s_partial_of(train_summary: dict) -> bool:
    """Whether the trainer's `wall_s` misses an untimed part (summaries from before it timed resumed parts
    have no `wall_s_partial`: there any resume left the earlier parts out)."""
    return train_summary.get("wall_s_partial", len(train_summary.get("history", [])) > 1)


def disk_bytes(path: str | Path) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def base_architecture(base: str) -> dict:
    """The conf/model config the base was pretrained with (its training.json), for `scratch`."""
    provenance = Path(base, "training.json")
    try:
        return json.loads(provenance.read_text())["config"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{provenance} does not record the base's model config; name one for scratch with "
                          "scratch_model=<conf/model name>, e.g. scratch_model=default") from None


def base_observation(base: str) -> dict:
    """The image size and cameras the base was trained on (collect settings)."""
    recipe = json.loads(Path(base, "config.json").read_text())
    return {"image_size": int(recipe["vision"]["img_size"]), "cameras": recipe["config"].get("cameras")}


def prepare_data(cfg: HeldoutConfig, tasks: list[str]) -> list[str] | None:
    """Collect missing demos (if asked), check every task has max(n_demos); -> the dataset's cameras."""
    from ..data.dataset import DemoDataset

    need = max(cfg.n_demos)
    if cfg.collect_demos:
        from ..collect import collect

        print(f"[heldout] demos: {need} per task of {len(tasks)} task(s) -> {cfg.data}", flush=True)
        collect({"suite": cfg.suite, "task": tasks, "n_demos": need, "out": cfg.data,
                 "action_noise": cfg.action_noise, **base_observation(cfg.base),
                 "workers": cfg.collect_workers, "progress": False})
    if not Path(cfg.data).is_dir():
        raise ConfigError(f"data={cfg.data!r} is not a demo dataset; set collect_demos=true, or collect one with `python "
                          f"-m vla_prefix.collect suite={cfg.suite} task=heldout n_demos={need} out={cfg.data}`")
    ds = DemoDataset(cfg.data)
    short = {t: len(ds.select([t])) for t in tasks if t not in ds.tasks() or len(ds.select([t])) < need}
    if short:
        raise ConfigError(f"{cfg.data} has fewer than {need} demos of {short}; set collect_demos=true or "
                          f"lower n_demos")
    return ds.cameras


# ---------------------------------------------------------------------------- the run


def run(cfg: HeldoutConfig | DictConfig | dict, command: Optional[str] = None) -> dict:
    """Run (or resume) the experiment; -> the results dict written to `cfg.results`. See the module doc.

    `command`: the command line that started it (recorded with the run's settings); None from Python.
    """
    from ..models.vla import VLA, weights_file
    from ..sim.render import check_gl

    t0 = time.perf_counter()
    cfg = as_config(cfg)
    tasks = _task_ids(cfg.suite, cfg.task, "heldout", "task")
    forgetting_ids = _task_ids(cfg.suite, cfg.forgetting_task, "pretrain", "forgetting_task")
    if not weights_file(cfg.base):
        raise ConfigError(f"base={cfg.base!r} is not a base VLA folder; pretrain one with `python -m vla_prefix.train "
                          f"mode=pretrain suite={cfg.suite} data.path=<pretrain demos> out_dir=<dir>` and pass "
                          "base=<dir>/base")
    check_gl()
    path = Path(cfg.results)
    results = load_results(path, protocol(cfg, VLA.from_pretrained(cfg.base).fingerprint(), forgetting_ids))
    asked = {"tasks": tasks, "methods": cfg.methods, "seeds": cfg.seeds, "n_demos": cfg.n_demos,
             "lr_grid": {m: cfg.lr_grid[m] for m in cfg.methods if m in TRAINED},
             "lr_selection": cfg.lr_selection, "forgetting": cfg.forgetting}
    results["config"] = asked if "config" not in results else widen_config(results["config"], asked, "this run")
    results["goals"] = GOALS.get(cfg.suite, {})
    results["runs"].append({"command": command,
                            "settings": {k: v for k, v in asdict(cfg).items() if k not in ("defaults", "hydra")},
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    results["summary"] = summarize(results)
    atomic_write_json(path, results)

    exp = Experiment(cfg, results, path)
    if any(m in TRAINED for m in cfg.methods):
        exp.cameras = prepare_data(cfg, tasks)  # the views the demos (and so the adapted models) were made with
    used_forgetting = forgetting_ids if cfg.forgetting else []
    exp.base_cells(tasks, used_forgetting)
    for n in cfg.n_demos:
        for task in tasks:
            for method in (m for m in cfg.methods if m in TRAINED):
                for seed in cfg.seeds:
                    exp.cell(task, method, seed, n, used_forgetting)

    results["summary"] = summarize(results)
    results["runs"][-1].update({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "cells_run": exp.ran,
                                "wall_s": round(time.perf_counter() - t0, 1)})
    results["figures"] = []
    if cfg.figures:
        from .figures import write_figures

        results["figures"] = write_figures(results, path.parent, cfg.sweep_results)
    atomic_write_json(path, results)
    from .report import render

    print(render(results, path))
    print(f"[heldout] {exp.ran} cell(s) run, {len(results['records']) - exp.ran} already done -> {path}")
    return results


@hydra.main(config_path=None, config_name="experiments_heldout", version_base=None)
@cli_errors
def _hydra_main(cfg: DictConfig) -> None:
    import logging

    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    run(cfg, command=" ".join(["python -m vla_prefix.experiments.heldout", *sys.argv[1:]]))


@cli_errors
def main() -> None:
    check_overrides(sys.argv[1:], HeldoutConfig)
    _hydra_main()


if __name__ == "__main__":
    main()
