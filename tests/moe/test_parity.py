"""Parity: wrapped with an all-allowed mask is bit-identical to unwrapped; unwrap restores the model."""

import pytest
import torch

import temoe
from conftest import ALL_MODEL_TYPES, build
from temoe.testing import TINY_MODEL_TYPES

DTYPES = (torch.float32, torch.bfloat16)


def _prefill_and_decode(model, ids):
    """Logits of a prefill over `ids` (B, S) and of one cached decode step; shapes (B, S, V), (B, 1, V)."""
    out = model(ids, use_cache=True)
    step = model(ids[:, -1:].flip(0), past_key_values=out.past_key_values, use_cache=True)
    return out.logits, step.logits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model_type", ALL_MODEL_TYPES)
def test_all_allowed_is_bit_identical(model_type, dtype):
    model = build(model_type, dtype)
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_prefill, ref_decode = _prefill_and_decode(model, ids)
        handle = temoe.wrap(model)
        everything = torch.ones(handle.num_layers, handle.num_experts, dtype=torch.bool)
        # Static mask: the hook re-routes unconditionally (no early exit), so this checks routing.py's casts.
        with handle.restrict(everything), handle.trace() as trace:
            prefill, decode = _prefill_and_decode(model, ids)

        def all_allowed(i, hidden):  # hidden (B, S, H) -> (B, S, N)
            return torch.ones(*hidden.shape[:2], handle.num_experts, dtype=torch.bool)

        with handle.restrict(all_allowed):
            fn_prefill, fn_decode = _prefill_and_decode(model, ids)
    assert trace.calls == [(2, 6), (2, 1)]
    for got in (prefill, fn_prefill):
        assert torch.equal(got, ref_prefill)
    for got in (decode, fn_decode):
        assert torch.equal(got, ref_decode)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_unwrap_restores_model(model_type):
    model = build(model_type)
    ids = torch.randint(3, 128, (1, 5), generator=torch.Generator().manual_seed(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    with torch.no_grad():
        ref = model(ids).logits
        handle = temoe.wrap(model)
        assert list(model.state_dict()) == list(state)
        # a restrictive mask really changes the model while wrapped ...
        keep = torch.zeros(handle.num_layers, handle.num_experts, dtype=torch.bool)
        keep[:, : handle.top_k] = True
        with handle.restrict(keep):
            assert not torch.equal(model(ids).logits, ref)
        handle.unwrap()
        # ... and after unwrap nothing of the wrapper is left.
        assert torch.equal(model(ids).logits, ref)
    assert all(not r._forward_hooks and not b._forward_hooks and not b._forward_pre_hooks
               for r, b in zip(handle.routers, handle.blocks))
    assert [type(m) for m in model.modules()] == classes
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="unwrapped"):
        with handle.restrict(keep):
            pass
    temoe.wrap(model).unwrap()  # wrapping again after unwrap is allowed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model_type", ALL_MODEL_TYPES)
def test_cuda_bf16_parity_and_restriction(model_type):
    model = build(model_type, torch.bfloat16).cuda()
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        ref_prefill, ref_decode = _prefill_and_decode(model, ids)
        handle = temoe.wrap(model)
        L, N = handle.num_layers, handle.num_experts
        with handle.restrict(torch.ones(L, N, dtype=torch.bool)):
            prefill, decode = _prefill_and_decode(model, ids)
        masks = torch.zeros(L, N, dtype=torch.bool)
        masks[:, 1:4] = True
        with handle.restrict(masks), handle.trace() as trace:
            restricted = model(ids).logits
    assert torch.equal(prefill, ref_prefill) and torch.equal(decode, ref_decode)
    assert torch.isfinite(restricted).all()
    assert all(masks[i][trace.expert_ids(i)].all() for i in range(L))
