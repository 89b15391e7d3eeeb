"""Success-rate statistics: Wilson score intervals per task, a stratified bootstrap across tasks."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion `successes / n`; z = 1.96 gives 95%.

    Closed form: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), clipped to [0, 1].
    Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at 0/n or n/n.
    """
    if n < 1:
        raise ValueError(f"a success rate needs at least one episode (n={n})")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}]")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def stratified_bootstrap(groups: Sequence[Sequence[float]], n_resamples: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """Mean over groups of each group's mean, and a percentile bootstrap CI.

    Each resample draws, within every group (task), as many values (episodes) as it holds, with
    replacement; the statistic is the unweighted mean of the group means. Seeded: the same inputs
    give the same interval. Returns (estimate, lo, hi).
    """
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("every group needs at least one value")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples} must be >= 1")
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    for values in groups:
        x = np.asarray(values, dtype=np.float64)
        total += x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    stats = total / len(groups)
    estimate = float(np.mean([np.mean(np.asarray(g, dtype=np.float64)) for g in groups]))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail])
    return estimate, float(lo), float(hi)
