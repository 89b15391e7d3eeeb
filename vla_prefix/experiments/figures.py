"""Figures of a held-out results file (matplotlib's Agg, through `Figure`: pyplot's backend is left alone).

- `heldout_success.png`: mean eval success per method, Wilson 95% CI error bars, one bar per n_demos; only
  complete means (every task and seed), as a partial one averages fewer tasks than its neighbours.
- `success_vs_demos.png`: eval success vs demos, one panel per task (seeds pooled), one line per method
  (with 2+ n_demos); per task, so a demo count run on fewer tasks never mixes task sets in one line.
- `success_vs_prefix_length.png`: from a `vla_prefix.sweep` sweep_results.json, when one is given.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

from ..utils.atomic import atomic_write_bytes
from .records import complete_mean

SUCCESS_PLOT = "heldout_success.png"
DEMOS_PLOT = "success_vs_demos.png"
LENGTH_PLOT = "success_vs_prefix_length.png"


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _point(mean: dict) -> Optional[tuple[float, float, float]]:
    """(rate, lower error, upper error) of a summary's rate (mean or task), or None if nothing was measured."""
    if mean["success_rate"] is None:
        return None
    r, (lo, hi) = mean["success_rate"], mean["ci95"]
    return r, r - lo, hi - r


def write_figures(results: dict, folder: Path, sweep_results: Optional[str] = None) -> list[str]:
    """Write the figures into `folder`; -> their file names."""
    from matplotlib.figure import Figure

    summary, config = results["summary"], results["config"]
    methods, demos = config["methods"], [str(n) for n in config["n_demos"]]
    n_tasks, suite = len(config["tasks"]), results["protocol"]["suite"]
    episodes = results["protocol"]["n_episodes"]
    written = []

    fig = Figure(figsize=(1.2 * len(methods) + 3, 4.5))
    ax = fig.subplots()
    width = 0.8 / len(demos)
    for j, n in enumerate(demos):
        xs, ys, err = [], [], [[], []]
        for i, method in enumerate(methods):
            mean = complete_mean(summary["n_demos"][n][method])
            if mean is not None:
                p = _point(mean)
                xs.append(i + (j - (len(demos) - 1) / 2) * width)
                ys.append(p[0])
                err[0].append(p[1])
                err[1].append(p[2])
        ax.bar(xs, ys, width=width * 0.95, yerr=err, capsize=3, label=f"{n} demos")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("eval success rate (Wilson 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{suite}: {n_tasks} held-out task(s), {len(config['seeds'])} seed(s), {episodes} episodes each")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, folder / SUCCESS_PLOT))

    if len(demos) > 1:
        tasks = config["tasks"]
        fig = Figure(figsize=(4 * len(tasks) + 1, 4.5))
        axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
        for ax, task in zip(axes, tasks):
            for method in methods:
                pts = [(int(n), summary["n_demos"][n][method]["tasks"].get(task)) for n in demos]
                pts = [(n, _point(r)) for n, r in pts if r is not None]
                if pts:
                    ax.errorbar([n for n, _ in pts], [p[0] for _, p in pts], marker="o", capsize=3, label=method,
                                yerr=[[p[1] for _, p in pts], [p[2] for _, p in pts]],
                                linestyle="--" if method == "zero-shot" else "-")  # the base: flat by definition
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks([int(n) for n in demos], demos)
            ax.set_xlabel("demos")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(task, fontsize=8)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("eval success rate, seeds pooled (Wilson 95% CI)")
        axes[-1].legend(fontsize=7)
        fig.suptitle(f"{suite}: success vs demos per held-out task")
        written.append(_save(fig, folder / DEMOS_PLOT))

    if sweep_results:
        from ..sweep import plot_results

        sweep = json.loads(Path(sweep_results).read_text())
        if sweep.get("rows"):
            plot_results(sweep["rows"], list(sweep["grid"]), folder / LENGTH_PLOT)
            written.append(LENGTH_PLOT)
    return written
