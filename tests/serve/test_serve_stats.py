"""Statistics add up: bytes moved = loads × expert bytes, hits + misses = routed pairs, switch counting."""

from __future__ import annotations

import torch

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps
from temoe.serve.stats import TokenTimer
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
    assert r.switches == 2 * L and r.replaced == [2, 2] * L  # {2,3}->{4,5}, then {0,1}->{6,7}
    assert s["serve/switch_rate"] == 0.5
    assert s["serve/experts_replaced_per_switch"] == 2
    engine.detach()


def test_token_timer_percentiles():
    timer = TokenTimer(start=0.0)
    timer.token_times = [0.5, 0.6, 0.7, 1.0]
    s = timer.summary()
    assert abs(s["serve/ttft_ms"] - 500) < 1e-9
    assert abs(s["serve/decode_tokens_per_s"] - 3 / 0.5) < 1e-9
    assert abs(s["serve/tpot_ms_p50"] - 100) < 1e-6
