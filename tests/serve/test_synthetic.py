"""Synthetic option policies: the random rule's masks against a plain reference that computes the router's
top-k̂ at every call (the policy computes it only when a row switches), over a prompt and many decode calls."""

from __future__ import annotations

import random

import pytest
import torch

import temoe
from temoe.serve.synthetic import SyntheticOptions
from temoe.testing import tiny_model


def _reference(handle, k_hat, switch_rate, seed):
    """Every call: router top-k̂ of every position; row b at position s switches when its draw < rate."""
    rng, option = random.Random(seed), {}

    def fn(i, hidden):
        B, S, _ = hidden.shape
        top = torch.zeros(B, S, handle.num_experts, dtype=torch.bool)
        top.scatter_(-1, handle.router_logits(i, hidden).topk(k_hat, dim=-1).indices, True)
        if i not in option:
            mask = torch.ones_like(top)
            mask[:, -1] = top[:, -1]
            option[i] = top[:, -1].clone()
            return mask
        rows = []
        for s in range(S):
            for b in range(B):
                if rng.random() < switch_rate:
                    option[i][b] = top[b, s]
            rows.append(option[i].clone())
        return torch.stack(rows, dim=1)

    return fn


@pytest.mark.parametrize("switch_rate", [0.0, 0.3, 1.0])
def test_random_rule_matches_reference(switch_rate):
    handle = temoe.wrap(tiny_model("gpt_oss"))
    syn = SyntheticOptions(handle, 4, rule="random", switch_rate=switch_rate, seed=3)
    fn, ref = syn.mask_fn(), _reference(handle, 4, switch_rate, seed=3)
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 5)] + [(2, 1)] * 30 + [(2, 3)] * 5  # prompt, one-token decode calls, multi-token calls
    last, changes = {}, 0
    for B, S in shapes:
        for i in range(handle.num_layers):
            hidden = torch.randn(B, S, handle.hidden_size, generator=gen)
            got, want = fn(i, hidden), ref(i, hidden)
            assert got.dtype == torch.bool and got.shape == want.shape
            assert torch.equal(got, want)
            changes += i in last and not torch.equal(last[i], got[:, -1])
            last[i] = got[:, -1]
    assert (got.sum(-1) == 4).all()
    assert (changes > 0) == (switch_rate > 0)  # the switching path ran (and only when it should)
