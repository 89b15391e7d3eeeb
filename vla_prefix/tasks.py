"""List every registered task.

    python -m vla_prefix.tasks                      # a table of all suites
    python -m vla_prefix.tasks --suite metaworld    # one suite, with its named splits
    python -m vla_prefix.tasks --json               # [{"id", "suite", "family", "split", "instruction", ...}]
    python -m vla_prefix.tasks --task-module my_tasks --suite mine
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import VLAPrefixError, cli_errors
from .sim import registry


def task_table(suite: str | None = None) -> tuple[list[registry.TaskInfo], list[str]]:
    """The tasks of `suite` (all suites when None) and a warning per suite that failed to load."""
    suites = [suite] if suite is not None else list(registry.SUITE_MODULES)
    tasks, warnings = [], []
    for name in suites:
        try:
            tasks.extend(registry.list_tasks(name))
        except ModuleNotFoundError as err:  # a suite whose optional dependency is missing
            if suite is not None:
                raise VLAPrefixError(f"suite {name!r} could not be loaded: {err}") from None
            warnings.append(f"suite {name!r} skipped: {err}")
    return tasks, warnings


def format_table(tasks: list[registry.TaskInfo]) -> str:
    cols = ("id", "suite", "family", "split", "instruction")
    rows = [[str(getattr(t, c)) for c in cols] for t in tasks]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vla_prefix.tasks", description="List every registered task.")
    parser.add_argument("--json", action="store_true", help="print a JSON list of task objects")
    parser.add_argument("--suite", help=f"one suite only ({', '.join(registry.SUITE_MODULES)}, or a user suite)")
    parser.add_argument("--task-module", action="append", default=[], help="a module that registers tasks (repeatable)")
    args = parser.parse_args(argv)
    registry.load_task_modules(args.task_module)
    tasks, warnings = task_table(args.suite)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps([t.as_dict() for t in tasks], indent=1))
        return
    print(format_table(tasks))
    if args.suite is not None:
        for name, ids in registry.list_splits(args.suite).items():
            print(f"split {name}: {len(ids)} task(s)")
    print(f"{len(tasks)} task(s)")


if __name__ == "__main__":
    main()
