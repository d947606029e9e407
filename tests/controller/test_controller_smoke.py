"""Smoke test: the controller drives the masked routing of a tiny gpt-oss model during generation."""

import pytest
import torch

import temoe
from temoe.controller import ControllerConfig, OptionController, recorded_mask_fn
from temoe.metrics import switch_rate
from temoe.testing import TINY_MODEL_TYPES, tiny_model

B, PROMPT, STEPS, K_HAT = 8, 5, 20, 4  # B·STEPS·L = 320 decisions, few forward calls


def generate(model, handle, controller, state, prompt):
    """Prefill, begin_generation, then STEPS cached decode steps with sampled tokens."""
    g = torch.Generator().manual_seed(1)
    tokens = []
    with handle.restrict(controller.mask_fn(state)), torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        state.begin_generation()
        for _ in range(STEPS):
            nxt = torch.multinomial(out.logits[:, -1].float().softmax(-1), 1, generator=g)
            tokens.append(nxt)
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(tokens, 1)


def test_controller_in_masked_routing_of_tiny_model():
    model = tiny_model("gpt_oss", seed=0)
    handle = temoe.wrap(model)
    torch.manual_seed(0)
    controller = OptionController.from_handle(handle, ControllerConfig(k_hat=K_HAT, expert_embed_dim=16,
                                                                       hidden=32, termination_bias_init=-1.0))
    for i, layer in enumerate(controller.layers):
        torch.testing.assert_close(layer.selection.weight, handle.router_weight(i))
    prompt = torch.randint(3, 128, (B, PROMPT), generator=torch.Generator().manual_seed(0))
    state = controller.new_state(B, generator=torch.Generator().manual_seed(2))
    with handle.trace(hidden_states=True) as trace:
        tokens = generate(model, handle, controller, state, prompt)
    traj = state.trajectory()
    L, N = handle.num_layers, handle.num_experts
    assert tokens.shape == (B, STEPS)
    assert traj.options.shape == (B, STEPS + 1, L, K_HAT)  # t = 0 at the last prompt position
    assert trace.calls == [(B, PROMPT)] + [(B, 1)] * STEPS

    masks = traj.option_masks(N)  # (B, T, L, N)
    for i in range(L):
        ids = trace.expert_ids(i)  # (B·PROMPT + STEPS·B, k)
        hidden = trace.hidden_states(i).float()
        # t = 0 (row b·PROMPT + PROMPT-1 of the prefill call): ω_0 = router top-k̂ and routing inside it
        last = torch.arange(B) * PROMPT + PROMPT - 1
        torch.testing.assert_close(traj.hidden[:, 0, i], hidden[last])
        assert torch.equal(traj.options[:, 0, i], trace.router_logits(i)[last].topk(K_HAT).indices)
        routed = [ids[last]] + [ids[B * PROMPT + j * B: B * PROMPT + (j + 1) * B] for j in range(STEPS)]
        routed = torch.stack(routed, 1)  # (B, T, k)
        # every routed expert lies in the current option
        assert masks[:, :, i].gather(-1, routed).all()
        decode_hidden = hidden[B * PROMPT:].view(STEPS, B, -1).transpose(0, 1)  # (B, STEPS, H)
        torch.testing.assert_close(traj.hidden[:, 1:, i], decode_hidden)

    # masks persist between switches: a change only where d_t = 1
    changed = (masks[:, 1:] != masks[:, :-1]).any(-1)
    assert not (changed & ~traj.decisions[:, 1:]).any()
    assert changed.any()

    # untrained controller: termination rate ≈ mean β (β ≈ σ(-1) = 0.27), switches ≤ terminations
    n = B * STEPS * L
    beta = state.mean_beta()
    assert abs(beta - 0.269) < 0.01
    assert abs(state.termination_rate() - beta) < 4 * (beta * (1 - beta) / n) ** 0.5
    assert state.switch_rate() <= state.termination_rate()
    # a re-selection can redraw the same set, so the switch rate sits a little below; still ≈ mean β
    assert abs(state.switch_rate() - beta) < 4 * (beta * (1 - beta) / n) ** 0.5
    per_row = [switch_rate(masks[b]) for b in range(B)]
    assert abs(sum(per_row) / B - state.switch_rate()) < 1e-6

    # replay-mode log-probs equal the sample-mode ones recorded during generation
    out = controller.replay_trajectory(traj)
    dm = traj.decision_mask
    sw = traj.decisions  # log-probs are recorded where a selection happened
    assert sw.sum() > 0
    torch.testing.assert_close(out.log_prob[sw], traj.log_probs[sw], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.beta[dm], traj.betas[dm], rtol=0, atol=1e-6)

    # a teacher-forced forward under the recorded masks routes exactly as generation did
    full = torch.cat([prompt, tokens[:, :-1]], 1)  # positions PROMPT-1 .. end are t = 0 .. STEPS
    with handle.restrict(recorded_mask_fn(masks, start=PROMPT - 1)), handle.trace() as replay_trace:
        with torch.no_grad():
            model(input_ids=full)
    for i in range(L):
        ids = replay_trace.expert_ids(i).view(B, PROMPT + STEPS - 1, -1)[:, PROMPT - 1:]
        gen_ids = trace.expert_ids(i)
        gen = torch.stack([gen_ids[torch.arange(B) * PROMPT + PROMPT - 1]]
                          + [gen_ids[B * PROMPT + j * B: B * PROMPT + (j + 1) * B] for j in range(STEPS)], 1)
        assert torch.equal(ids.sort(-1).values, gen[:, :STEPS].sort(-1).values)
    handle.unwrap()


@pytest.mark.parametrize("model_type", [t for t in TINY_MODEL_TYPES if t != "gpt_oss"])
def test_from_handle_on_other_architectures(model_type):
    model = tiny_model(model_type, seed=0)
    handle = temoe.wrap(model)
    controller = OptionController.from_handle(handle, ControllerConfig(k_hat=4, expert_embed_dim=8, hidden=16,
                                                                       termination_bias_init=0.0))
    prompt = torch.randint(3, 128, (2, 4), generator=torch.Generator().manual_seed(0))
    state = controller.new_state(2, generator=torch.Generator().manual_seed(0))
    with handle.trace() as trace, handle.restrict(controller.mask_fn(state)), torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        state.begin_generation()
        for _ in range(4):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    masks = state.option_masks()  # (2, 5, L, N)
    for i in range(handle.num_layers):
        ids = trace.expert_ids(i)
        routed = torch.stack([ids[torch.tensor([3, 7])]] + [ids[8 + 2 * j: 10 + 2 * j] for j in range(4)], 1)
        assert masks[:, :, i].gather(-1, routed).all()
        assert torch.equal(state.trajectory().options[:, 0, i],
                           trace.router_logits(i)[torch.tensor([3, 7])].topk(4).indices)
    handle.unwrap()
