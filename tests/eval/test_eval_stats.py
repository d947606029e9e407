"""Confidence intervals: hand-computed values, including the paper's Table 2 ± values (Wald, n = 200)."""

from __future__ import annotations

import math

import pytest

from temoe.analysis.stats import mean_ci, summarise, wald_ci, wilson_ci


@pytest.mark.parametrize("acc,half", [(0.535, 0.069), (0.15, 0.049), (0.035, 0.025), (0.275, 0.062)])
def test_wald_matches_paper_plus_minus(acc, half):
    low, high = wald_ci(round(acc * 200), 200)
    # 1.96 * sqrt(0.535 * 0.465 / 200) = 0.0691 -> the paper's "53.5 ± 6.9"
    assert (high - low) / 2 == pytest.approx(half, abs=6e-4)


def test_wald_zero_width_at_zero_and_wilson_not():
    assert wald_ci(0, 200) == (0.0, 0.0)
    low, high = wilson_ci(0, 200)
    # Wilson upper bound at p = 0: z² / (n + z²) = 3.8415 / 203.8415 = 0.01885
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(3.841459 / 203.841459, rel=1e-5)


def test_wilson_hand_value():
    # p = 0.5, n = 100: centre 0.5, half = 1.96 * sqrt(0.0025 + 3.8415/40000) / 1.038415 = 0.0962
    low, high = wilson_ci(50, 100)
    assert (low + high) / 2 == pytest.approx(0.5)
    expected = 1.959964 * math.sqrt(0.0025 + 3.841459 / 40000) / 1.0384146
    assert (high - low) / 2 == pytest.approx(expected, rel=1e-5)


def test_mean_ci_and_errors():
    low, high = mean_ci([0.0, 1.0])  # mean 0.5, s = 0.7071, half = 1.96 * 0.7071 / sqrt(2) = 0.98
    assert (low, high) == pytest.approx((0.5 - 0.979982, 0.5 + 0.979982), rel=1e-5)
    with pytest.raises(ValueError, match="n must be positive"):
        wald_ci(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_ci(5, 4)


def test_summarise_records():
    recs = [{"correct": True, "switch_rate": 0.5, "experts_loaded": 3},
            {"correct": False, "switch_rate": None, "experts_loaded": None},
            {"correct": True, "switch_rate": 0.1, "experts_loaded": 1}]
    s = summarise(recs)
    assert s["n"] == 3 and s["accuracy"] == pytest.approx(2 / 3)
    assert s["accuracy_ci"] == pytest.approx(list(wald_ci(2, 3)))
    assert s["switch_rate"] == pytest.approx(0.3) and s["n_switch"] == 2
    assert s["mean_experts_loaded"] == pytest.approx(2.0)
