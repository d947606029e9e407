"""Option utilities: mask <-> indices, Plackett–Luce log-prob (brute force) and Gumbel-top-k sampling."""

import itertools
import math

import pytest
import torch

from temoe.options import (
    indices_to_mask,
    initial_option,
    mask_to_indices,
    plackett_luce_log_prob,
    sample_plackett_luce,
)


def pl_prob_loop(c: list[float], ordered: tuple[int, ...]) -> float:
    """Eq. 5 written as the sequential product, in plain Python."""
    p, remaining = 1.0, set(range(len(c)))
    for i in ordered:
        p *= math.exp(c[i]) / sum(math.exp(c[m]) for m in remaining)
        remaining.remove(i)
    return p


def test_mask_indices_round_trip():
    ids = torch.tensor([[3, 0, 5], [1, 2, 4]])
    mask = indices_to_mask(ids, 6)
    assert mask.tolist() == [[True, False, False, True, False, True], [False, True, True, False, True, False]]
    assert mask_to_indices(mask, 3).tolist() == [[0, 3, 5], [1, 2, 4]]
    with pytest.raises(ValueError, match="exactly 2"):
        mask_to_indices(mask, 2)


def test_initial_option_is_router_top_k():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.5, 0.3])
    assert initial_option(logits, 2).tolist() == [1, 3]


@pytest.mark.parametrize("n,k", [(4, 2), (5, 3), (4, 4)])
def test_pl_brute_force_sums_to_one_and_matches_closed_form(n, k):
    c = torch.randn(n, generator=torch.Generator().manual_seed(n * 10 + k)) * 2
    tuples = list(itertools.permutations(range(n), k))
    ids = torch.tensor(tuples)  # (n!/(n-k)!, k)
    closed = plackett_luce_log_prob(c.expand(len(tuples), n), ids).exp()
    loop = torch.tensor([pl_prob_loop(c.tolist(), t) for t in tuples])
    torch.testing.assert_close(closed, loop, rtol=1e-5, atol=1e-7)
    assert abs(float(closed.sum()) - 1.0) < 1e-5


def test_pl_log_prob_stable_for_dominant_logits():
    # The chosen experts hold almost all the mass: a "total minus cumulative" formula would cancel to 0.
    c = torch.tensor([40.0, 39.0, 0.0, -1.0])
    ids = torch.tensor([0, 1, 2])
    # step 3 chooses expert 2 from {2, 3}: log(e^0 / (e^0 + e^-1)); steps 1-2 are ~log 1 minus tiny terms.
    e = math.exp
    expected = (40 - math.log(e(40) + e(39) + 1 + e(-1))
                + 39 - math.log(e(39) + 1 + e(-1))
                + math.log(1 / (1 + e(-1))))
    assert abs(float(plackett_luce_log_prob(c, ids)) - expected) < 1e-5


def test_gumbel_top_k_frequencies_match_pl():
    n, k, draws = 4, 2, 20000
    c = torch.tensor([1.0, 0.5, 0.0, -0.7])
    g = torch.Generator().manual_seed(0)
    samples = sample_plackett_luce(c.expand(draws, n), k, g)
    tuples = list(itertools.permutations(range(n), k))
    counts = torch.tensor([float(((samples[:, 0] == a) & (samples[:, 1] == b)).sum()) for a, b in tuples])
    expected = draws * torch.tensor([pl_prob_loop(c.tolist(), t) for t in tuples])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.sum() == draws
    assert chi2 < 31.3  # 99.9% quantile of chi-square with 11 degrees of freedom


def test_sampling_is_reproducible_with_generator():
    c = torch.randn(3, 8)
    a = sample_plackett_luce(c, 4, torch.Generator().manual_seed(1))
    b = sample_plackett_luce(c, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert all(len(set(row)) == 4 for row in a.tolist())  # without replacement
