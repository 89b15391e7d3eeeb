"""The three seed ranges. Defined once, here, and never overlapping.

- `train`: demonstrations are collected on these seeds.
- `val`: hyperparameters and checkpoints are chosen on these.
- `eval`: reported results only.
"""

from __future__ import annotations

from .errors import ConfigError

SEED_RANGES: dict[str, range] = {
    "train": range(0, 1_000_000),
    "val": range(1_000_000, 2_000_000),
    "eval": range(2_000_000, 3_000_000),
}


def seeds(split: str, n: int, offset: int = 0) -> list[int]:
    """The first `n` seeds of `split`, starting `offset` seeds into the range."""
    if split not in SEED_RANGES:
        raise ConfigError(f"unknown seed range {split!r}; use one of {sorted(SEED_RANGES)}")
    rng = SEED_RANGES[split]
    if n < 0 or offset < 0 or offset + n > len(rng):
        raise ConfigError(f"{n} seeds from offset {offset} do not fit the {split!r} range of {len(rng)}")
    return list(rng[offset : offset + n])


def seed_split(seed: int) -> str:
    """Which range a seed belongs to."""
    for name, rng in SEED_RANGES.items():
        if seed in rng:
            return name
    raise ConfigError(f"seed {seed} lies outside every seed range {dict(SEED_RANGES)}")
