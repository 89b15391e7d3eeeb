"""Merge held-out results files of one protocol: shards of one experiment, run side by side.

    python -m vla_prefix.experiments.merge results/tabletop/heldout.json shard_a.json shard_b.json

The held-out experiment runs one cell after another in one process. To use more cores or machines, run
shards with their own `methods=` or `task=` and their own `results=` and `out=`, then merge them. The
first file is the target. Every other file's records are added to it; a cell present in both must hold
the same record. Its runs are appended. Its config widens to the union of tasks, methods, seeds, demo
counts and lr grids. The summary and figures are recomputed. The files must share one protocol (base,
data, steps, episodes, ...), and their lr grid, lr selection and forgetting setting must agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError, cli_errors
from ..utils.atomic import atomic_write_json
from .heldout import FORMAT, widen_config
from .records import Ledger, record_key, summarize


def merge(results: dict, shard: dict, name: str = "shard") -> dict:
    """`results` with `shard`'s records, runs and config added (in place; -> `results`, summary recomputed)."""
    if shard.get("format") != FORMAT or results.get("format") != FORMAT:
        raise ConfigError(f"{name} is not a held-out results file ({FORMAT}); merge only those")
    if shard["protocol"] != results["protocol"]:
        differ = sorted(k for k in set(shard["protocol"]) | set(results["protocol"])
                        if shard["protocol"].get(k) != results["protocol"].get(k))
        raise ConfigError(f"{name} was made with another protocol (differs in {', '.join(differ)}); "
                          "only shards of one experiment merge")
    mine, theirs = results["config"], shard["config"]
    for method in set(mine["lr_grid"]) & set(theirs["lr_grid"]):
        if mine["lr_grid"][method] != theirs["lr_grid"][method]:
            raise ConfigError(f"{name} has lr_grid.{method}={theirs['lr_grid'][method]}, the target "
                              f"{mine['lr_grid'][method]}; only shards of one experiment merge")
    widened = widen_config(mine, theirs, name)
    ledger = Ledger(results["records"])
    for record in shard["records"]:
        present = ledger.index.get(record_key(record))
        if present is None:
            ledger.add(record)
        elif present != record:
            raise ConfigError(f"{name} and the target both hold the cell {record_key(record)} with different "
                              "numbers; keep one of them (delete that record from the other file)")
    results["runs"] += [run for run in shard["runs"] if run not in results["runs"]]
    results["config"] = widened
    results["summary"] = summarize(results)
    return results


def _read(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no results file at {path!r}") from None
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON") from None


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vla_prefix.experiments.merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="the heldout.json to merge into (rewritten)")
    parser.add_argument("shards", nargs="+", help="heldout.json files of the same experiment")
    args = parser.parse_args(argv)
    path = Path(args.target)
    if any(Path(s).resolve() == path.resolve() for s in args.shards):
        raise ConfigError(f"{args.target} is both the target and a shard; name each file once")
    results = _read(args.target)
    before = len(results.get("records", []))
    # success vs prefix length: the sweep file the target's latest run that named one plotted
    sweep_results = next((run["settings"]["sweep_results"] for run in reversed(results.get("runs", []))
                          if run.get("settings", {}).get("sweep_results")), None)
    for shard in args.shards:
        merge(results, _read(shard), shard)
    from .figures import write_figures

    results["figures"] = write_figures(results, path.parent, sweep_results)
    atomic_write_json(path, results)
    from .report import render

    print(render(results, path))
    print(f"[merge] {len(results['records']) - before} record(s) added from {len(args.shards)} file(s) -> {path}")
    return 0


if __name__ == "__main__":
    main()
