"""Expert-cache simulation on hand-made traces: every expected count is worked out step by step below."""

import json
import time

import pytest

from temoe.traces import read_trace, simulate, simulate_sequence, validate_record, write_trace


def _record(tokens, k=1, n=4, allowed=None, layers=1):
    rec = {"id": "s", "category": "test", "k_tilde": k, "num_experts": n, "layers": [tokens] * layers}
    if allowed is not None:
        rec["allowed"] = [allowed] * layers
    return validate_record(rec)


def test_lru_hand_trace():
    # B = 2: t0 fills {0}; t1 miss 1 (free slot); t2 hit 0; t3 miss 2 evicts 1 (last used t1);
    # t4 miss 1 evicts 0 (t2); t5 miss 0 evicts 2 (t3): 4 loads, 1 hit of 5 accesses.
    out = simulate([_record([[0], [1], [0], [2], [1], [0]])], "lru", 2)
    assert (out["loads"], out["hits"], out["accesses"], out["decode_tokens"]) == (4, 1, 5, 5)
    assert out["loads_per_token"] == pytest.approx(0.8) and out["hit_rate"] == pytest.approx(0.2)


def test_lfu_hand_trace():
    # Same trace, LFU: t3 miss 2 evicts 1 (1 use vs 2 for expert 0); t4 miss 1 evicts 2 (1 use vs 2);
    # t5 hits 0: 3 loads, 2 hits.
    out = simulate([_record([[0], [1], [0], [2], [1], [0]])], "lfu", 2)
    assert (out["loads"], out["hits"]) == (3, 2)


def test_lru_ties_go_to_the_lower_slot():
    # k = 2, B = 3: t0 puts 0, 1 in slots 0, 1 (same last use); t1 loads 2 into slot 2 and 3 evicts slot 0
    # (expert 0, tie with 1 -> lower slot); t2 hits 1, loads 0 evicting slot 0 (expert 3, tie with 2 at t1).
    counts = simulate_sequence(_record([[0, 1], [2, 3], [0, 1]], k=2), "lru", 3)
    assert (counts.loads, counts.hits, counts.accesses) == ([3], [1], [4])


def test_option_loads_are_experts_entering_the_set():
    # B = K = 2: the option {0, 1} then {2, 3} from t2: t2 loads 2 (routed) and 3 (rest of the option).
    rec = _record([[0], [1], [2], [3]], allowed=[[0, [0, 1]], [2, [2, 3]]])
    out = simulate([rec], "option", 2)
    assert (out["loads"], out["hits"], out["accesses"]) == (2, 2, 3)


def test_option_spare_slot_keeps_an_old_expert():
    # Options {0,1}, {1,2} from t2, {0,1} from t3, routed 0,1,2,0. B = 3: t2 loads 2 into the free slot, t3
    # finds 0 still resident (1 load). B = 2: t2 evicts 0, t3 evicts 2 to bring 0 back (2 loads).
    rec = _record([[0], [1], [2], [0]], allowed=[[0, [0, 1]], [2, [1, 2]], [3, [0, 1]]])
    assert simulate([rec], "option", 3)["loads"] == 1
    assert simulate([rec], "option", 2)["loads"] == 2


def test_static_loads_once_and_needs_a_fitting_set():
    rec = _record([[0], [1], [0], [1]], allowed=[[0, [0, 1]]], layers=2)
    out = simulate([rec], "static", 2)
    assert (out["loads"], out["hits"], out["per_layer"]["loads"]) == (0, 6, [0, 0])
    assert simulate([_record([[0], [1], [2]])], "static", 3)["loads"] == 0  # union of routed experts
    with pytest.raises(ValueError, match="budget is 2"):
        simulate([_record([[0], [1], [2]])], "static", 2)


def test_sequences_add_and_start_empty():
    # Two sequences: each starts from empty slots, so the second's first token is not a load.
    out = simulate([_record([[0], [1]]), _record([[2], [3]])], "lru", 1)
    assert (out["sequences"], out["loads"], out["decode_tokens"]) == (2, 2, 2)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown policy 'fifo'; valid: lru, lfu, option, static"):
        simulate([_record([[0], [1]])], "fifo", 2)
    with pytest.raises(ValueError, match="budget 5 is out of range"):
        simulate([_record([[0], [1]])], "lru", 5)
    with pytest.raises(ValueError, match="needs the allowed sets"):
        simulate([_record([[0], [1]])], "option", 2)
    with pytest.raises(ValueError, match="expected 2 distinct expert ids"):
        _record([[0, 0]], k=2)


def test_trace_file_round_trip_refuses_overwrite(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, [_record([[0], [1]])])
    assert list(read_trace(path))[0]["layers"] == [[[0], [1]]]
    with pytest.raises(ValueError, match="exists"):
        write_trace(path, [])


@pytest.mark.slow
def test_million_token_trace_is_fast(tmp_path):
    """10^6 token-layer steps (4 layers x 250k tokens, top-4 of 32) under LRU-8 in well under a minute."""
    import random

    rng = random.Random(0)
    tokens = [rng.sample(range(32), 4) for _ in range(250_000)]
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"id": 0, "k_tilde": 4, "num_experts": 32, "layers": [tokens] * 4}) + "\n")
    start = time.perf_counter()
    out = simulate(read_trace(path), "lru", 8)
    assert out["decode_tokens"] == 249_999 and time.perf_counter() - start < 60
