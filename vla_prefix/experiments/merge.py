"""Merge held-out results files of one protocol: shards of one experiment, run side by side.

    python -m vla_prefix.experiments.merge results/tabletop/heldout.json shard_a.json shard_b.json

The held-out experiment runs one cell after another in one process. To use more cores or machines, run
shards with their own `methods=` or `task=` and their own `results=` and `out=`, then merge them. The
first file is the target. Every other file's records are added to it; a cell present in both must hold
the same record. Its runs are appended. Its config widens to the union of tasks, methods, seeds, demo
counts and lr grids. The summary and figures are recomputed. The files must share one protocol (base,
data, steps, episodes, ...), and their lr grid, lr selection and forgetting setting must agree.

`--methods` takes only those methods' records from the other files. `scratch` trains from a random init,
so the base's weights never enter its cells: `--methods scratch` also takes them from a file made on
another base of the same architecture (everything else in the protocol equal), e.g. to calibrate a new
base without training `scratch` again:

    python -m vla_prefix.experiments.merge new_base.json old_base.json --methods scratch
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError, cli_errors
from ..utils.atomic import atomic_write_json
from .heldout import FORMAT, METHODS, base_architecture, check_names, widen_config
from .records import Ledger, record_key, summarize

BASE_FREE = ("scratch",)  # trained from a random init: a file made on another base of its architecture merges
BASE_KEYS = ("base", "base_fingerprint")


def merge(results: dict, shard: dict, name: str = "shard", methods: list[str] | None = None) -> dict:
    """`results` with `shard`'s records, runs and config added (in place; -> `results`, summary recomputed).
    `methods`: take only these methods' records (all, if None)."""
    if shard.get("format") != FORMAT or results.get("format") != FORMAT:
        raise ConfigError(f"{name} is not a held-out results file ({FORMAT}); merge only those")
    if methods is not None:
        shard = only_methods(shard, methods, name)
    base_free = methods is not None and set(methods) <= set(BASE_FREE)
    ignored = BASE_KEYS if base_free else ()
    differ = sorted(k for k in set(shard["protocol"]) | set(results["protocol"])
                    if k not in ignored and shard["protocol"].get(k) != results["protocol"].get(k))
    if differ:
        raise ConfigError(f"{name} was made with another protocol (differs in {', '.join(differ)}); "
                          "only shards of one experiment merge")
    if base_free and any(shard["protocol"][k] != results["protocol"][k] for k in BASE_KEYS) and \
            scratch_architecture(shard["protocol"], name) != scratch_architecture(results["protocol"], "the target"):
        raise ConfigError(f"{name} was made on base {shard['protocol']['base']}, whose architecture differs from the "
                          f"target's base {results['protocol']['base']}: its scratch cells are another model's")
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


def only_methods(shard: dict, methods: list[str], name: str) -> dict:
    """`shard` with only `methods`' records, and its config narrowed to them."""
    check_names("--methods method", methods, METHODS)
    config = {**shard["config"], "methods": [m for m in shard["config"]["methods"] if m in methods],
              "lr_grid": {m: g for m, g in shard["config"]["lr_grid"].items() if m in methods}}
    if not config["methods"]:
        raise ConfigError(f"{name} holds none of the methods {methods} (it has {shard['config']['methods']})")
    return {**shard, "config": config, "records": [r for r in shard["records"] if r["method"] in methods]}


def scratch_architecture(protocol: dict, name: str):
    """What `scratch` trains: conf/model/<scratch_model>, or else the base's own architecture."""
    if protocol.get("scratch_model"):
        return protocol["scratch_model"]
    try:
        return base_architecture(protocol["base"])
    except ConfigError:
        raise ConfigError(f"cannot tell {name}'s scratch architecture: its base {protocol['base']} has no "
                          "training.json with its model config here; merge where both bases are") from None


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
    parser.add_argument("--methods", nargs="+", help="take only these methods' records (scratch: also from "
                        "another base of the same architecture)")
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
        merge(results, _read(shard), shard, args.methods)
    from .figures import write_figures

    results["figures"] = write_figures(results, path.parent, sweep_results)
    atomic_write_json(path, results)
    from .report import render

    print(render(results, path))
    print(f"[merge] {len(results['records']) - before} record(s) added from {len(args.shards)} file(s) -> {path}")
    return 0


if __name__ == "__main__":
    main()
