"""Family routing rules under a mask, against hand-computed values."""

import math

import pytest
import torch

from temoe.moe.routing import sigmoid_group, softmax_topk, topk_softmax

LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
ALLOWED = torch.tensor([[True, False, True, True]])  # expert 1 (the best logit) is disallowed
E = math.e


def _sorted(weights, ids):
    order = ids.argsort(dim=-1)
    return weights.gather(-1, order), ids.gather(-1, order)


def test_topk_softmax():
    # allowed logits {0: 1, 2: 2, 3: 0} -> top-2 ids [2, 0]; softmax([2, 1]) = [e/(e+1), 1/(e+1)]
    weights, ids = topk_softmax(LOGITS, ALLOWED, k=2, weights_dtype=torch.float32)
    assert ids.tolist() == [[2, 0]]
    assert torch.allclose(weights, torch.tensor([[E / (E + 1), 1 / (E + 1)]]))


def test_softmax_topk_without_and_with_renormalisation():
    # softmax over the allowed set only: Z = e^1 + e^2 + e^0 = 11.107; p2 = e^2/Z = 0.6652, p0 = e/Z = 0.2447
    z = E + E**2 + 1
    weights, ids = softmax_topk(LOGITS, ALLOWED, k=2, renormalize=False, weights_dtype=torch.float32)
    assert ids.tolist() == [[2, 0]]
    assert torch.allclose(weights, torch.tensor([[E**2 / z, E / z]]))
    # renormalised over the k picks: e^2/(e^2+e) = e/(e+1)
    weights, _ = softmax_topk(LOGITS, ALLOWED, k=2, renormalize=True, weights_dtype=torch.bfloat16)
    assert weights.dtype == torch.bfloat16
    assert torch.allclose(weights.float(), torch.tensor([[E / (E + 1), 1 / (E + 1)]]), atol=4e-3)


SIG = [1 / (1 + math.exp(-x)) for x in (3.0, 2.0, 0.0, -1.0)]  # 0.9526, 0.8808, 0.5, 0.2689


def _group(allowed, bias=(0.0, 0.0, 0.0, 0.0), topk_group=1):
    # N = 4 in 2 groups {0,1} {2,3}, k = 2, renormalised, scaling 1
    return _sorted(*sigmoid_group(torch.tensor([[3.0, 2.0, 0.0, -1.0]]), torch.tensor([allowed]), k=2,
                                  correction_bias=torch.tensor(bias), num_group=2, topk_group=topk_group,
                                  renormalize=True, scaling=1.0))


def test_sigmoid_group_ranks_groups_by_allowed_experts():
    # group 0 holds one allowed expert (score ~ -1e9 + 0.95), group 1 two (0.5 + 0.27): group 1 wins.
    weights, ids = _group([True, False, True, True])
    assert ids.tolist() == [[2, 3]]
    assert torch.allclose(weights, torch.tensor([[SIG[2], SIG[3]]]) / (SIG[2] + SIG[3]))


def test_sigmoid_group_fallback_ignores_groups():
    # allowed {0, 2}: each group holds one; group 0 (~ -1e9 + 0.95) beats group 1 (~ -1e9 + 0.5) but has
    # only 1 < k allowed expert -> fall back to all allowed experts: ids {0, 2}, weights 0.95, 0.5 renormed
    weights, ids = _group([True, False, True, False])
    assert ids.tolist() == [[0, 2]]
    assert torch.allclose(weights, torch.tensor([[SIG[0], SIG[2]]]) / (SIG[0] + SIG[2]))


def test_sigmoid_group_masks_selection_scores_not_logits():
    # expert 3 has correction bias 5 (choice score 5.27): with -inf only on its logit, sigmoid -> 0 + 5 would
    # still win. Masked selection scores keep it out: ids {0, 1}.
    weights, ids = _group([True, True, True, False], bias=(0.0, 0.0, 0.0, 5.0), topk_group=2)
    assert ids.tolist() == [[0, 1]]
    assert torch.allclose(weights, torch.tensor([[SIG[0], SIG[1]]]) / (SIG[0] + SIG[1]))


@pytest.mark.parametrize("fn", ["topk_softmax", "softmax_topk", "sigmoid_group"])
def test_all_allowed_random_rows_keep_top_choice(fn):
    """Sanity on many rows: with everything allowed the picks are the unmasked top-k of the family's score."""
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    allowed = torch.ones(64, 8, dtype=torch.bool)
    if fn == "topk_softmax":
        ids = topk_softmax(logits, allowed, 2, torch.float32)[1]
    elif fn == "softmax_topk":
        ids = softmax_topk(logits, allowed, 2, False, torch.float32)[1]
    else:
        ids = sigmoid_group(logits, allowed, 2, torch.zeros(8), 1, 1, False, 1.0)[1]
    assert torch.equal(ids.sort(dim=-1).values, logits.topk(2, dim=-1).indices.sort(dim=-1).values)
