"""Deploy: a bank of per-task prefixes on one frozen backbone, mixed-task batches, a policy server.

    from vla_prefix.deploy import PrefixBank, BankPolicy, PolicyServer, PolicyClient

`PolicyClient` and the wire format (`protocol`) need only numpy and msgpack; the rest imports torch
on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PrefixBank": ".bank",
    "BankEntry": ".bank",
    "BankPolicy": ".policy",
    "PolicyServer": ".server",
    "PolicyClient": ".client",
    "PolicyServerError": ".client",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
