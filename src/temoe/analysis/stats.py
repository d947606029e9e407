"""Statistics for the paper's tables: confidence intervals (binomial accuracy by Wald and Wilson, a mean's
normal CI) and `summarise`, the summary of an evaluation run from its per-question records."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["wald_ci", "wilson_ci", "mean_ci", "summarise", "Z95"]

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


def summarise(records: Sequence[dict]) -> dict:
    """Aggregate records (`correct`: bool, `switch_rate`: float | None) into the run's summary.

    Returns `n`, `accuracy`, `accuracy_ci` (Wald, the interval the paper's ± values match),
    `accuracy_ci_wilson`, `switch_rate` (mean over questions of each question's switch rate),
    `switch_rate_ci` (normal interval of that mean over questions, see `mean_ci`), `n_switch`
    (questions with a defined switch rate: ≥ 2 generated tokens), `mean_experts_loaded`.
    """
    n = len(records)
    if n == 0:
        raise ValueError("no records to summarise")
    k = sum(bool(r["correct"]) for r in records)
    rates = [r["switch_rate"] for r in records if r.get("switch_rate") is not None]
    loaded = [r["experts_loaded"] for r in records if r.get("experts_loaded") is not None]
    out = {
        "n": n,
        "correct": k,
        "accuracy": k / n,
        "accuracy_ci": list(wald_ci(k, n)),
        "accuracy_ci_wilson": list(wilson_ci(k, n)),
        "accuracy_ci_method": "wald95",
        "switch_rate": sum(rates) / len(rates) if rates else None,
        "switch_rate_ci": list(mean_ci(rates)) if rates else None,
        "switch_rate_ci_method": "normal95 over questions",
        "n_switch": len(rates),
        "mean_experts_loaded": sum(loaded) / len(loaded) if loaded else None,
    }
    return out
