"""Switch-rate definitions (§2) against hand-worked examples."""

import pytest
import torch

from temoe.metrics import router_option_masks, router_switch_rate, switch_rate


def _masks(sets: list[list[set[int]]], n: int) -> torch.Tensor:
    """bool (T, L, N) from sets[t][l]."""
    out = torch.zeros(len(sets), len(sets[0]), n, dtype=torch.bool)
    for t, row in enumerate(sets):
        for layer, members in enumerate(row):
            out[t, layer, list(members)] = True
    return out


# T = 3, L = 2, N = 3.
# layer 0: {0,1} {0,1} {1,2} -> changes at t=2 only         -> 1/2
# layer 1: {0}   {1}   {0}   -> changes at t=1 and t=2      -> 2/2 = 1
# mean over layers: (0.5 + 1) / 2 = 0.75
MASKS = _masks([[{0, 1}, {0}], [{0, 1}, {1}], [{1, 2}, {0}]], n=3)


def test_switch_rate_hand_worked():
    assert switch_rate(MASKS) == pytest.approx(0.75)
    assert torch.allclose(switch_rate(MASKS, per_layer=True), torch.tensor([0.5, 1.0]))


def test_switch_rate_batched_is_mean_over_sequences():
    # second sequence never changes: per layer (0.5 + 0) / 2 = 0.25 and (1 + 0) / 2 = 0.5; mean 0.375
    still = MASKS[:1].expand(3, 2, 3)
    batch = torch.stack([MASKS, still])
    assert torch.allclose(switch_rate(batch, per_layer=True), torch.tensor([0.25, 0.5]))
    assert switch_rate(batch) == pytest.approx(0.375)


def test_switch_rate_bad_input():
    with pytest.raises(ValueError, match="bool"):
        switch_rate(MASKS.float())
    with pytest.raises(ValueError, match="T = 1"):
        switch_rate(MASKS[:1])


# L = 2, N = 4, k̃ = 1, T = 4. logits[t][l] and routed ids[t][l]:
# layer 0: routed = top logit.  t0 [4,3,1,0]->0  t1 [1,4,3,0]->1  t2 [0,1,4,3]->2  t3 [3,0,1,4]->3
# layer 1: routed is NOT always the top logit (as with DeepSeek's biased selection):
#          t0 [4,3,1,0]->2  t1 [4,0,1,2]->0  t2 [1,5,2,3]->1  t3 [0,1,5,2]->2
LOGITS = torch.tensor([
    [[4, 3, 1, 0], [4, 3, 1, 0]],
    [[1, 4, 3, 0], [4, 0, 1, 2]],
    [[0, 1, 4, 3], [1, 5, 2, 3]],
    [[3, 0, 1, 4], [0, 1, 5, 2]],
], dtype=torch.float32)
IDS = torch.tensor([[[0], [2]], [[1], [0]], [[2], [1]], [[3], [2]]])


def test_router_switch_rate_k_hat_equals_k_tilde():
    # k̂ = k̃ = 1: the routed set changes at every step in both layers: 3/3 = 1 each -> 1.0
    assert router_switch_rate(LOGITS, IDS, k_hat=1) == pytest.approx(1.0)


def test_router_switch_rate_k_hat_2():
    # layer 0: ω0 = top-2 {0,1}; t1 routed 1 in ω keep; t2 routed 2 not in -> switch, ω = top-2 at t2 = {2,3};
    #          t3 routed 3 in ω keep.                                        1 switch / 3 = 1/3
    # layer 1: ω0 = routed {2} + best other by logit {0} = {0,2}; t1 routed 0 in ω keep; t2 routed 1 not in
    #          -> ω = {1} + {3} = {1,3}; t3 routed 2 not in -> ω = {2} + {3} = {2,3}.  2 switches / 3 = 2/3
    # mean: (1/3 + 2/3) / 2 = 0.5
    expected = _masks([[{0, 1}, {0, 2}], [{0, 1}, {0, 2}], [{2, 3}, {1, 3}], [{2, 3}, {2, 3}]], n=4)
    assert torch.equal(router_option_masks(LOGITS, IDS, k_hat=2), expected)
    per_layer = router_switch_rate(LOGITS, IDS, k_hat=2, per_layer=True)
    assert torch.allclose(per_layer, torch.tensor([1 / 3, 2 / 3]))
    assert router_switch_rate(LOGITS, IDS, k_hat=2) == pytest.approx(0.5)


def test_router_switch_rate_k_hat_n_never_switches():
    # k̂ = N = 4: every routed set lies inside the full mask -> 0 switches
    assert router_switch_rate(LOGITS, IDS, k_hat=4) == 0.0


def test_router_switch_rate_bad_k_hat():
    with pytest.raises(ValueError, match="k_hat=0"):
        router_switch_rate(LOGITS, IDS, k_hat=0)
    with pytest.raises(ValueError, match="k_hat=5.*N = 4"):
        router_switch_rate(LOGITS, IDS, k_hat=5)
    with pytest.raises(ValueError, match="expert_ids"):
        router_switch_rate(LOGITS, IDS[:3], k_hat=2)
