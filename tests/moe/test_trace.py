"""Tracing: raw logits, routed ids and hidden states per MoE layer, over prefill and cached decode calls."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import temoe
from conftest import build, random_masks


@pytest.mark.parametrize("model_type", ["gpt_oss", "deepseek_v3"])
def test_trace_matches_model_outputs(model_type):
    model = build(model_type)
    handle = temoe.wrap(model)
    ids = torch.randint(3, 128, (2, 4), generator=torch.Generator().manual_seed(7))
    block_inputs = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: block_inputs.__setitem__(i, a[0].clone()))
             for i, b in enumerate(handle.blocks)]
    with torch.no_grad(), handle.trace(hidden_states=True) as trace:
        out = model(ids, output_router_logits=True)
    for h in hooks:
        h.remove()
    assert trace.calls == [(2, 4)]
    for i in range(handle.num_layers):
        # transformers' own capture of router output[0]: our rows are the same raw logits in the same order.
        assert torch.equal(trace.router_logits(i), out.router_logits[i].float())
        flat = block_inputs[i].reshape(8, -1)  # (B, S, H) -> (B*S, H), row b*S + s
        assert torch.equal(trace.hidden_states(i), flat)
        with torch.no_grad():
            assert torch.equal(trace.expert_ids(i), handle.routers[i](flat)[2])


def test_trace_over_generation_and_restrict():
    model = build("mixtral")
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    ids = torch.randint(3, 128, (2, 4), generator=torch.Generator().manual_seed(8))
    masks = random_masks((L,), N, 3, seed=9)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad(), handle.trace() as free:
        model.generate(ids, **kwargs)
    with torch.no_grad(), handle.trace() as outer, handle.restrict(masks):
        with handle.trace(hidden_states=True) as inner:
            model.generate(ids, **kwargs)
    # prefill B*S = 8 rows, then two cached decode steps of B = 2 rows (the last new token is never fed back)
    assert free.calls == outer.calls == inner.calls == [(2, 4), (2, 1), (2, 1)]
    for i in range(L):
        assert free.router_logits(i).shape == (12, N) and free.expert_ids(i).shape == (12, handle.top_k)
        assert torch.equal(outer.expert_ids(i), inner.expert_ids(i))
        assert masks[i][inner.expert_ids(i)].all()
        assert not masks[i][free.expert_ids(i)].all()  # unrestricted routing does leave this mask
        # logits are raw (pre-mask): the first MoE layer's input does not depend on the mask (prefill rows)
    assert torch.equal(free.router_logits(0)[:8], inner.router_logits(0)[:8])
    assert inner.hidden_states(0).shape == (12, handle.hidden_size)
    with pytest.raises(RuntimeError, match="hidden_states=True"):
        free.hidden_states(0)
    with pytest.raises(IndexError, match="valid: 0..1"):
        free.router_logits(2)


@pytest.mark.parametrize("model_type", ["gpt_oss", "qwen3_moe"])
def test_wrap_peft_model(model_type):
    """Wrapping works through peft (LoRA on attention, fused experts and the router itself)."""
    model = build(model_type)
    ids = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        ref = model(ids).logits
    spec = temoe.moe.arch.arch_spec(model_type)
    config = LoraConfig(r=2, lora_alpha=2, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        target_parameters=[*spec.expert_parameters, f"mlp.{spec.router_parameter}"])
    peft_model = get_peft_model(model, config)
    handle = temoe.wrap(peft_model)
    assert handle.model is peft_model and handle.num_layers == 2
    assert all(type(r).__name__ == spec.router_class for r in handle.routers)
    L, N = handle.num_layers, handle.num_experts
    masks = random_masks((L,), N, 3, seed=11)
    with torch.no_grad():
        with handle.restrict(torch.ones(L, N, dtype=torch.bool)):
            assert torch.equal(peft_model(ids).logits, ref)  # LoRA B = 0 at init: still the base model
        with handle.restrict(masks), handle.trace() as trace:
            assert torch.isfinite(peft_model(ids).logits).all()
    for i in range(L):
        assert masks[i][trace.expert_ids(i)].all()


@pytest.mark.parametrize("model_type", ["gpt_oss", "mixtral", "qwen3_moe"])
def test_handle_router_logits_recompute_the_traced_logits(model_type):
    """`handle.router_logits(i, hidden)`, h W^T + b from the current weights, equals the router's logits."""
    model = build(model_type)
    handle = temoe.wrap(model)
    ids = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), handle.trace(hidden_states=True) as trace:
        model(ids)
    for i in range(handle.num_layers):
        got = handle.router_logits(i, trace.hidden_states(i))  # (T, H) -> (T, N)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, trace.router_logits(i), rtol=1e-5, atol=1e-5)
