"""User-facing errors.

Every mistake a user can make (bad config, unknown task, missing GL backend, corrupt file)
raises a subclass of `VLAPrefixError` whose message says what is wrong and how to fix it.
The command-line apps print that message alone, with no traceback, and exit with status 2; Ctrl-C
prints one line (what is kept, how to resume) and exits with status 130.
"""

from __future__ import annotations

import difflib
import functools
import sys


class VLAPrefixError(Exception):
    """A user mistake, reported with one message that names the fix."""


class ConfigError(VLAPrefixError):
    """A configuration value is invalid."""


class UnknownTaskError(VLAPrefixError, KeyError):
    """A task id or split name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class GLBackendError(VLAPrefixError):
    """MuJoCo could not create an offscreen OpenGL context."""


class PrefixFileError(VLAPrefixError):
    """A prefix file is corrupt, truncated or does not fit this backbone."""


class FingerprintMismatchError(PrefixFileError):
    """A prefix was trained on another backbone."""


def closest(name: str, choices, n: int = 3) -> list[str]:
    """The `n` valid names closest to `name`, for "did you mean" messages."""
    choices = list(choices)
    hits = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    if not hits:  # fall back to substring matches
        hits = [c for c in choices if name.lower() in c.lower()][:n]
    return hits


INTERRUPTED = "interrupted; the files already written are complete (each is written atomically)"


def cli_errors(main=None, *, interrupted: str = INTERRUPTED):
    """Decorator for CLI entry points: a `VLAPrefixError` prints one line and exits 2; Ctrl-C prints
    `interrupted` (what is kept, how to resume) and exits 130. Use as `@cli_errors` or
    `@cli_errors(interrupted="...")`."""
    if main is None:
        return functools.partial(cli_errors, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except VLAPrefixError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
