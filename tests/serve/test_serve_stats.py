"""Statistics add up: bytes moved = loads × expert bytes, hits + misses = routed pairs, switch counting."""

from __future__ import annotations

from collections import deque

import torch

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps
from temoe.serve.stats import (
    IntervalUnion,
    RoutingStats,
    TokenTimer,
    TransferStats,
    _percentile,
    engine_summary,
)
from temoe.testing import tiny_model


def test_bytes_moved_equal_loads_times_expert_bytes():
    model = tiny_model("mixtral")
    handle = temoe.wrap(model)
    L, N, k = handle.num_layers, handle.num_experts, handle.top_k
    engine = OffloadEngine(handle, make_policy("lru", L, N, expert_budget=3), sim_bandwidth_gbps=10.0)
    ids = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(3))
    tokens = list(decode_steps(engine, ids, 10))
    engine.release(0)
    t, s = engine.transfer, engine.summary()
    # mixtral tiny expert: gate_up (2I=64, H=64) + down (H=64, I=32) fp32 = (4096 + 2048) * 4 bytes
    assert t.expert_bytes == (64 * 64 + 64 * 32) * 4 == 24576
    assert s["serve/h2d_bytes_total"] == (t.loads_critical + t.loads_background + t.loads_prefill) * 24576
    decode_tokens = len(tokens) - 1
    assert s["serve/bytes_per_token"] * decode_tokens == (t.loads_critical + t.loads_background) * 24576
    # B = 1 decode: each layer routes k distinct experts per token; each is a hit or a miss.
    r = engine.routing
    assert r.hits + r.misses == k * L * decode_tokens
    assert r.misses == t.loads_critical                     # LRU: every miss is one critical load
    assert abs(s["serve/lru_hit_rate"] - r.hits / (r.hits + r.misses)) < 1e-12
    # PCIe bound = decode bytes per token / bandwidth (10 GB/s simulated)
    assert abs(s["serve/pcie_bound_ms_per_token"] - s["serve/bytes_per_token"] / 10e9 * 1e3) < 1e-12
    mem = engine.memory_report()
    assert mem["serve/vram_resident_expert_bytes"] == L * 3 * 24576
    assert mem["serve/host_store_bytes"] == L * N * 24576
    engine.detach()


def test_switch_statistics_count_option_changes():
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    options = [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 4, 5], [6, 7, 4, 5]]
    calls = {}

    def fn(i, hidden):   # decode step j uses options[j]; the prompt uses options[0]
        j = calls.get(i, 0)
        calls[i] = j + 1
        allowed = torch.zeros(*hidden.shape[:2], N, dtype=torch.bool)
        return allowed.index_fill_(-1, torch.tensor(options[j]), True)

    engine = OffloadEngine(handle, make_policy("option", L, N, expert_budget=4))
    list(decode_steps(engine, torch.randint(3, 128, (1, 4)), 5, masks=fn))
    engine.release(0)
    r, s = engine.routing, engine.summary()
    assert r.option_steps == 4 * L                            # 4 decode calls per layer vs the previous one
    assert r.switches == 2 * L and r.replaced_total == 4 * L  # {2,3}->{4,5}, then {0,1}->{6,7}
    assert s["serve/switch_rate"] == 0.5
    assert s["serve/experts_replaced_per_switch"] == 2
    engine.detach()


def test_token_timer_percentiles():
    timer = TokenTimer(start=0.0)
    for t in (0.5, 0.6, 0.7, 1.0):
        timer.token(t)
    s = timer.summary()
    assert abs(s["serve/ttft_ms"] - 500) < 1e-9
    assert abs(s["serve/decode_tokens_per_s"] - 3 / 0.5) < 1e-9
    assert abs(s["serve/tpot_ms_p50"] - 100) / 100 < 0.01  # the latency sketch is within 1 %
    assert abs(s["serve/tpot_ms_p99"] - 300) / 300 < 0.01


def _union_brute(intervals, step=0.5):
    """Union length on a grid of half units (every endpoint below is a multiple of 0.5)."""
    covered = {k for s, e in intervals for k in range(int(s / step), int(e / step))}
    return len(covered) * step


def test_copy_time_is_the_union_of_intervals_across_streams():
    stats = TransferStats()
    # critical copies [0, 2] and [5, 6] on the compute stream; background [1, 4] and [3.5, 4.5] on the side
    for start, end, critical in [(0, 2, True), (1, 4, False), (3.5, 4.5, False), (5, 6, True)]:
        stats.add_interval(start, end, critical)
    assert stats.critical_copy_s == 3.0
    assert stats.copy_s == 5.5  # [0, 4.5] and [5, 6]; the sum of the four would be 7.5


def test_interval_union_matches_brute_force_with_out_of_order_arrivals():
    gen = torch.Generator().manual_seed(0)
    union = IntervalUnion(window=8)
    intervals = []
    t = 0.0
    for _ in range(300):
        t += float(torch.randint(0, 3, (1,), generator=gen)) * 0.5
        start = max(0.0, t - float(torch.randint(0, 4, (1,), generator=gen)) * 0.5)  # may start in the past
        end = start + float(torch.randint(1, 6, (1,), generator=gen)) * 0.5
        intervals.append((start, end))
        union.add(start, end)
        assert len(union.starts) <= 8
    assert union.total() == _union_brute(intervals)


def test_achieved_bandwidth_cannot_exceed_the_link():
    """Two streams each moving 1 GB in the same second: 2 GB/s over the union, not 1 GB/s per stream."""
    stats = TransferStats(expert_bytes=10**9, loads_critical=1, loads_background=1)
    stats.add_interval(0.0, 1.0, critical=True)
    stats.add_interval(0.0, 1.0, critical=False)
    s = engine_summary(stats, RoutingStats(1), decode_tokens=1, sim_bandwidth_gbps=None,
                       measured_bandwidth_gbps=None)
    assert s["serve/achieved_gbps"] == 2.0 and s["serve/copy_ms_per_token"] == 1000.0


def _footprint(obj) -> int:
    """Number of scalars held in every container reachable from `obj`'s attributes."""
    total = 0
    for v in vars(obj).values():
        if isinstance(v, (list, dict, set, tuple, deque)):
            total += len(v)
        elif hasattr(v, "__dict__") and not isinstance(v, (type, torch.Tensor)):
            total += _footprint(v)
    return total


def test_statistics_memory_is_bounded_over_100k_decode_steps():
    transfer, routing = TransferStats(expert_bytes=1), RoutingStats(num_layers=24)
    timer = TokenTimer(start=0.0)

    class Event:  # a completed CUDA-style timing event
        def __init__(self, t):
            self.t = t

        def query(self):
            return True

        def elapsed_time(self, other):
            return (other.t - self.t) * 1e3

    sizes = {}
    t = 0.0
    for step in range(1, 100_001):
        t += 0.02 + 0.01 * (step % 7)
        timer.token(t)
        transfer.add_interval(t, t + 0.001, critical=True)
        transfer.add_events(Event(t), Event(t + 0.002), critical=False)
        routing.hits += 3
        routing.switches += step % 20 == 0
        routing.replaced_total += 2 * (step % 20 == 0)
        if step in (1_000, 100_000):
            sizes[step] = (_footprint(transfer), _footprint(routing), _footprint(timer))
    assert sizes[1_000] == sizes[100_000]
    s = timer.summary()
    assert s["serve/new_tokens"] == 100_000
    gaps = [0.02 + 0.01 * (step % 7) for step in range(2, 100_001)]
    assert abs(s["serve/tpot_ms_p50"] / 1e3 - _percentile(gaps, 50)) / _percentile(gaps, 50) < 0.01
    assert abs(transfer.critical_copy_s - 100.0) < 1e-6


def test_prefill_copies_are_not_decode_copy_time():
    """The prompt's last position starts option {4..7} of which it routes only k = 2: the other two are filled
    in the background during the prefill. That is prefill traffic: not timed as decode copies."""
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts

    def fn(i, hidden):
        mask = torch.zeros(*hidden.shape[:2], N, dtype=torch.bool)
        mask[..., 4:] = True
        mask[:, :-1] = False
        mask[:, :-1, :2] = True  # earlier prompt positions route among {0, 1}
        return mask

    engine = OffloadEngine(handle, make_policy("option", L, N, expert_budget=6))
    list(decode_steps(engine, torch.tensor([[5, 9]]), 6, masks=fn))
    engine.release(0)
    t = engine.transfer
    assert t.loads_prefill == L * 6 and t.loads_critical == t.loads_background == 0  # 2 + 2 routed, 2 filled
    assert t.copy_s == 0.0 and engine.summary()["serve/copy_ms_per_token"] == 0.0
    engine.detach()
