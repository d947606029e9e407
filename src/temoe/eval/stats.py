"""Summary of an evaluation run from its per-question records: accuracy and switch rate with 95% CIs."""

from __future__ import annotations

from collections.abc import Sequence

from temoe.analysis.stats import mean_ci, wald_ci, wilson_ci

__all__ = ["summarise"]


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
