"""REAP saliency against a brute-force per-token computation: each routed (token, expert) pair's gate weight
from the router module's own forward times the norm of that one expert's output on that one token."""

import pytest
import torch

import temoe
from temoe.baselines.reap import expert_saliency, reap_masks
from temoe.testing import tiny_model


def _brute_force(handle, input_ids, attn):
    L, N = handle.num_layers, handle.num_experts
    total, count = torch.zeros(L, N), torch.zeros(L, N)
    with torch.no_grad(), handle.trace(hidden_states=True) as trace:
        handle.model(input_ids=input_ids, attention_mask=attn, use_cache=False)
    for i in range(L):
        hidden = trace.hidden_states(i)
        for row in torch.nonzero(attn.flatten()).flatten().tolist():
            x = hidden[row:row + 1]
            with torch.no_grad():
                _, weights, ids = handle.routers[i](x)  # the router's own rule, no mask installed
                for w, e in zip(weights[0].tolist(), ids[0].tolist()):
                    out = handle.experts[i](x, torch.tensor([[e]]), torch.ones(1, 1))
                    total[i, e] += w * float(out.norm())
                    count[i, e] += 1
    return total / count.clamp(min=1), count


@pytest.mark.parametrize("model_type", ["gpt_oss", "qwen2_moe"])
def test_saliency_matches_brute_force(model_type):
    handle = temoe.wrap(tiny_model(model_type, seed=2))
    input_ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    attn = torch.ones(2, 7, dtype=torch.long)
    attn[1, 5:] = 0  # right padding must not count
    expected, count = _brute_force(handle, input_ids, attn)
    got = expert_saliency(handle, input_ids, attn)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert bool((got[count == 0] == 0).all())  # never routed: zero
    assert int(count.sum()) == 12 * handle.top_k * handle.num_layers  # 7 + 5 real tokens


def test_reap_masks_keep_k_hat_per_layer():
    handle = temoe.wrap(tiny_model("gpt_oss", seed=2))
    masks = reap_masks(handle, [[5, 6, 7, 8, 9], [10, 11, 12]], k_hat=3, batch_size=1)
    assert masks.shape == (handle.num_layers, handle.num_experts) and masks.sum(-1).tolist() == [3, 3]
