"""Greedy parity of the offloading engine with the plain model under the same routing, and reversibility."""

from __future__ import annotations

import pytest
import torch

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps, generate_offloaded
from temoe.testing import char_tokenizer, tiny_model

NEW = 8


def _static_mask(handle) -> torch.Tensor:
    mask = torch.zeros(handle.num_layers, handle.num_experts, dtype=torch.bool)
    mask[:, [0, 2, 3, 5]] = True   # k̂ = 4 of N = 8
    return mask


def _mask_fn(handle):
    """A stand-in controller: per layer, a position-dependent k̂ = 4 option that switches every 3 tokens."""
    calls = {}

    def fn(i, hidden):
        B, S, _ = hidden.shape
        t0 = calls.get(i, 0)
        calls[i] = t0 + S
        pos = torch.arange(t0, t0 + S)
        base = (pos // 3 + i) % handle.num_experts                          # (S,)
        ids = (base[:, None] + torch.arange(4)[None]) % handle.num_experts  # (S, 4)
        mask = torch.zeros(S, handle.num_experts, dtype=torch.bool).scatter(1, ids, True)
        return mask[None].expand(B, S, -1)

    return fn


def _reference(model, handle, ids, masks):
    with torch.no_grad():
        if masks is None:
            out = model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
        else:
            with handle.restrict(masks):
                out = model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def _engine_tokens(handle, policy, ids, masks):
    engine = OffloadEngine(handle, policy)
    try:
        tokens = list(decode_steps(engine, ids, NEW, masks=masks))
        for table in engine.tables:
            table.check()
        return tokens, engine
    finally:
        engine.release(0)
        engine.detach()


@pytest.mark.parametrize("model_type", ["gpt_oss", "mixtral"])
@pytest.mark.parametrize("case", ["option-static", "option-maskfn", "lru-2", "lru-3", "full", "full-masked"])
def test_greedy_parity(model_type, case):
    model = tiny_model(model_type)
    handle = temoe.wrap(model)
    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    mode, _, arg = case.partition("-")
    L, N = handle.num_layers, handle.num_experts
    if mode == "option":
        masks_ref = _static_mask(handle) if arg == "static" else _mask_fn(handle)
        masks_eng = _static_mask(handle) if arg == "static" else _mask_fn(handle)   # fresh stand-in state
        policy = make_policy("option", L, N, expert_budget=4)
    elif mode == "lru":
        masks_ref = masks_eng = None
        policy = make_policy("lru", L, N, expert_budget=int(arg))
    else:
        masks_ref = masks_eng = _static_mask(handle) if arg == "masked" else None
        policy = make_policy("full", L, N)
    expected = _reference(model, handle, ids, masks_ref)
    got, engine = _engine_tokens(handle, policy, ids, masks_eng)
    assert got == expected
    if mode == "lru":
        assert engine.transfer.loads_critical > 0          # a small budget really misses
    if case == "option-maskfn":
        assert engine.routing.switches > 0                 # the stand-in controller really switches
    if mode == "full":
        assert engine.transfer.h2d_loads == 0


def test_detach_restores_model_exactly():
    model = tiny_model("qwen3_moe")
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(ids).logits
    handle = temoe.wrap(model)
    engine = OffloadEngine(handle, make_policy("lru", handle.num_layers, handle.num_experts, expert_budget=2))
    assert all(e.gate_up_proj.numel() == 0 for e in handle.experts)   # weights left the model
    engine.detach()
    handle.unwrap()
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def test_routed_expert_not_resident_fails_loudly():
    model = tiny_model("mixtral")
    handle = temoe.wrap(model)
    mask = _static_mask(handle)
    policy = make_policy("static", handle.num_layers, handle.num_experts, static_mask=mask)
    engine = OffloadEngine(handle, policy)
    ids = torch.randint(3, 128, (1, 1))
    try:
        # Unrestricted routing under a static residency of 4 experts: the base router picks others.
        with pytest.raises(RuntimeError, match="need|not resident"):
            for _ in range(6):
                with torch.no_grad(), engine.step(0, None, batch_shape=(1, 1), prefill=False):
                    model(input_ids=ids)
                ids = torch.randint(3, 128, (1, 1))
    finally:
        engine.detach()


def test_generate_offloaded_contract():
    model = tiny_model("gpt_oss")
    tok = char_tokenizer()
    handle = temoe.wrap(model)
    mask = _static_mask(handle)
    pieces = []
    text, stats = generate_offloaded(model, tok, "Hello there", 6, masks=mask, handle=handle,
                                     stream_callback=pieces.append)
    assert "".join(pieces) == text
    assert stats["serve/new_tokens"] == 6 and stats["serve/mode"] == "option"
    assert stats["serve/expert_budget"] == 4 and stats["serve/resident_expert_fraction"] == 0.5
    for key in ("serve/ttft_ms", "serve/decode_tokens_per_s", "serve/tpot_ms_p99", "serve/bytes_per_token",
                "serve/vram_resident_expert_bytes", "serve/vram_kv_cache_bytes", "serve/switch_rate"):
        assert key in stats
    with pytest.raises(ValueError, match="needs a controller or masks"):
        generate_offloaded(model, tok, "Hi", 2, mode="option", handle=handle)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v3"])
def test_lru_parity_other_architectures(model_type):
    """Shared experts (qwen2_moe, deepseek_v3), dense first layers (deepseek_v3) and the other routers."""
    model = tiny_model(model_type)
    handle = temoe.wrap(model)
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    expected = _reference(model, handle, ids, None)
    policy = make_policy("lru", handle.num_layers, handle.num_experts, expert_budget=3)
    got, _ = _engine_tokens(handle, policy, ids, None)
    assert got == expected
