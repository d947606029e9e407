"""Restricted routing: routed experts stay inside the mask for every mask kind; outputs are finite; cached and
uncached greedy generation agree; bad masks fail with clear errors."""

import types

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import temoe
from conftest import ALL_MODEL_TYPES, build, random_masks
from temoe.testing import TINY_MODEL_TYPES

K_HAT = 3  # of N = 8, with k̃ = 2
B, S = 2, 5


def _mask_kinds(handle, seed):
    """The three mask kinds of `restrict`: static (L, N), per sequence (B, L, N), callable."""
    L, N = handle.num_layers, handle.num_experts
    projection = torch.randn(L, handle.hidden_size, N, generator=torch.Generator().manual_seed(seed))

    def from_hidden(i, hidden):  # deterministic in the hidden state, as a controller in greedy mode
        scores = hidden.float() @ projection[i]  # (B, S, H) @ (H, N) -> (B, S, N)
        picks = scores.topk(K_HAT, dim=-1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, picks, True)

    return {
        "static": random_masks((L,), N, K_HAT, seed),
        "per_sequence": random_masks((B, L), N, K_HAT, seed),
        "callable": from_hidden,
    }


def _allowed_rows(kind, masks, i, hidden):
    """bool (T, N) allowed experts of layer i for a call with block input hidden (B, S', H)."""
    b, s = hidden.shape[:2]
    if kind == "static":
        return masks[i].expand(b * s, -1)
    if kind == "per_sequence":
        return masks[:, i, None, :].expand(b, s, -1).reshape(b * s, -1)
    return masks(i, hidden).reshape(b * s, -1)


@pytest.mark.parametrize("model_type", ALL_MODEL_TYPES)
def test_routed_experts_stay_inside_mask(model_type):
    model = build(model_type)
    handle = temoe.wrap(model)
    ids = torch.randint(3, 128, (B, S), generator=torch.Generator().manual_seed(3))
    seen = []  # (layer, block input (B, S, H), top_k_index reaching the experts (T, k))
    block_inputs = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: block_inputs.__setitem__(i, a[0].clone()))
             for i, b in enumerate(handle.blocks)]
    hooks += [e.register_forward_pre_hook(lambda m, a, i=i: seen.append((i, block_inputs[i], a[1].clone())))
              for i, e in enumerate(handle.experts)]
    with torch.no_grad():
        free = model(ids).logits
        for kind, masks in _mask_kinds(handle, seed=4).items():
            seen.clear()
            with handle.restrict(masks), handle.trace() as trace:
                logits = model(ids).logits
            assert torch.isfinite(logits).all()
            assert not torch.equal(logits, free), f"{kind}: the mask had no effect"
            assert len(seen) == handle.num_layers
            for i, hidden, routed in seen:
                allowed = _allowed_rows(kind, masks, i, hidden)
                assert allowed.gather(1, routed).all(), f"{kind}: layer {i} routed outside the mask"
                assert torch.equal(trace.expert_ids(i), routed)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_generation_with_and_without_cache_agree(model_type):
    model = build(model_type)
    handle = temoe.wrap(model)
    ids = torch.randint(3, 128, (B, S), generator=torch.Generator().manual_seed(5))
    for kind, masks in _mask_kinds(handle, seed=6).items():
        runs = []
        for use_cache in (True, False):
            with torch.no_grad(), handle.restrict(masks):
                runs.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                           do_sample=False, use_cache=use_cache, pad_token_id=0))
        assert torch.equal(runs[0], runs[1]), kind


def test_mask_errors():
    model = build("gpt_oss")
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    ids = torch.randint(3, 128, (B, S))
    cases = [
        (torch.ones(L, N), ValueError, "dtype torch.bool"),
        (torch.ones(L + 1, N, dtype=torch.bool), ValueError, r"shape \(3, 8\); expected \(L, N\) = \(2, 8\)"),
        (torch.ones(N, dtype=torch.bool), ValueError, r"shape \(8,\)"),
        (random_masks((L,), N, 1, 0), ValueError, r"allow only 1 experts.*k̃ = 2 <= k̂ <= N = 8"),
        ("all", TypeError, "callable"),
    ]
    for masks, error, message in cases:
        with pytest.raises(error, match=message):
            with handle.restrict(masks):
                pass
    with pytest.raises(ValueError, match=r"batch 3 but the forward call has batch 2"):
        with torch.no_grad(), handle.restrict(torch.ones(3, L, N, dtype=torch.bool)):
            model(ids)
    bad_fns = [
        (lambda i, h: torch.ones(h.shape[0], N, dtype=torch.bool),
         r"returned \(2, 8\).*expected bool of shape \(2, 5, 8\)"),
        (lambda i, h: torch.ones(*h.shape[:2], N), r"torch.float32.*expected bool"),
        (lambda i, h: random_masks(tuple(h.shape[:2]), N, 1, 0), r"allow only 1 experts"),
    ]
    for fn, message in bad_fns:
        with pytest.raises(ValueError, match=message):
            with torch.no_grad(), handle.restrict(fn):
                model(ids)
    with pytest.raises(RuntimeError, match="already active"):
        everything = torch.ones(L, N, dtype=torch.bool)
        with handle.restrict(everything), handle.restrict(everything):
            pass


def test_wrap_errors():
    llama = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("llama", vocab_size=16, hidden_size=16, intermediate_size=16,
                                           num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match=r"unsupported model_type='llama'; supported: .*gpt_oss.*mixtral"):
        temoe.wrap(llama)
    model = build("mixtral")
    temoe.wrap(model)
    with pytest.raises(RuntimeError, match="already wrapped"):
        temoe.wrap(model)


def test_bypassed_router_fails_loudly():
    """A block that skips its router (as MegaBlocks kernels and native MXFP4 do) must not pass silently."""
    model = build("gpt_oss")
    handle = temoe.wrap(model)
    block = handle.blocks[1]
    block.forward = types.MethodType(lambda self, h: (torch.zeros_like(h), None), block)
    ids = torch.randint(3, 128, (1, 4))
    with torch.no_grad():
        model(ids)  # nothing active: the wrapper stays out of the way
        for context in (handle.restrict(torch.ones(2, 8, dtype=torch.bool)), handle.trace()):
            with pytest.raises(RuntimeError, match=r"MoE layer 1 \(decoder layer 1\) did not fire"):
                with context:
                    model(ids)
