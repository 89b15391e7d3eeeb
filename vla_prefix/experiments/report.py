r"""Render a held-out results file or a sweep's results as markdown, and put it into the README between markers.

    python -m vla_prefix.experiments.report results/tabletop/heldout.json                    # print it
    python -m vla_prefix.experiments.report results/tabletop/heldout.json --readme README.md
    python -m vla_prefix.experiments.report results/tabletop/ablations/variant/sweep_results.json --readme README.md

With --readme, the block between `<!-- results:<key>:start -->` and `<!-- results:<key>:end -->` is
replaced (key: the suite of a held-out file named heldout.json, `<suite>:<file stem>` of any other, e.g.
`metaworld:single_lr` for a calibration, `sweep:<sweep file name>` of a sweep's, e.g.
`sweep:ablation_variant`); if the README has no such markers, the block is printed instead (the README is
left alone). Every number in the block is one of the results file's (rounded): the block is generated,
never edited.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, cli_errors
from ..utils.atomic import atomic_write_bytes
from .records import complete_mean


def _rate(r: Optional[dict]) -> str:
    if r is None or r.get("success_rate") is None:
        return "–"
    lo, hi = r["ci95"]
    return f"{r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _task_rate(r: Optional[dict], n_seeds: int) -> str:
    """A per-task cell; one pooled over fewer seeds than the config's says how many it has."""
    seeds = (r or {}).get("seeds")
    return _rate(r) + (f" ({len(seeds)}/{n_seeds} seeds)" if seeds is not None and len(seeds) < n_seeds else "")


def _bytes(n: Optional[int]) -> str:
    if n is None:
        return "–"
    for unit, size in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _lr(lrs: Optional[dict]) -> str:
    if not lrs:
        return "–"
    values = sorted({lr for per_seed in lrs.values() for lr in per_seed.values() if lr is not None})
    return ", ".join(f"{lr:g}" for lr in values) or "–"


def _forgetting(f: Optional[dict]) -> str:
    if f is None:
        return "–"
    text = _rate(f)
    if not f["measured"]:
        return text + (" (the base: same backbone)" if f["identical_to_base"] else " (backbone CHANGED)")
    return text + (f", Δ {f['delta_vs_base']:+.2f}" if f.get("delta_vs_base") is not None else "")


def _mean(m: dict) -> str:
    """The mean over tasks, only when every (task, seed) cell is in: a partial mean averages fewer tasks than
    the other columns, so it is not comparable with them (the per-task tables show what is in)."""
    mean = m["mean"]
    if complete_mean(m) is not None or mean["n_cells"] == 0:
        return _rate(mean)
    return f"partial ({mean['n_cells']}/{mean['n_cells_expected']} cells; per task below)"


def _failures_table(per_method: dict, methods: list[str], n_demos: str) -> list[str]:
    """Markdown lines: each method's failed eval episodes by what the gripper went for (none if unrecorded)."""
    failures = {m: per_method[m].get("failures") for m in methods if per_method[m].get("failures") is not None}
    labels = sorted({x for f in failures.values() for x in f},
                    key=lambda x: (x == "none", x == "distractor", x != "target", x))
    if not labels:
        return []
    lines = ["", f"Failed `eval` episodes by what the gripper went for, {n_demos} demos (tasks and seeds pooled):",
             "", "| method | failed | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
    for m, f in failures.items():
        total = sum(f.values())
        shares = (f"{f.get(x, 0)} ({f.get(x, 0) / total:.0%})" if total else "0" for x in labels)
        lines.append(f"| {m} | {total} | " + " | ".join(shares) + " |")
    return lines


def _goals_table(goals: dict[str, list[dict]]) -> list[str]:
    """Markdown lines: the issue's goals, one measured/met column pair per demo count with checks."""
    goals = {n: {c["goal"]: c for c in checks} for n, checks in goals.items() if checks}
    if not goals:
        return []
    rows = list(dict.fromkeys(g for checks in goals.values() for g in checks))
    targets = {g: c["target"] for checks in goals.values() for g, c in checks.items()}
    lines = ["", "Goals of the issue (the headline is the low-data 10 demos):", "",
             "| goal | target | " + " | ".join(f"measured, {n} demos | met" for n in goals) + " |",
             "|---" * (2 + 2 * len(goals)) + "|"]
    for g in rows:
        cells = []
        for checks in goals.values():
            c = checks.get(g)
            measured = "–" if c is None or c["measured"] is None else f"{c['measured']:.3g}"
            cells += [measured, "–" if c is None else ("yes" if c["met"] else "no")]
        lines.append(f"| {g} | {targets[g]:g} | " + " | ".join(cells) + " |")
    return lines


def render(results: dict, path: Optional[Path] = None, relative_to: Optional[Path] = None) -> str:
    """The markdown block (no markers). Figure links are relative to `relative_to` (default: cwd)."""
    proto, config, summary = results["protocol"], results["config"], results["summary"]
    demos = [str(n) for n in config["n_demos"]]
    methods = config["methods"]
    source = f"`{path}`" if path else "the results file"
    lines = [
        f"<!-- generated from {path or 'the results file'} by `python -m vla_prefix.experiments.report`; "
        "do not edit by hand -->",
        f"**{proto['suite']}, held-out tasks** ({source}): {len(config['tasks'])} task(s), training seeds "
        f"{config['seeds']}, {proto['n_episodes']} eval episodes per task and seed (`eval` seeds); "
        f"each method's lr chosen from its grid on {proto['val_episodes']} `val` episodes; "
        f"{proto['steps']} steps, batch {proto['batch_size']}, {proto['n_action_steps']} actions per chunk; "
        f"base `{proto['base']}` (fingerprint `{proto['base_fingerprint']}`). "
        "Success: mean over tasks and seeds, Wilson 95% CI on the pooled eval episodes.",
        "",
        "| method | trainable params | % of backbone | stored / task | train time / run | "
        + " | ".join(f"success, {n} demos" for n in demos) + " | "
        + " | ".join(f"forgetting after {n} demos" for n in demos) + " |",
        "|---" * (5 + 2 * len(demos)) + "|",
    ]
    for method in methods:
        per_demos = [summary["n_demos"][n][method] for n in demos]
        m0 = per_demos[0]  # params and bytes do not depend on the demo count; time: the first count's runs
        params = "–" if m0["trainable_params"] is None else f"{m0['trainable_params']:,}"
        pct = "–" if m0["trainable_pct"] is None else f"{m0['trainable_pct']:.3g}%"
        time_s = "–" if m0["train_wall_s"] is None else f"{m0['train_wall_s']:.0f} s"
        success = " | ".join(_mean(m) for m in per_demos)
        forgetting = " | ".join(_forgetting(m["forgetting"]) for m in per_demos)
        lines.append(f"| {method} | {params} | {pct} | {_bytes(m0['stored_bytes'])} | {time_s} | {success} | "
                     f"{forgetting} |")
    base = summary.get("base_forgetting")
    if base is not None:
        lines += ["", f"Forgetting: mean success on {len(proto['forgetting_task'])} pretrain task(s) "
                      f"({proto['forgetting_episodes']} episodes each) after adapting to each held-out task; "
                      f"the base alone: {_rate(base)}."]
    for n in demos:
        tasks = config["tasks"]
        lines += ["", f"Per task, {n} demos (seeds pooled; chosen lr per seed; the training step whose checkpoint "
                      "the trainer's val selection kept, where it selects):", "",
                  "| method | " + " | ".join(f"`{t}`" for t in tasks) + " | chosen lr | kept step |",
                  "|---" * (len(tasks) + 3) + "|"]
        for method in methods:
            m = summary["n_demos"][n][method]
            steps = ", ".join(map(str, m.get("kept_steps") or [])) or "–"
            cells = " | ".join(_task_rate(m["tasks"].get(t), len(config["seeds"])) for t in tasks)
            lines.append(f"| {method} | {cells} | {_lr(m['lr'])} | {steps} |")
    for n in demos:
        lines += _failures_table(summary["n_demos"][n], methods, n)
    lines += _goals_table(summary.get("goals", {}))
    if results.get("figures") and path is not None:
        base_dir = Path(relative_to) if relative_to else Path.cwd()
        links = [f"![{name}]({os.path.relpath(Path(path).parent / name, base_dir)})" for name in results["figures"]]
        lines += ["", " ".join(links)]
    return "\n".join(lines)


def render_sweep(results: dict, path: Optional[Path] = None, relative_to: Optional[Path] = None) -> str:
    """A `vla_prefix.sweep` sweep_results.json as markdown (no markers): one row per setting of the grid keys
    other than `task`, one column per task plus the tasks pooled (Wilson 95% CI), in grid order."""
    from ..sweep import expand_grid, plot_name
    from .records import pooled

    grid, fixed = results["grid"], results["fixed"]
    tasks = grid.get("task") or [fixed["task"]]
    keys = [k for k in grid if k != "task"]
    rows = {}  # (setting, task) -> row
    for r in results["rows"]:
        p = r["parameters"]
        rows[(tuple(json.dumps(p[k]) for k in keys), p.get("task", fixed.get("task")))] = r
    settings = list(dict.fromkeys(tuple(json.dumps(p[k]) for k in keys) for p in expand_grid(grid)))
    source = f"`{path}`" if path else "the sweep results"
    lines = [
        f"<!-- generated from {path or 'the sweep results'} by `python -m vla_prefix.experiments.report`; "
        "do not edit by hand -->",
        f"**{Path(results['sweep']).stem}** ({source}): " + ("" if "n_demos" in grid else
                                                             f"{fixed.get('n_demos') or 'all'} demos of ")
        + f"`{fixed.get('data')}`, {fixed.get('max_steps')} steps, seed {fixed.get('seed')}, "
        f"{fixed.get('n_episodes')} `eval` episodes per run; base `{fixed.get('base')}` (fingerprint "
        f"`{fixed.get('base_fingerprint')}`). Success with its Wilson 95% CI.",
        "",
        "| " + " | ".join(f"`{k}`" for k in keys) + " | " + " | ".join(f"`{t}`" for t in tasks)
        + (" | tasks pooled" if len(tasks) > 1 else "") + " | trainable params | prefix file | train time / run |",
        "|---" * (len(keys) + len(tasks) + (len(tasks) > 1) + 3) + "|",
    ]
    for setting in settings:
        runs = [rows.get((setting, t)) for t in tasks]
        done = [r for r in runs if r is not None]
        if not done:
            continue
        cells = [_rate(r) for r in runs]
        if len(tasks) > 1:
            cells.append(_rate(pooled((r["n_successes"], r["n_episodes"]) for r in done))
                         + ("" if len(done) == len(tasks) else f" ({len(done)}/{len(tasks)} tasks)"))
        params = ", ".join(f"{n:,}" for n in sorted({r["trainable_params"] for r in done}))
        stored = ", ".join(_bytes(n) for n in sorted({r["prefix_bytes"] for r in done}))
        timed = [r["train_wall_s"] for r in done if not r.get("train_wall_s_partial")]
        time_s = f"{sum(timed) / len(timed):.0f} s" if timed else "–"
        lines.append("| " + " | ".join(str(json.loads(v)) for v in setting) + " | " + " | ".join(cells)
                     + f" | {params} | {stored} | {time_s} |")
    plot = plot_name(grid)
    if path is not None and (Path(path).parent / plot).is_file():
        base_dir = Path(relative_to) if relative_to else Path.cwd()
        lines += ["", f"![{plot}]({os.path.relpath(Path(path).parent / plot, base_dir)})"]
    return "\n".join(lines)


def markers(key: str) -> tuple[str, str]:
    """The README markers of a results block; key: a suite, `<suite>:<file stem>` or `sweep:<sweep file name>`."""
    return f"<!-- results:{key}:start -->", f"<!-- results:{key}:end -->"


def update_readme(readme: Path, key: str, block: str) -> bool:
    """Replace the text between the key's markers, each a line of its own (a marker quoted in prose does
    not count); False (README untouched) if it lacks them."""
    start, end = markers(key)
    text = readme.read_text()
    i = re.search(rf"^{re.escape(start)}$", text, re.M)
    j = i and re.search(rf"^{re.escape(end)}$", text[i.end():], re.M)
    if not j:
        return False
    new = text[: i.end()] + "\n" + block + "\n" + text[i.end() + j.start():]
    if new != text:
        atomic_write_bytes(readme, new.encode())
    return True


def load(path: str | Path) -> tuple[dict, str]:
    """(results, README marker key) of a held-out results file (a calibration's too) or a sweep's
    sweep_results.json."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no results file at {str(path)!r}; make one with `python -m vla_prefix.experiments.heldout`"
                          " or `python -m vla_prefix.sweep`")
    try:
        results = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON") from None
    from ..sweep import FORMAT as SWEEP_FORMAT
    from .heldout import FORMAT

    if results.get("format") == FORMAT and "summary" in results:
        suite = results["protocol"]["suite"]
        return results, suite if path.stem == "heldout" else f"{suite}:{path.stem}"
    if results.get("format") == SWEEP_FORMAT and "grid" in results:
        return results, f"sweep:{Path(results['sweep']).stem}"
    raise ConfigError(f"{path} is neither a held-out results file ({FORMAT}) with a summary nor a sweep's "
                      f"results ({SWEEP_FORMAT})")


def block_of(path: str | Path, relative_to: Optional[Path] = None) -> tuple[str, str]:
    """(README marker key, markdown block) of a results file; figure links relative to `relative_to`."""
    results, key = load(path)
    draw = render_sweep if key.startswith("sweep:") else render
    return key, draw(results, Path(path), relative_to)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vla_prefix.experiments.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="a heldout.json (vla_prefix.experiments.heldout) or a sweep_results.json "
                        "(vla_prefix.sweep)")
    parser.add_argument("--readme", help="README to update between the results markers")
    args = parser.parse_args(argv)
    readme = Path(args.readme) if args.readme else None
    if readme is not None and not readme.is_file():
        raise ConfigError(f"--readme {args.readme!r} is not a file")
    key, block = block_of(args.results, readme.parent if readme else None)
    if readme is not None and update_readme(readme, key, block):
        print(f"updated {readme} between {markers(key)[0]} and {markers(key)[1]}")
        return 0
    if readme is not None:
        start, end = markers(key)
        print(f"note: {readme} has no {start} ... {end} markers; add them where the table goes. The block:",
              file=sys.stderr)
    print(block)
    return 0


if __name__ == "__main__":
    main()
