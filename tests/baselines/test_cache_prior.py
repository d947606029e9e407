"""Cache-conditional routing: λ = 0 is the base model bit for bit; λ > 1 with a k̃-slot cache freezes the
routed set after the prompt (every resident expert outranks every other one)."""

import pytest
import torch

import temoe
from temoe.baselines.cache_prior import CachePriorSource
from temoe.rollout.masks import BaseSource
from temoe.rollout.runner import GenerationConfig, generate
from temoe.testing import tiny_model

GREEDY = GenerationConfig(max_new_tokens=10, temperature=0.0, batch_size=2, seed=0)
PROMPTS = ["a longer first prompt", "hi"]


@pytest.mark.parametrize("model_type", ["gpt_oss", "mixtral", "qwen2_moe"])
def test_zero_strength_is_bit_identical(model_type, tokenizer):
    handle = temoe.wrap(tiny_model(model_type, seed=1))
    base = generate(handle, tokenizer, PROMPTS, BaseSource(4), GREEDY, torch.Generator(), eos_ids=set())
    prior = generate(handle, tokenizer, PROMPTS, CachePriorSource(handle, 4, budget=4, strength=0.0), GREEDY,
                     torch.Generator(), eos_ids=set())
    for a, b in zip(base, prior):
        assert a.token_ids == b.token_ids
        assert torch.equal(a.router_logits, b.router_logits) and torch.equal(a.expert_ids, b.expert_ids)


def test_full_strength_with_k_slots_never_changes_the_routed_set(tokenizer):
    handle = temoe.wrap(tiny_model("gpt_oss", seed=1))
    k = handle.top_k
    base = generate(handle, tokenizer, PROMPTS, BaseSource(k), GREEDY, torch.Generator(), eos_ids=set())
    prior = generate(handle, tokenizer, PROMPTS, CachePriorSource(handle, k, budget=k, strength=1.5), GREEDY,
                     torch.Generator(), eos_ids=set())
    assert any(not torch.equal(g.expert_ids.sort(-1).values, g.expert_ids[:1].sort(-1).values) for g in base)
    for g in prior:
        ids = g.expert_ids.sort(-1).values  # (T, L, k)
        assert torch.equal(ids, ids[:1].expand_as(ids))
        assert g.switch_rate == 0.0


def test_negative_strength_is_refused():
    handle = temoe.wrap(tiny_model("gpt_oss"))
    with pytest.raises(ValueError, match="strength must be >= 0"):
        CachePriorSource(handle, 4, budget=4, strength=-0.1)
