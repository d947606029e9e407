"""The engine driven by a real OptionController (greedy): same tokens as the plain model under the same
controller routing, with switches actually happening; and `generate_offloaded(controller=...)`."""

from __future__ import annotations

import torch
from transformers import DynamicCache

import temoe
from temoe.controller import ControllerConfig, OptionController
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps, generate_offloaded
from temoe.testing import char_tokenizer, tiny_model

NEW = 8


def _controller(handle):
    torch.manual_seed(0)
    # termination bias +3: β ≈ 0.95, so greedy mode (d = β >= 0.5) re-selects at most steps -> many switches
    config = ControllerConfig(k_hat=4, expert_embed_dim=8, hidden=16, termination_bias_init=3.0)
    return OptionController.from_handle(handle, config).eval()


def _plain_greedy(model, handle, controller, ids):
    """Reference: the un-offloaded model, prompt forward, begin_generation, then one cached step per token."""
    state = controller.new_state(1, mode="greedy")
    cache, x, out = DynamicCache(config=model.config), ids, []
    with torch.no_grad(), handle.restrict(controller.mask_fn(state)):
        for step in range(NEW):
            logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1]
            if step == 0:
                state.begin_generation()
            x = logits.argmax(-1, keepdim=True)
            out.append(int(x))
    return out, state


def test_controller_parity_with_switches():
    model = tiny_model("qwen3_moe")
    handle = temoe.wrap(model)
    controller = _controller(handle)
    ids = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(2))
    expected, ref_state = _plain_greedy(model, handle, controller, ids)
    assert ref_state.switch_rate() > 0
    policy = make_policy("option", handle.num_layers, handle.num_experts, expert_budget=4)
    engine = OffloadEngine(handle, policy)
    state = controller.new_state(1, mode="greedy")
    got = list(decode_steps(engine, ids, NEW, masks=controller.mask_fn(state),
                            on_prefill_done=state.begin_generation))
    engine.release(0)
    assert got == expected
    assert engine.routing.switches > 0
    assert engine.transfer.loads_critical + engine.transfer.loads_background > 0
    assert engine.transfer.loads_prefill > 0      # the prompt routes freely: streamed through staging
    engine.detach()


def test_generate_offloaded_with_controller():
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    controller = _controller(handle)
    text, stats = generate_offloaded(model, char_tokenizer(), "Hello there", 5, controller=controller,
                                     handle=handle)
    assert stats["serve/controller"] is True and stats["serve/expert_budget"] == 4
    assert stats["serve/vram_staging_bytes"] > 0 and stats["serve/switch_rate"] is not None
