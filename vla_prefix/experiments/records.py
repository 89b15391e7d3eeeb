"""The held-out experiment's records and the summary derived from them (pure functions over dicts).

`heldout.json` holds `records`, appended one per finished cell:

    {"stage": "train", task, method, seed, n_demos, lr, run_dir, artifact, stored_bytes, trainable_params,
     trainable_pct, total_params, final_loss, train_wall_s, train_wall_s_partial, resumed, val: {success_rate,
     ci95, n_episodes, n_successes} | null, val_best: {score, step} | null}   # one per grid lr; val is null
                                               # when the grid has one lr (filled in if the grid widens
                                               # later), val_best when the trainer selects no checkpoint;
                                               # train_wall_s sums every part of a resumed training, and is
                                               # partial (left out of the time per run) where one is untimed
    {"stage": "eval", task, method, seed, n_demos, lr, success_rate, ci95, n_episodes, n_successes,
     failures: {what the gripper went for: episodes} | null, backbone_fingerprint, eval_info,
     eval_wall_s}                                            # the chosen lr, on the `eval` seeds
    {"stage": "forgetting", task, method, seed, n_demos, lr, tasks: {id: {success_rate, ci95, n_episodes,
     n_successes}}, success_rate, ci95, n_episodes, n_successes, backbone_fingerprint, measured,
     identical_to_base}                                     # success on pretrain tasks after adaptation

`zero-shot` (the base) has seed, n_demos and lr null: nothing is trained, so one evaluation serves every
seed and demo count; the base's own forgetting record (method `base`) is the reference for the others.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Optional

from ..evaluation.stats import wilson_interval

STAGES = ("train", "eval", "forgetting")
KEY_FIELDS = ("stage", "task", "method", "seed", "n_demos", "lr")


def key(stage: str, task: Optional[str], method: str, seed: Optional[int], n_demos: Optional[int],
        lr: Optional[float]) -> tuple:
    """The identity of one cell: a record with this key is finished and is never run again."""
    return (stage, task, method, seed, n_demos, None if lr is None else float(lr))


def record_key(record: dict) -> tuple:
    return key(*(record.get(f) for f in KEY_FIELDS))


def pooled(counts: Iterable[tuple[int, int]]) -> dict:
    """{success_rate, ci95 (Wilson 95%), n_episodes, n_successes} of (successes, episodes) pairs pooled."""
    k = n = 0
    for s, e in counts:
        k, n = k + s, n + e
    if n == 0:
        return {"success_rate": None, "ci95": None, "n_episodes": 0, "n_successes": 0}
    return {"success_rate": k / n, "ci95": list(wilson_interval(k, n)), "n_episodes": n, "n_successes": k}


def choose_lr(grid: list[float], train_records: dict[float, dict]) -> Optional[float]:
    """The lr with the best val success (ties: the lower final BC loss, then the earlier grid entry).

    `train_records` maps lr -> its train record. A one-value grid needs no validation. None while a grid
    lr has no finished train record with a val score.
    """
    if len(grid) == 1:
        return float(grid[0])
    ranked = []
    for i, lr in enumerate(grid):
        rec = train_records.get(float(lr))
        if rec is None or rec.get("val") is None:
            return None
        loss = rec.get("final_loss")
        loss = math.inf if loss is None or not math.isfinite(loss) else loss
        ranked.append((-rec["val"]["success_rate"], loss, i, float(lr)))
    return min(ranked)[3]


def failure_groups(episodes: list[dict]) -> Optional[dict]:
    """Failed episodes by what the gripper went for ("target" or another named object, "distractor",
    "none"), from eval_info episodes; None when the env does not report `engaged_object`."""
    if not any("engaged_object" in e for e in episodes):
        return None
    labels = [e.get("engaged_object", "none") for e in episodes if not e["success"]]
    return dict(Counter("distractor" if x.startswith("distractor") else x for x in labels).most_common())


def pooled_failures(evals: Iterable[dict]) -> Optional[dict]:
    """The eval records' `failures` summed; None when any of them lacks it."""
    total: Counter = Counter()
    for ev in evals:
        if ev.get("failures") is None:
            return None
        total.update(ev["failures"])
    return dict(total.most_common())


class Ledger:
    """The records of one results file, indexed by key (see the module doc)."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.index = {record_key(r): r for r in records}

    def get(self, *k) -> Optional[dict]:
        return self.index.get(key(*k))

    def add(self, record: dict) -> dict:
        self.records.append(record)
        self.index[record_key(record)] = record
        return record

    def chosen_lr(self, config: dict, task: str, method: str, seed: int, n_demos: int) -> Optional[float]:
        """The lr this (task, method, seed, n_demos) uses, per `config["lr_selection"]`."""
        grid = [float(x) for x in config["lr_grid"][method]]
        if config.get("lr_selection") == "first_seed" and seed != config["seeds"][0]:
            return self.chosen_lr(config, task, method, config["seeds"][0], n_demos)
        runs = {lr: self.get("train", task, method, seed, n_demos, lr) for lr in grid}
        return choose_lr(grid, {lr: r for lr, r in runs.items() if r is not None})

    def grid_for(self, config: dict, task: str, method: str, seed: int, n_demos: int) -> list[float]:
        """The lrs to train for this cell: the whole grid, or (first_seed, later seeds) the first seed's choice."""
        if config.get("lr_selection") == "first_seed" and seed != config["seeds"][0]:
            lr = self.chosen_lr(config, task, method, config["seeds"][0], n_demos)
            return [] if lr is None else [lr]
        return [float(x) for x in config["lr_grid"][method]]


# ---------------------------------------------------------------------------- the summary


def _mean(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> Optional[float]:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def rate(r: dict) -> dict:
    """The success fields of an eval or record: {success_rate, ci95, n_episodes, n_successes}."""
    return {k: r[k] for k in ("success_rate", "ci95", "n_episodes", "n_successes")}


def summarize(results: dict) -> dict:
    """Per n_demos and method: success per task (pooled over seeds) and overall, with Wilson 95% CIs,
    the seed spread, trainable params, stored bytes, training time, chosen lrs, val scores and forgetting.

    Only records of the current config's tasks, seeds and chosen lrs count; `complete` says whether
    every (task, seed) cell has its eval record.
    """
    config, ledger = results["config"], Ledger(results["records"])
    tasks, seeds = config["tasks"], config["seeds"]
    base = ledger.get("forgetting", None, "base", None, None, None)
    out: dict[str, Any] = {"base_forgetting": None if base is None else rate(base), "n_demos": {}}
    for n in config["n_demos"]:
        methods = {}
        for method in config["methods"]:
            methods[method] = (_zero_shot(ledger, tasks, base) if method == "zero-shot"
                               else _trained(ledger, config, method, tasks, seeds, n, base))
        out["n_demos"][str(n)] = methods
    out["goals"] = {str(n): goal_checks(out, results.get("goals", {}), n) for n in config["n_demos"]}
    return out


def _zero_shot(ledger: Ledger, tasks: list[str], base: Optional[dict]) -> dict:
    cells = {t: ledger.get("eval", t, "zero-shot", None, None, None) for t in tasks}
    per_task = {t: {**rate(r), "seeds": None, "seed_std": None} for t, r in cells.items() if r is not None}
    return {
        "tasks": per_task,
        "mean": {**pooled((r["n_successes"], r["n_episodes"]) for r in cells.values() if r), "seed_std": None,
                 "n_cells": len(per_task), "n_cells_expected": len(tasks)},
        "failures": pooled_failures(r for r in cells.values() if r) if per_task else None,
        "complete": len(per_task) == len(tasks),
        "trainable_params": 0, "trainable_pct": 0.0, "stored_bytes": 0, "train_wall_s": 0.0,
        "tuning_wall_s": 0.0, "lr": None, "kept_steps": [], "val": None,
        "forgetting": None if base is None else {**rate(base), "delta_vs_base": 0.0, "measured": True,
                                                  "identical_to_base": True},
    }


def _trained(ledger: Ledger, config: dict, method: str, tasks: list[str], seeds: list[int], n: int,
             base: Optional[dict]) -> dict:
    per_task, chosen_train, all_train, lrs, vals, forgets = {}, [], [], {}, {}, []
    seed_means: dict[int, list[float]] = {s: [] for s in seeds}
    for t in tasks:
        cells = []
        for s in seeds:
            for lr in config["lr_grid"][method]:
                rec = ledger.get("train", t, method, s, n, lr)
                if rec is not None:
                    all_train.append(rec)
                    if rec.get("val") is not None:
                        vals.setdefault(t, {}).setdefault(str(s), {})[repr(float(lr))] = rec["val"]["success_rate"]
            lr = ledger.chosen_lr(config, t, method, s, n)
            lrs.setdefault(t, {})[str(s)] = lr
            if lr is None:
                continue
            if (rec := ledger.get("train", t, method, s, n, lr)) is not None:
                chosen_train.append(rec)
            if (ev := ledger.get("eval", t, method, s, n, lr)) is not None:
                cells.append((s, ev))
                seed_means[s].append(ev["success_rate"])
            if (fg := ledger.get("forgetting", t, method, s, n, lr)) is not None:
                forgets.append(fg)
        if cells:
            per_task[t] = {**pooled((ev["n_successes"], ev["n_episodes"]) for _, ev in cells),
                           "seeds": [{"seed": s, "lr": ev["lr"], **rate(ev), "failures": ev.get("failures")}
                                     for s, ev in cells],
                           "seed_std": _std([ev["success_rate"] for _, ev in cells])}
    n_cells = sum(len(v["seeds"]) for v in per_task.values())
    every_task = [sum(v) / len(v) for v in seed_means.values() if len(v) == len(tasks)]
    mean = {**pooled((c["n_successes"], c["n_episodes"]) for v in per_task.values() for c in v["seeds"]),
            "seed_std": _std(every_task), "n_cells": n_cells, "n_cells_expected": len(tasks) * len(seeds)}
    forgetting = None
    if forgets:
        # distinct measurements only: a prefix method's unmeasured records reuse the base's, which counts once
        measured = [f for f in forgets if f["measured"]]
        reused = [base] if base is not None and len(measured) < len(forgets) else []
        after = pooled((f["n_successes"], f["n_episodes"]) for f in measured + reused)
        forgetting = {**after, "n_models": len(forgets),
                      "delta_vs_base": None if base is None or after["success_rate"] is None
                      else after["success_rate"] - base["success_rate"],
                      "measured": len(measured) == len(forgets),
                      "identical_to_base": all(f["identical_to_base"] for f in forgets)}
    return {
        "tasks": per_task,
        "mean": mean,
        "failures": pooled_failures(c for v in per_task.values() for c in v["seeds"]) if per_task else None,
        "complete": n_cells == len(tasks) * len(seeds),
        "trainable_params": _int(_mean([r["trainable_params"] for r in chosen_train])),
        "trainable_pct": _mean([r["trainable_pct"] for r in chosen_train]),
        "stored_bytes": _int(_mean([r["stored_bytes"] for r in chosen_train])),
        "train_wall_s": _mean([r["train_wall_s"] for r in chosen_train if not wall_s_partial(r)]),  # per run
        "tuning_wall_s": sum(r["train_wall_s"] for r in all_train),  # every grid run together (a lower bound
        # where a run's earlier part is untimed)
        "lr": lrs,
        "kept_steps": sorted({r["val_best"]["step"] for r in chosen_train if r.get("val_best")}),
        "val": vals or None,
        "forgetting": forgetting,
    }


def wall_s_partial(train_record: dict) -> bool:
    """Whether a train record's seconds miss an untimed earlier part (a resume from a checkpoint written before
    the trainer timed its parts; such records were written without `train_wall_s_partial`, with `resumed`)."""
    return train_record.get("train_wall_s_partial", train_record.get("resumed", False))


def _int(x: Optional[float]) -> Optional[int]:
    return None if x is None else int(round(x))


def complete_mean(method_summary: Optional[dict]) -> Optional[dict]:
    """A method summary's mean over tasks, or None while some (task, seed) cell is missing: a partial mean
    averages fewer tasks than its neighbours, so it is comparable with nothing (tables, figures, goals)."""
    if method_summary is None or not method_summary["complete"]:
        return None
    mean = method_summary["mean"]
    return None if mean["success_rate"] is None else mean


def goal_checks(summary: dict, goals: dict, n_demos: int) -> list[dict]:
    """The issue's targets against the `prefix` method's summary at `n_demos` (empty until prefix is complete).

    Only complete means count (`complete_mean`). Each check: {goal, target, measured, met}; `measured` is
    a success rate, a ratio of two, or a percentage.
    """
    methods = summary["n_demos"].get(str(n_demos), {})
    prefix_mean = complete_mean(methods.get("prefix"))
    if prefix_mean is None:
        return []
    prefix, p = methods["prefix"], prefix_mean["success_rate"]
    checks = []
    if "prefix_min_success" in goals:
        checks.append({"goal": "prefix mean success >= target", "target": goals["prefix_min_success"],
                       "measured": p, "met": p >= goals["prefix_min_success"]})
    for name, other in (("prefix_over_lora_min", "lora"), ("prefix_over_full_min", "full")):
        other_mean = complete_mean(methods.get(other))
        if name in goals and other_mean is not None:
            q = other_mean["success_rate"]
            checks.append({"goal": f"prefix / {other} mean success >= target", "target": goals[name],
                           "measured": p / q if q > 0 else None, "met": p >= goals[name] * q})
    pct, most = prefix["trainable_pct"], goals.get("prefix_max_trainable_pct")
    if most is not None and pct is not None:
        checks.append({"goal": "prefix trainable % of backbone <= target", "target": most, "measured": pct,
                       "met": pct <= most})
    return checks
