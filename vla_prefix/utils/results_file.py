"""Resumable results files: a JSON whose frozen settings must match the run that appends to it."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError


def load_frozen_results(path: Path, fmt: str, section: str, settings: dict, empty: dict, what: str,
                        fix: str) -> dict:
    """The results so far (resume), or `empty` when `path` does not exist.

    Refuses a file of another `format`, and one whose `section` (the settings that change results)
    differs from `settings`: each changed key is named with its old and new value. `fix` tells the
    user how to start another file (e.g. "choose another out=").
    """
    if not path.exists():
        return empty
    try:
        results = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON; move it away to start afresh") from None
    if results.get("format") != fmt:
        raise ConfigError(f"{path} is not a {what} ({fmt}); {fix}")
    old, new = _flat(json.loads(json.dumps(results.get(section) or {}))), _flat(json.loads(json.dumps(settings)))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k, MISSING) != new.get(k, MISSING))
        diff = "; ".join(f"{k}: {old.get(k, MISSING)!r} there, {new.get(k, MISSING)!r} now" for k in changed[:5])
        diff += f"; and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise ConfigError(f"{path} holds results made with other settings (another {section}: {diff}); "
                          f"{fix} to keep both")
    return results


MISSING = "(missing)"


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings -> {"a.b.c": leaf}, so a changed nested value is named by its full key."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
