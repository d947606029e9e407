"""Deliberation cost in expert loads: hand-computed loads, a loop reference, the dual and PI updates."""

import math

import pytest
import torch

from temoe.rl import (
    dual_update,
    ema_update,
    expert_loads,
    loads_per_token,
    loads_switch_cost,
    pi_dual_update,
    stall_budget_to_load_budget,
    stall_ms_per_load,
    switch_loads,
)


def _mask(options, n):
    """Nested lists [b][t][l] of expert ids -> (B, T, L, N) bool."""
    B, T, L = len(options), len(options[0]), len(options[0][0])
    m = torch.zeros(B, T, L, n, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            for ell in range(L):
                m[b, t, ell, options[b][t][ell]] = True
    return m


def test_switch_loads_counts_new_experts_only():
    old = _mask([[[[0, 1, 2, 3], [0, 1, 2, 3]]]], 8)
    new = _mask([[[[0, 1, 2, 3], [3, 4, 5, 0]]]], 8)
    # layer 0: same option -> 0; layer 1: {3, 4, 5, 0} \ {0, 1, 2, 3} = {4, 5} -> 2 (dropping 1, 2 is free)
    assert switch_loads(old, new).tolist() == [[[0, 2]]]
    # c = η · loads / k̂ = 0.02 · [0, 2] / 4 = [0, 0.01]
    torch.testing.assert_close(loads_switch_cost(old, new, eta=0.02, k_hat=4), torch.tensor([[[0.0, 0.01]]]))


def test_expert_loads_hand_computed():
    # B = 2, T = 4, L = 2, N = 4, k̂ = 2. Row 0 ends at t = 2 (valid [T, T, T, F]); row 1 is full.
    options = [
        [[[0, 1], [0, 1]], [[0, 2], [0, 1]], [[2, 3], [1, 0]], [[0, 1], [2, 3]]],
        [[[0, 1], [2, 3]], [[0, 1], [2, 3]], [[0, 1], [0, 1]], [[1, 2], [0, 3]]],
    ]
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # row 0: t=1: layer 0 {0,2}\{0,1} = 1, layer 1 0 -> 1; t=2: {2,3}\{0,2} = 1 + 0 -> 1; t=3 invalid -> 0
    # row 1: t=1: 0 + 0 -> 0; t=2: 0 + {0,1}\{2,3} = 2 -> 2; t=3: {1,2}\{0,1} = 1 + {0,3}\{0,1} = 1 -> 2
    loads = expert_loads(_mask(options, 4), valid)
    torch.testing.assert_close(loads, torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 2.0, 2.0]]))
    # counted positions: t = 1, 2 of row 0 and t = 1, 2, 3 of row 1: (1 + 1 + 0 + 2 + 2) / 5 = 1.2
    assert abs(loads_per_token(_mask(options, 4), valid) - 1.2) < 1e-6


def test_expert_loads_matches_a_loop_and_skips_each_rows_first_position():
    g = torch.Generator().manual_seed(0)
    B, T, L, N, K = 3, 7, 2, 8, 3
    ids = torch.rand(B, T, L, N, generator=g).topk(K, dim=-1).indices
    masks = torch.zeros(B, T, L, N, dtype=torch.bool).scatter_(-1, ids, True)
    start, end = torch.tensor([0, 2, 1]), torch.tensor([7, 5, 3])  # left padding and early EOS
    valid = (torch.arange(T) >= start[:, None]) & (torch.arange(T) < end[:, None])
    ref, n = torch.zeros(B, T), 0
    for b in range(B):
        for t in range(int(start[b]) + 1, int(end[b])):  # a row's first position has no load
            new = [set(ids[b, t, ell].tolist()) - set(ids[b, t - 1, ell].tolist()) for ell in range(L)]
            ref[b, t] = sum(len(s) for s in new)
            n += 1
    torch.testing.assert_close(expert_loads(masks, valid), ref)
    assert abs(loads_per_token(masks, valid) - float(ref.sum()) / n) < 1e-6


def test_loads_per_token_without_counted_positions_is_zero():
    masks = torch.ones(2, 3, 1, 4, dtype=torch.bool)
    assert loads_per_token(masks, torch.tensor([[True, False, False], [False, False, False]])) == 0.0


def test_dual_update_sign_and_clamp():
    # over budget: 0.02 + 0.01 · (3 - 2) / 2 = 0.025; under: 0.02 + 0.01 · (1 - 2) / 2 = 0.015
    assert dual_update(0.02, measured=3.0, budget=2.0, lr=0.01) == pytest.approx(0.025)
    assert dual_update(0.02, measured=1.0, budget=2.0, lr=0.01) == pytest.approx(0.015)
    assert dual_update(0.02, measured=2.0, budget=2.0, lr=0.01) == 0.02
    # far under budget: 0.001 + 0.01 · (0 - 2) / 2 = -0.009 -> clamped at 0, and stays there
    assert dual_update(0.001, measured=0.0, budget=2.0, lr=0.01) == 0.0
    assert dual_update(0.0, measured=0.5, budget=2.0, lr=0.01) == 0.0
    assert dual_update(0.0, measured=4.0, budget=2.0, lr=0.01) == pytest.approx(0.01)  # and leaves 0 again


@pytest.mark.parametrize("budget", [0.0, -1.0, math.inf, math.nan])
def test_dual_update_refuses_a_bad_budget(budget):
    with pytest.raises(ValueError, match="budget"):
        dual_update(0.02, measured=1.0, budget=budget, lr=0.01)


def test_dual_update_refuses_bad_inputs():
    with pytest.raises(ValueError, match="eta_lr"):
        dual_update(0.02, measured=1.0, budget=1.0, lr=-0.1)
    with pytest.raises(ValueError, match="eta"):
        dual_update(-0.1, measured=1.0, budget=1.0, lr=0.01)
    with pytest.raises(ValueError, match="measured"):
        dual_update(0.02, measured=math.nan, budget=1.0, lr=0.01)


def test_stall_budget_conversion():
    # 12e6 bytes at 24 GB/s: 12e6 / 24e9 s = 0.5 ms per load; a 2 ms/token budget fits 2 / 0.5 = 4 loads
    assert stall_ms_per_load(12e6, 24.0) == pytest.approx(0.5)
    assert stall_budget_to_load_budget(2.0, 12e6, 24.0) == pytest.approx(4.0)
    for bad in (dict(stall_budget_ms=0.0), dict(bytes_per_expert=-1.0), dict(host_to_device_gb_s=math.inf)):
        kw = dict(stall_budget_ms=2.0, bytes_per_expert=12e6, host_to_device_gb_s=24.0) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            stall_budget_to_load_budget(**kw)


def test_pi_dual_update_hand_computed_steps():
    # budget 0.5, α = 0.01, K_p = 0.02. Step 1, loads 0.8: e = 0.6, η_I = 0.02 + 0.006 = 0.026,
    # η = 0.026 + 0.02 · 0.6 = 0.038
    integral, eta = pi_dual_update(0.02, measured=0.8, budget=0.5, lr=0.01, kp=0.02)
    assert integral == pytest.approx(0.026) and eta == pytest.approx(0.038)
    # step 2, loads 0.3 (e = -0.4), average 0.6 (e_s = 0.2): η_I = 0.026 - 0.004 = 0.022, η = 0.022 + 0.004
    integral, eta = pi_dual_update(integral, measured=0.3, budget=0.5, lr=0.01, kp=0.02, smoothed=0.6)
    assert integral == pytest.approx(0.022) and eta == pytest.approx(0.026)
    # step 3, loads 0: e = -1, η_I = 0.012; the proportional term answers at once: 0.012 - 0.02 < 0 -> 0
    integral, eta = pi_dual_update(integral, measured=0.0, budget=0.5, lr=0.01, kp=0.02)
    assert integral == pytest.approx(0.012) and eta == 0.0


def test_pi_dual_update_clamps_the_integral_and_eta():
    # η_I: 0.001 + 0.01 · (-1) < 0 -> 0 (dual ascent's clamp); η = max(0, 0 + 0.05 · (-1)) = 0
    assert pi_dual_update(0.001, measured=0.0, budget=2.0, lr=0.01, kp=0.05) == (0.0, 0.0)
    # over budget from η_I = 0: η_I = 0.01 · 1 = 0.01, η = 0.01 + 0.05 · 1 = 0.06
    integral, eta = pi_dual_update(0.0, measured=4.0, budget=2.0, lr=0.01, kp=0.05)
    assert integral == pytest.approx(0.01) and eta == pytest.approx(0.06)


@pytest.mark.parametrize(("eta", "measured", "budget"), [
    (0.02, 3.0, 2.0), (0.02, 1.0, 2.0), (0.001, 0.0, 2.0), (0.0, 4.0, 2.0), (0.07, 0.01, 0.5)])
def test_pi_dual_update_with_kp_zero_is_dual_ascent(eta, measured, budget):
    old = dual_update(eta, measured, budget, lr=0.003)
    assert pi_dual_update(eta, measured, budget, lr=0.003, kp=0.0, smoothed=measured + 1.0) == (old, old)


def test_pi_dual_update_refuses_bad_gains():
    with pytest.raises(ValueError, match=r"eta_kp=-0\.1: must be a finite number >= 0"):
        pi_dual_update(0.02, measured=1.0, budget=1.0, lr=0.01, kp=-0.1)
    with pytest.raises(ValueError, match="smoothed"):
        pi_dual_update(0.02, measured=1.0, budget=1.0, lr=0.01, kp=0.1, smoothed=math.inf)


def test_ema_update_hand_computed():
    assert ema_update(None, 0.8, decay=0.8) == 0.8  # the first step starts the average
    assert ema_update(0.8, 0.3, decay=0.8) == pytest.approx(0.8 * 0.8 + 0.2 * 0.3)  # 0.70
    assert ema_update(0.8, 0.3, decay=0.0) == 0.3
    with pytest.raises(ValueError, match=r"eta_ema=1\.0: must be a finite number in \[0, 1\)"):
        ema_update(0.8, 0.3, decay=1.0)
