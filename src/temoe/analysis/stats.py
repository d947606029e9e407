"""Confidence intervals for the paper's tables: binomial accuracy (Wald and Wilson) and a mean's normal CI."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["wald_ci", "wilson_ci", "mean_ci", "Z95"]

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wald_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation (Wald) interval p ± z·√(p(1−p)/n), clipped to [0, 1].

    This is the interval behind the paper's Tables 2/3 ± values (53.5% of 200 -> ±6.9 points).
    At p = 0 or 1 it has zero width, as in the paper ("0 ± 0").
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    half = z * math.sqrt(p * (1 - p) / n)
    return max(0.0, p - half), min(1.0, p + half)


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (better coverage than Wald for small n or p near 0/1)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Normal interval of a mean over independent units: mean ± z·s/√n (s the sample std, ddof=1).

    Used for switch rates with one value per question (questions are the independent units; the
    token × layer decisions within one question are not independent). One value -> zero width.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    m = sum(values) / n
    if n == 1:
        return m, m
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = z * s / math.sqrt(n)
    return m - half, m + half
