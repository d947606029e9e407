"""Returns and GAE: vectorised == a plain Python loop written from METHOD §4; sequence ends."""

import pytest
import torch

from temoe.rl import discounted_returns, gae, next_step, option_critic_targets, standardize


def loop_reference(r, V, Qp, Qe, beta, valid, terminated, gamma, lam):
    """Alg. 2 lines 4-12, one (row, layer) at a time, backward over t, in plain Python floats."""
    B, T, L = len(V), len(V[0]), len(V[0][0])
    v_adv = [[[0.0] * L for _ in range(T)] for _ in range(B)]
    q_adv = [[[0.0] * L for _ in range(T)] for _ in range(B)]
    for b in range(B):
        ts = [t for t in range(T) if valid[b][t]]
        if not ts:
            continue
        end = ts[-1]
        for ell in range(L):
            av = aq = 0.0
            for t in reversed(ts):
                if t < end or (not terminated[b] and t + 1 < T):
                    v_next = V[b][t + 1][ell]
                    bn = beta[b][t + 1][ell]  # β_{t+1} = β(h_{t+1}, ω_t)
                    u = bn * v_next + (1 - bn) * Qp[b][t + 1][ell]  # U_t
                else:  # EOS: nothing after the end
                    v_next = u = 0.0
                if t == end:
                    av = aq = 0.0
                av = r[b][t] + gamma * v_next - V[b][t][ell] + gamma * lam * av
                aq = r[b][t] + gamma * u - Qe[b][t][ell] + gamma * lam * aq
                v_adv[b][t][ell], q_adv[b][t][ell] = av, aq
    return torch.tensor(v_adv), torch.tensor(q_adv)


def random_batch(seed, B=4, T=9, L=3, beta_edges=False):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, generator=g)
    V, Qp, Qe = (torch.randn(B, T, L, generator=g) for _ in range(3))
    beta = torch.rand(B, T, L, generator=g)
    if beta_edges:  # β ∈ {0, 1}: U reduces to Q(h_{t+1}, ω_t) or V(h_{t+1})
        beta = (beta > 0.5).float()
    lengths = torch.tensor([T, T - 1, 4, 1])
    valid = torch.arange(T)[None, :] < lengths[:, None]
    terminated = torch.tensor([False, False, True, True])
    return r, V, Qp, Qe, beta, valid, terminated


@pytest.mark.parametrize("seed,edges", [(0, False), (1, False), (2, True)])
def test_option_critic_targets_equal_python_loop(seed, edges):
    r, V, Qp, Qe, beta, valid, terminated = random_batch(seed, beta_edges=edges)
    gamma, lam = 0.95, 0.9
    out = option_critic_targets(r, V, Qp, Qe, beta, valid, terminated, gamma, lam)
    ref_v, ref_q = loop_reference(r.tolist(), V.tolist(), Qp.tolist(), Qe.tolist(), beta.tolist(),
                                  valid.tolist(), terminated.tolist(), gamma, lam)
    torch.testing.assert_close(out.v_advantage, ref_v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.q_advantage, ref_q, rtol=1e-5, atol=1e-5)
    m = valid[..., None].float()
    torch.testing.assert_close(out.v_target, (V + ref_v) * m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.q_target, (Qe + ref_q) * m, rtol=1e-5, atol=1e-5)


def test_u_bootstrap_reduces_to_v_or_q_at_beta_edges():
    r, V, Qp, Qe, _, valid, terminated = random_batch(5)
    ones, zeros = torch.ones_like(V), torch.zeros_like(V)
    always = option_critic_targets(r, V, Qp, Qe, ones, valid, terminated)  # β = 1: U_t = V(h_{t+1})
    expected = gae(r, Qe, next_step(V, valid, terminated), valid, 0.95, 0.95)
    torch.testing.assert_close(always.q_advantage, expected)
    never = option_critic_targets(r, V, Qp, Qe, zeros, valid, terminated)  # β = 0: U_t = Q(h_{t+1}, ω_t)
    expected = gae(r, Qe, next_step(Qp, valid, terminated), valid, 0.95, 0.95)
    torch.testing.assert_close(never.q_advantage, expected)


def test_no_bootstrap_past_eos_and_bootstrap_column_for_truncation():
    r, V, Qp, Qe, beta, valid, terminated = random_batch(7)
    base = option_critic_targets(r, V, Qp, Qe, beta, valid, terminated)
    # Garbage after the end of the terminated rows 2 and 3 (lengths 4 and 1) changes nothing.
    V2, Qp2, beta2, r2 = V.clone(), Qp.clone(), beta.clone(), r.clone()
    V2[2:, 4:] += 100.0
    Qp2[2:, 4:] -= 100.0
    beta2[2:, 4:] = 0.5
    r2[~valid] = 55.0
    changed = option_critic_targets(r2, V2, Qp2, Qe, beta2, valid, terminated)
    torch.testing.assert_close(changed.v_advantage, base.v_advantage)
    torch.testing.assert_close(changed.q_advantage, base.q_advantage)
    # Row 1 is truncated with one recorded column after its end: the last step bootstraps from it.
    V3 = V.clone()
    V3[1, 8] += 1.0
    bumped = option_critic_targets(r, V3, Qp, Qe, beta, valid, terminated, gamma=0.95, lam=0.95)
    torch.testing.assert_close(bumped.v_advantage[1, 7] - base.v_advantage[1, 7], torch.full((3,), 0.95))
    assert (bumped.v_advantage[1, 8] == 0).all()  # the bootstrap column itself carries no advantage


def test_discounted_returns_equal_loop_and_hand_example():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    valid = torch.tensor([[True, True, True, False]])
    # G_2 = 3; G_1 = 2 + 0.5·3 = 3.5; G_0 = 1 + 0.5·3.5 = 2.75; padding (r = 9) is ignored
    torch.testing.assert_close(discounted_returns(r, valid, 0.5), torch.tensor([[2.75, 3.5, 3.0, 0.0]]))
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 7, generator=g)
    valid = torch.arange(7)[None] < torch.tensor([[7], [3], [0]])
    ref = torch.zeros(3, 7)
    for b in range(3):
        acc = 0.0
        for t in reversed(range(7)):
            if valid[b, t]:
                acc = float(r[b, t]) + 0.95 * acc
                ref[b, t] = acc
    torch.testing.assert_close(discounted_returns(r, valid, 0.95), ref)
    # γ = 0 gives the rewards themselves
    torch.testing.assert_close(discounted_returns(r, valid, 0.0), r * valid)


def test_standardize_over_valid_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, population std √2
    out = standardize(x, valid)
    torch.testing.assert_close(out[valid], (vals - 3) / 2**0.5)
    assert (out[~valid] == 0).all()
    per_row = standardize(x, valid, per_sequence=True)
    torch.testing.assert_close(per_row[1, :2], torch.tensor([-1.0, 1.0]))


def test_long_sequence_matches_loop_in_float32():
    g = torch.Generator().manual_seed(4)
    r = torch.randn(2, 600, generator=g)
    valid = torch.ones(2, 600, dtype=torch.bool)
    out = discounted_returns(r, valid, 0.99)
    assert out.dtype == torch.float32
    acc, ref = 0.0, [0.0] * 600
    for t in reversed(range(600)):
        acc = float(r[0, t]) + 0.99 * acc
        ref[t] = acc
    torch.testing.assert_close(out[0], torch.tensor(ref), rtol=1e-5, atol=1e-5)
