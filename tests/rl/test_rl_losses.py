"""Option-critic losses: hand-computed values, gradient signs, padding never contributes."""

import math

import torch

from temoe.rl import critic_loss, intra_option_loss, selection_loss, termination_loss


def test_termination_loss_hand_computed_and_gradient_sign():
    # One row, one layer, T = 3; t = 0 is the initial option (no decision), so mask = [F, T, T].
    beta = torch.tensor([[0.5, 0.2, 0.6]], requires_grad=True)
    q_prev = torch.tensor([[9.0, 1.0, 0.0]])
    value = torch.tensor([[-9.0, 0.5, 0.3]])
    mask = torch.tensor([[False, True, True]])
    w = torch.tensor([[7.0, 1.0, 0.5]])
    # A = Q - V + η with η = 0.1: t=1: 1.0 - 0.5 + 0.1 = 0.6; t=2: 0.0 - 0.3 + 0.1 = -0.2
    # RMS over t > 0 = sqrt((0.36 + 0.04) / 2) = sqrt(0.2) = 0.447214 -> Â = [1.341641, -0.447214]
    # loss = (1.0·0.2·1.341641 + 0.5·0.6·(-0.447214)) / (1.0 + 0.5) = 0.134164 / 1.5 = 0.0894427
    loss, stats = termination_loss(beta, q_prev, value, mask, eta=0.1, weights=w)
    assert abs(float(loss.detach()) - 0.0894427) < 1e-6
    assert abs(stats["termination/adv_rms"] - math.sqrt(0.2)) < 1e-6
    loss.backward()
    # ∂loss/∂β_t = w_t Â_t / Σw: descending lowers β_1 (Q - V + η > 0: keep the option) and raises β_2.
    torch.testing.assert_close(beta.grad, torch.tensor([[0.0, 1.341641 / 1.5, 0.5 * -0.447214 / 1.5]]))
    assert beta.grad[0, 1] > 0 and beta.grad[0, 2] < 0


def test_termination_step_lowers_beta_of_a_head_when_keeping_is_better():
    torch.manual_seed(0)
    logit_bias = torch.zeros(1, requires_grad=True)
    h = torch.randn(2, 5)
    beta = torch.sigmoid(h.sum(-1, keepdim=True) * 0.1 + logit_bias)  # (B=2, T=1)
    before = beta.detach().clone()
    q_prev, value = torch.full((2, 1), 0.3), torch.full((2, 1), 0.25)  # Q - V + η = 0.07 > 0
    loss, _ = termination_loss(beta, q_prev, value, torch.ones(2, 1, dtype=torch.bool), eta=0.02)
    loss.backward()
    with torch.no_grad():
        logit_bias -= 0.5 * logit_bias.grad
    assert (torch.sigmoid(h.sum(-1, keepdim=True) * 0.1 + logit_bias) < before).all()


def test_termination_loss_is_per_layer_rms_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    B, T, L = 3, 6, 2
    beta = torch.rand(B, T, L, generator=g)
    q, v = torch.randn(B, T, L, generator=g), torch.randn(B, T, L, generator=g)
    q[..., 1] *= 100  # layer 1 on a much larger scale: per-layer RMS makes both layers count alike
    mask = torch.arange(T)[None] < torch.tensor([[6], [4], [2]])
    mask[:, 0] = False
    loss, _ = termination_loss(beta, q, v, mask, eta=0.02)
    per_layer = [termination_loss(beta[..., i], q[..., i], v[..., i], mask, eta=0.02)[0] for i in range(L)]
    torch.testing.assert_close(loss, (per_layer[0] + per_layer[1]) / 2)
    b2, q2 = beta.clone(), q.clone()
    b2[~mask] = 0.9
    q2[~mask] = 1e4
    torch.testing.assert_close(termination_loss(b2, q2, v, mask, eta=0.02)[0], loss)


def test_selection_loss_hand_computed():
    # Two layers, one row, T = 3. Layer 0 switches at t = 1 and 2; layer 1 never switches.
    log_prob = torch.tensor([[[-5.0, -5.0], [-1.0, -5.0], [-3.0, -5.0]]], requires_grad=True)
    q_exec = torch.tensor([[[0.0, 0.0], [2.5, 0.0], [0.0, 0.0]]])
    value = torch.tensor([[[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]])
    switches = torch.tensor([[[False, False], [True, False], [True, False]]])
    # layer 0: A = Q - V = [2, -1]; RMS = sqrt((4 + 1) / 2) = 1.581139 -> Â = [1.264911, -0.632456]
    # -(-1·1.264911 + -3·-0.632456) / 2 = -(0.632456) / 2 = -0.316228; layer 1 contributes 0
    # mean over the two layers: -0.158114
    loss, stats = selection_loss(log_prob, q_exec, value, switches)
    assert abs(float(loss.detach()) + 0.158114) < 1e-6
    assert stats["selection/num_switches"] == 2
    loss.backward()
    # ascending log π where Â > 0: the gradient of the loss is negative there
    assert log_prob.grad[0, 1, 0] < 0 and log_prob.grad[0, 2, 0] > 0
    assert log_prob.grad[0, 0].abs().sum() == 0 and log_prob.grad[0, :, 1].abs().sum() == 0


def test_critic_loss_hand_computed():
    v = torch.tensor([[1.0, 2.0, 50.0]], requires_grad=True)
    q = torch.tensor([[0.0, 1.0, 50.0]])
    vt, qt = torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 3.0, 0.0]])
    valid = torch.tensor([[True, True, False]])
    # V: (1-0)² + (2-2)² = 1; Q: (0-1)² + (1-3)² = 5; mean over 2 valid positions -> 0.5 + 2.5 = 3; × 0.01
    loss, stats = critic_loss(v, q, vt, qt, valid, coef=0.01)
    assert abs(float(loss.detach()) - 0.03) < 1e-7 and abs(stats["loss/critic"] - 3.0) < 1e-6
    loss.backward()
    assert v.grad[0, 2] == 0


def test_intra_option_loss_off_by_one_padding_gets_no_gradient():
    # Row 0 ends with EOS at t = 1 (valid [T, T, F]); the position after EOS is padding and must not be
    # pushed up (the authors' mask reached one position past the end).
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, -3.0], [0.5, 0.5, 0.5]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    w = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 2.0]])
    # -(-1·1 + -2·-1 + -1·0.5 + -1·0.5 + 2·-1·0.5) / (1 + 1 + 1 + 1 + 2) = -(-1) / 6 = 0.1666667
    loss, _ = intra_option_loss(logp, adv, valid, w)
    assert abs(float(loss.detach()) - 1 / 6) < 1e-6
    loss.backward()
    assert logp.grad[0, 2] == 0



def test_token_kl_loss_is_the_reverse_kl_over_valid_positions():
    from temoe.rl import token_kl_loss

    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7, requires_grad=True), torch.randn(2, 5, 7)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    loss, stats = token_kl_loss(s, t, valid)
    ref = torch.nn.functional.kl_div(t.log_softmax(-1), s.log_softmax(-1), log_target=True, reduction="none")
    expected = ref.sum(-1)[valid].mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert s.grad[0, 3:].abs().sum() == 0  # padding positions get no gradient
    same, _ = token_kl_loss(t, t, valid)
    assert abs(float(same)) < 1e-6


def _masks(*options, n=6):
    """Option index lists -> (1, T, 1, N) bool masks (one row, one layer)."""
    m = torch.zeros(1, len(options), 1, n, dtype=torch.bool)
    for t, ids in enumerate(options):
        m[0, t, 0, list(ids)] = True
    return m


def test_termination_loss_loads_cost_hand_computed():
    from temoe.rl import loads_switch_cost

    # The first test's numbers with the loads-based cost, η = 0.2, k̂ = 4. d_1 = 0, so ω_1 = ω_0 = {0,1,2,3}.
    # The selection head's candidate at t = 1 is {0,1,2,4}: 1 new expert -> c_1 = 0.2·1/4 = 0.05;
    # at t = 2 it is {0,1,4,5}: 2 new -> c_2 = 0.2·2/4 = 0.1 (t = 0 is masked).
    prev = _masks([0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3])
    cand = _masks([0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 4, 5])
    cost = loads_switch_cost(prev, cand, eta=0.2, k_hat=4)  # (1, 3, 1)
    torch.testing.assert_close(cost, torch.tensor([[[0.0], [0.05], [0.1]]]))
    beta = torch.tensor([[0.5, 0.2, 0.6]], requires_grad=True)
    q_prev, value = torch.tensor([[9.0, 1.0, 0.0]]), torch.tensor([[-9.0, 0.5, 0.3]])
    mask, w = torch.tensor([[False, True, True]]), torch.tensor([[7.0, 1.0, 0.5]])
    # A = Q - V + c: t=1: 1.0 - 0.5 + 0.05 = 0.55; t=2: 0.0 - 0.3 + 0.1 = -0.2
    # RMS = sqrt((0.3025 + 0.04) / 2) = 0.413824 -> Â = [1.329069, -0.483298]
    # loss = (1.0·0.2·1.329069 + 0.5·0.6·(-0.483298)) / 1.5 = 0.120824 / 1.5 = 0.0805496
    loss, stats = termination_loss(beta, q_prev, value, mask, eta=cost, weights=w)
    assert abs(float(loss.detach()) - 0.0805496) < 1e-6
    assert abs(stats["termination/cost_mean"] - 0.075) < 1e-7  # (0.05 + 0.1) / 2
    loss.backward()
    torch.testing.assert_close(beta.grad, torch.tensor([[0.0, 1.329069 / 1.5, 0.5 * -0.483298 / 1.5]]))


def test_termination_loss_flat_cost_as_a_tensor_equals_the_float():
    g = torch.Generator().manual_seed(1)
    B, T, L = 2, 5, 3
    beta, q, v = (torch.rand(B, T, L, generator=g) for _ in range(3))
    mask = torch.rand(B, T, generator=g) > 0.3
    w = torch.rand(B, T, generator=g)
    flat, s_flat = termination_loss(beta, q, v, mask, eta=0.03, weights=w)
    assert "termination/cost_mean" not in s_flat  # the float path returns the paper's stats only
    per_pos, _ = termination_loss(beta, q, v, mask, eta=torch.full((B, T, L), 0.03), weights=w)
    per_row, _ = termination_loss(beta, q, v, mask, eta=torch.full((B, T), 0.03), weights=w)
    assert torch.equal(flat, per_pos) and torch.equal(flat, per_row)


def test_loads_cost_of_a_full_replacement_is_the_flat_cost():
    from temoe.rl import loads_switch_cost

    # Every candidate shares no expert with ω_{t-1}: |new \ old| = k̂, so c_t = η everywhere.
    g = torch.Generator().manual_seed(2)
    prev = _masks([0, 1], [0, 1], [2, 3], [2, 3], n=4)
    cand = _masks([2, 3], [2, 3], [0, 1], [0, 1], n=4)
    cost = loads_switch_cost(prev, cand, eta=0.04, k_hat=2)[..., 0]  # (1, T)
    beta, q, v = (torch.rand(1, 4, generator=g) for _ in range(3))
    mask = torch.tensor([[False, True, True, True]])
    torch.testing.assert_close(termination_loss(beta, q, v, mask, eta=cost)[0],
                               termination_loss(beta, q, v, mask, eta=0.04)[0])


def test_selection_loss_with_loads_cost_hand_computed():
    # The selection test's numbers with a switch cost: layer 0 switches at t = 1 (c = 0.2, e.g. η = 0.4 and
    # 2 of k̂ = 4 experts new) and t = 2 (c = 0.4, the whole option replaced); layer 1 never switches.
    log_prob = torch.tensor([[[-5.0, -5.0], [-1.0, -5.0], [-3.0, -5.0]]], requires_grad=True)
    q_exec = torch.tensor([[[0.0, 0.0], [2.5, 0.0], [0.0, 0.0]]])
    value = torch.tensor([[[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]])
    switches = torch.tensor([[[False, False], [True, False], [True, False]]])
    cost = torch.tensor([[[9.0, 9.0], [0.2, 9.0], [0.4, 9.0]]])  # read at switches only
    # layer 0: A = Q - V - c = [2 - 0.2, -1 - 0.4] = [1.8, -1.4]; RMS = sqrt((3.24 + 1.96) / 2) = 1.612452
    # Â = [1.116313, -0.868243]; -(-1·1.116313 + -3·-0.868243) / 2 = -0.744208
    # mean with layer 1's 0: -0.372104
    loss, stats = selection_loss(log_prob, q_exec, value, switches, cost=cost)
    assert abs(float(loss.detach()) + 0.372104) < 1e-6
    assert abs(stats["selection/cost_mean"] - 0.3) < 1e-7
    loss.backward()
    assert log_prob.grad[0, 1, 0] < 0 and log_prob.grad[0, 2, 0] > 0
    flat, s_flat = selection_loss(log_prob, q_exec, value, switches)
    assert abs(float(flat.detach()) + 0.158114) < 1e-6 and "selection/cost_mean" not in s_flat
