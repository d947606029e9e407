"""OptionController policy driven through its MaskFn with random hidden states (no model needed)."""

import pytest
import torch

from temoe.controller import ControllerConfig, OptionController, recorded_mask_fn
from temoe.options import indices_to_mask

L, N, TOPK, H, K = 2, 8, 2, 12, 3


def make_controller(bias: float = -3.0, seed: int = 0, **config):
    """A controller whose selection heads and router logits come from one random router per layer; `config`:
    further `ControllerConfig` fields (also used by test_selection_context.py)."""
    torch.manual_seed(seed)
    cfg = ControllerConfig(k_hat=K, expert_embed_dim=8, hidden=16, termination_bias_init=bias, **config)
    c = OptionController(L, N, TOPK, H, cfg)
    router_w = torch.randn(L, N, H)
    for i, layer in enumerate(c.layers):
        layer.init_selection_from_router(router_w[i], None)
    c.router_logits = lambda i, h: h.float() @ router_w[i].T
    return c, router_w


def run(c, B=3, prompt_len=5, steps=30, seed=0, mode="sample", done_at=None):
    """Prefill + `steps` decode calls with random hidden states; returns (state, masks per call)."""
    g = torch.Generator().manual_seed(seed)
    hs = torch.Generator().manual_seed(seed + 1000)
    state = c.new_state(B, generator=g, mode=mode)
    fn = c.mask_fn(state)
    prompt = [fn(i, torch.randn(B, prompt_len, H, generator=hs)) for i in range(L)]
    state.begin_generation()
    masks = []
    for t in range(1, steps + 1):
        if done_at is not None and t in done_at:
            state.mark_done(done_at[t])
        masks.append(torch.stack([fn(i, torch.randn(B, 1, H, generator=hs))[:, 0] for i in range(L)], 1))
    return state, prompt, torch.stack(masks, 1)  # (B, steps, L, N)


def test_prompt_routes_freely_and_t0_is_router_top_k_hat():
    c, router_w = make_controller()
    g = torch.Generator().manual_seed(0)
    state = c.new_state(2, generator=g)
    fn = c.mask_fn(state)
    hidden = torch.randn(2, 4, H)
    masks = [fn(i, hidden) for i in range(L)]
    for i in range(L):
        assert masks[i][:, :-1].all()  # prompt positions: the router's own routing
        top = (hidden[:, -1] @ router_w[i].T).topk(K).indices
        assert torch.equal(masks[i][:, -1], indices_to_mask(top, N))
    state.begin_generation()
    traj = state.trajectory()
    assert traj.options.shape == (2, 1, L, K) and traj.initial.all() and not traj.decisions.any()
    for i in range(L):
        assert torch.equal(traj.options[:, 0, i], (hidden[:, -1] @ router_w[i].T).topk(K).indices)
    torch.testing.assert_close(traj.hidden[:, 0, 1], hidden[:, -1])


def test_masks_persist_between_switches_and_change_only_on_decisions():
    c, _ = make_controller(bias=-1.0)  # β ≈ 0.27: several switches in 30 steps
    state, _, masks = run(c)
    traj = state.trajectory()
    assert masks.sum(-1).eq(K).all()
    all_masks = traj.option_masks(N)  # (B, 31, L, N)
    assert torch.equal(all_masks[:, 1:], masks)
    changed = (all_masks[:, 1:] != all_masks[:, :-1]).any(-1)
    d = traj.decisions[:, 1:]
    assert not (changed & ~d).any()  # no change without a termination decision
    assert d.sum() > 5
    # the new option at a switch is the recorded PL draw
    sel_masks = indices_to_mask(traj.selected, N)
    assert torch.equal(all_masks[traj.decisions], sel_masks[traj.decisions])


def test_kept_positions_record_the_candidate_drawn_not_the_kept_option():
    """The loads cost charges |ω̃_t \\ ω_{t-1}| for the candidate ω̃_t at every decision position, so the
    record holds the draw there too, also where d_t = 0 kept ω_{t-1}."""
    c, _ = make_controller(bias=-1.0)
    state, _, _ = run(c)
    traj = state.trajectory()
    kept = traj.decision_mask[..., None] & ~traj.decisions  # (B, T, L)
    options, candidates = traj.option_masks(N), indices_to_mask(traj.selected, N)
    assert torch.equal(options[kept], indices_to_mask(traj.options_prev, N)[kept])  # ω_t = ω_{t-1}
    assert candidates.sum(-1).eq(K).all()
    differs = (candidates != options).any(-1)
    assert kept.sum() > 5 and differs[kept].float().mean() > 0.5  # fresh draws, not copies of ω_{t-1}


def test_replay_equals_sample_mode_records():
    c, _ = make_controller(bias=-1.0)
    state, _, _ = run(c, steps=20)
    traj = state.trajectory()
    out = c.replay_trajectory(traj)
    dm = traj.decision_mask
    sw = traj.decisions  # log-probs are recorded where a selection happened
    assert sw.sum() > 0
    torch.testing.assert_close(out.log_prob[sw], traj.log_probs[sw], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.beta[dm], traj.betas[dm], rtol=0, atol=1e-6)
    assert out.beta.shape == out.q_prev.shape == out.q_exec.shape == out.value.shape == (3, 21, L)
    # Q(h, ω_t) equals Q(h, ω_{t-1}) where the option was kept, and replays with gradients
    kept = dm[..., None] & ~traj.decisions
    torch.testing.assert_close(out.q_exec[kept], out.q_prev[kept])
    (out.log_prob[traj.decisions].sum() + out.beta.sum() + out.q_exec.sum()).backward()
    assert c.layers[0].selection.weight.grad.abs().sum() > 0
    assert c.layers[1].termination[0].weight.grad.abs().sum() > 0


def test_done_rows_stop_deciding():
    c, _ = make_controller(bias=2.0)  # β ≈ 0.88: switches almost every step
    done = torch.tensor([False, True, False])
    state, _, masks = run(c, steps=12, done_at={5: done})
    traj = state.trajectory()
    assert traj.valid[1, :5].all() and not traj.valid[1, 5:].any()
    assert traj.valid[[0, 2]].all()
    assert not traj.decisions[1, 5:].any()
    assert (masks[1, 4:] == masks[1, 4:5]).all()  # the finished row keeps its last option
    assert traj.decisions[[0, 2], 5:].float().mean() > 0.6


def test_greedy_mode_and_multi_position_call_equals_single_steps():
    c, _ = make_controller(bias=0.0)
    hidden = torch.randn(2, 6, H)
    prompt = torch.randn(2, 3, H)
    outs = []
    for chunked in (False, True):
        state = c.new_state(2, mode="greedy")
        fn = c.mask_fn(state)
        for i in range(L):
            fn(i, prompt)
        state.begin_generation()
        if chunked:
            masks = torch.stack([fn(i, hidden) for i in range(L)], 2)
        else:
            masks = torch.stack([torch.stack([fn(i, hidden[:, s:s + 1])[:, 0] for i in range(L)], 1)
                                 for s in range(6)], 1)
        outs.append((masks, state.trajectory()))
    assert torch.equal(outs[0][0], outs[1][0])
    traj = outs[0][1]
    dm = traj.decision_mask
    assert torch.equal(traj.decisions[dm], traj.betas[dm] >= 0.5)


def test_termination_rate_matches_mean_beta():
    c, _ = make_controller(bias=-1.5)  # β ≈ 0.18
    state, _, _ = run(c, B=8, steps=100, seed=3)
    n = 8 * 100 * L
    beta = state.mean_beta()
    tol = 4 * (beta * (1 - beta) / n) ** 0.5  # 4 binomial standard errors
    assert abs(state.termination_rate() - beta) < tol
    assert state.switch_rate() <= state.termination_rate()


def test_begin_generation_needs_prompt_and_router_logits_needed():
    c, _ = make_controller()
    state = c.new_state(1)
    with pytest.raises(RuntimeError, match="prompt forward first"):
        state.begin_generation()
    c.router_logits = None
    with pytest.raises(ValueError, match="from_handle"):
        c.mask_fn(state)


def test_recorded_mask_fn_replays_masks_at_the_right_positions():
    option_masks = torch.zeros(2, 3, L, N, dtype=torch.bool)
    option_masks[..., :K] = True
    option_masks[:, 1, 1] = False
    option_masks[:, 1, 1, -K:] = True
    fn = recorded_mask_fn(option_masks, start=4)  # prompt of 5 tokens: controlled position 0 is index 4
    m = fn(1, torch.zeros(2, 8, H))
    assert m[:, :4].all() and m[:, 7:].all()
    assert torch.equal(m[:, 4:7], option_masks[:, :, 1])
