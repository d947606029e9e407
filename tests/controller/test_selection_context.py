"""The selection context (`ControllerConfig.selection_context_decay`): a padding-free causal moving average of
h feeding the selection head, recorded for replay, plus `initial_option="selection"` and greedy selection."""

import pytest
import torch
from test_controller_policy import H, K, L, N
from test_controller_policy import make_controller as make_base_controller

from temoe.controller import ControllerConfig
from temoe.options import indices_to_mask

D = 0.8


def make_controller(decay: float = D, initial: str = "router", bias: float = -1.0):
    return make_base_controller(bias=bias, selection_context_decay=decay, initial_option=initial)


def moving_average(hs: list[torch.Tensor], decay: float) -> torch.Tensor:
    """Reference h̄ at the last of the (H,) vectors: weights (1 - d) d^(age), normalised."""
    w = torch.tensor([(1 - decay) * decay ** (len(hs) - 1 - s) for s in range(len(hs))])
    stacked = torch.stack(hs)  # (S, ...)
    return (w.view(-1, *[1] * (stacked.dim() - 1)) * stacked).sum(0) / w.sum()


def rollout(c, hidden_prompt, prompt_mask, steps, seed=0, selection_mode=None):
    B = hidden_prompt.shape[0]
    g = torch.Generator().manual_seed(seed)
    state = c.new_state(B, generator=g, prompt_mask=prompt_mask, selection_mode=selection_mode)
    fn = c.mask_fn(state)
    for i in range(L):
        fn(i, hidden_prompt)
    state.begin_generation()
    hs = torch.Generator().manual_seed(seed + 1)
    decode = torch.randn(steps, B, 1, H, generator=hs)
    for t in range(steps):
        for i in range(L):
            fn(i, decode[t])
    return state, decode


def test_context_is_the_padding_free_moving_average_and_replay_matches_the_record():
    c, _ = make_controller()
    P, T = 6, 25
    hidden = torch.randn(2, P, H)
    mask = torch.ones(2, P, dtype=torch.bool)
    mask[1, :2] = False  # row 1 is left-padded by two positions
    state, decode = rollout(c, hidden, mask, T)
    traj = state.trajectory()
    assert traj.selection_input.shape == traj.hidden.shape == (2, T + 1, L, H)
    for b, start in ((0, 0), (1, 2)):
        seq = list(hidden[b, start:]) + [decode[t, b, 0] for t in range(T)]
        for t in (0, 1, T):
            expected = moving_average(seq[: P - start + t], D)
            torch.testing.assert_close(traj.selection_input[b, t, 0], expected, atol=1e-5, rtol=1e-5)
    # the recorded log-probs (at terminations) are those the replay recomputes from the recorded context
    out = c.replay_trajectory(traj)
    switches = traj.decisions & traj.decision_mask[..., None]
    assert switches.sum() > 5
    torch.testing.assert_close(out.log_prob[switches], traj.log_probs[switches], atol=1e-5, rtol=1e-5)
    # and they differ from a replay that ignores the context (the context matters)
    plain = c.replay(traj.hidden, traj.options_prev, traj.decisions, traj.selected)
    assert not torch.allclose(plain.log_prob[switches], traj.log_probs[switches], atol=1e-3)


def test_left_padding_does_not_change_the_context():
    c, _ = make_controller(initial="selection")
    hidden = torch.randn(1, 5, H)
    padded = torch.cat([torch.randn(1, 3, H), hidden], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 5])
    a, _ = rollout(c, hidden, torch.ones(1, 5, dtype=torch.bool), 4, selection_mode="greedy")
    b, _ = rollout(c, padded, mask, 4, selection_mode="greedy")
    ta, tb = a.trajectory(), b.trajectory()
    torch.testing.assert_close(ta.selection_input, tb.selection_input, atol=1e-5, rtol=1e-5)
    assert torch.equal(ta.options, tb.options)


def test_initial_option_selection_is_top_k_hat_of_the_selection_head_at_the_context():
    c, router_w = make_controller(initial="selection")
    hidden = torch.randn(3, 7, H)
    state = c.new_state(3, generator=torch.Generator().manual_seed(0))
    fn = c.mask_fn(state)
    masks = [fn(i, hidden) for i in range(L)]
    state.begin_generation()
    traj = state.trajectory()
    for i in range(L):
        context = moving_average(list(hidden.transpose(0, 1)), D)  # (3, H), all positions real
        top = (context @ router_w[i].T).topk(K).indices
        assert torch.equal(indices_to_mask(traj.options[:, 0, i], N), indices_to_mask(top, N))
        assert torch.equal(masks[i][:, -1], indices_to_mask(top, N))
        # ... which is not the router's top-k̂ at the last position for every row (the context matters)
    last = (hidden[:, -1] @ router_w[0].T).topk(K).indices
    assert not torch.equal(indices_to_mask(last, N), indices_to_mask(traj.options[:, 0, 0], N))


def test_greedy_selection_takes_the_top_k_hat_while_termination_is_sampled():
    c, _ = make_controller(bias=0.0)  # β = 0.5: many terminations
    state, _ = rollout(c, torch.randn(2, 4, H), None, 20, selection_mode="greedy")
    traj = state.trajectory()
    out = c.replay_trajectory(traj)
    switches = traj.decisions & traj.decision_mask[..., None]
    assert switches.sum() > 5
    assert 0 < traj.decisions[traj.decision_mask].float().mean() < 1  # d_t still sampled
    for i in range(L):
        logits = c.layers[i].selection_logits(traj.selection_input[:, :, i])
        top = logits.topk(K, dim=-1).indices
        sel = switches[:, :, i]
        assert torch.equal(indices_to_mask(traj.selected[:, :, i][sel], N), indices_to_mask(top[sel], N))
    assert torch.isfinite(out.log_prob).all()


def test_decay_zero_records_no_context_and_bad_values_fail():
    c, _ = make_controller(decay=0.0)
    state, _ = rollout(c, torch.randn(2, 4, H), None, 3)
    assert state.trajectory().selection_input is None
    with pytest.raises(ValueError, match="selection_context_decay"):
        ControllerConfig(k_hat=2, selection_context_decay=1.0)
    with pytest.raises(ValueError, match="initial_option.*'router' or 'selection'"):
        ControllerConfig(k_hat=2, initial_option="ema")
    c, _ = make_controller()
    with pytest.raises(ValueError, match="selection_mode must be 'sample' or 'greedy'"):
        c.new_state(1, selection_mode="top")


def test_selection_temperature_scales_the_logits_everywhere():
    from temoe.controller.options import plackett_luce_log_prob

    c, _ = make_base_controller(bias=0.0, selection_temperature=0.5)
    state, _ = rollout(c, torch.randn(2, 4, H), None, 15)
    traj = state.trajectory()
    switches = traj.decisions & traj.decision_mask[..., None]
    assert switches.sum() > 3
    raw = torch.stack([c.layers[i].selection(traj.hidden[:, :, i]) for i in range(L)], dim=2)  # f_sel(h)
    expected = plackett_luce_log_prob(raw / 0.5, traj.selected)
    torch.testing.assert_close(traj.log_probs[switches], expected[switches], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.replay_trajectory(traj).log_prob[switches], expected[switches],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="selection_temperature"):
        ControllerConfig(k_hat=2, selection_temperature=0.0)
