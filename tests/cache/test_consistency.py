"""SRP and SCH (Liang et al., arXiv 2505.16056) on hand cases; the arithmetic is in the comments."""

import pytest

from temoe.traces import sch, srp


def test_srp_constant_routing_is_perfect():
    assert srp([[[[0, 1]] * 5]], m=2, num_experts=4, k=2) == pytest.approx(1.0)


def test_srp_hand_case():
    # k = 1, N = 2, m = 2, tokens 0, 0, 1: segments (0,0) -> n_0 = 2; (0,1) -> n_0 = n_1 = 1.
    # actual = 1*2*2 = 4. c=2: 2*2/(2*1+4) = 0.667; c=1: 2*4/(2*3+4) = 0.8; c=0: 2*4/(2*4+4) = 0.667.
    assert srp([[[[0], [0], [1]]]], m=2, num_experts=2, k=1) == pytest.approx(0.8)


def test_srp_too_short_is_none():
    assert srp([[[[0], [1]]]], m=8, num_experts=2, k=1) is None


def test_sch_uses_the_segment_ahead():
    # Cache 2, k = 1, tokens 0,1,2,0,3. At t2 the cache holds 0 (used t0), 1 (used t1). With m = 3 the
    # segment t2..t4 routes 0 once and 1 never: evict 1, so t3 hits (1 of 5). With m = 1 both counts are 0
    # and the tie goes to the least recently used (0): no hit.
    tokens = [[0], [1], [2], [0], [3]]
    assert sch([[tokens]], m=3, cache_size=2) == pytest.approx(0.2)
    assert sch([[tokens]], m=1, cache_size=2) == 0.0


def test_sch_cache_below_k_is_refused():
    with pytest.raises(ValueError, match="cache size 1 is below the 2 routed experts"):
        sch([[[[0, 1]]]], m=2, cache_size=1)
