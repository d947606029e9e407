"""For the same trace, the bytes the serving engine moves equal the cost model's prediction from the counts.

The engine runs on CPU (tiny-random:gpt_oss, a few tokens) inside `handle.trace()`; the test counts loads from
the recorded routing and options alone with `split_loads`, feeds them to `predict`, and compares with the
engine's statistics: loads and bytes exactly, per-token bytes and the PCIe-bound stall to float precision.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import temoe
from temoe.cost import LoadCounts, load_profile, predict, split_loads
from temoe.loading import load_model
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps

NEW_TOKENS = 12
BANDWIDTH = 54.7


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    model, tok = load_model("tiny-random:gpt_oss")
    handle = temoe.wrap(model)
    ids = tok("The cost of a switch is its loads.", return_tensors="pt").input_ids  # (1, S)
    return handle, ids


def scripted_options(L: int, N: int, K: int, calls: int, seed: int = 0) -> list[list[set[int]]]:
    """options[c][i]: the option of layer i at forward call c (0 = prefill); each (c, i) switches w.p. 1/2."""
    g = torch.Generator().manual_seed(seed)
    options = [[set(torch.randperm(N, generator=g)[:K].tolist()) for _ in range(L)]]
    for _ in range(1, calls):
        switch = torch.rand(L, generator=g) < 0.5
        options.append(
            [
                set(torch.randperm(N, generator=g)[:K].tolist()) if s else set(o)
                for s, o in zip(switch, options[-1])
            ]
        )
    return options


def mask_fn(options: list[list[set[int]]], N: int):
    """MaskFn fn(i, hidden (B, S, H)) -> (B, S, N): every position of call c may use options[c][i]."""
    calls = [0] * len(options[0])

    def fn(i: int, hidden: torch.Tensor) -> torch.Tensor:
        allowed = torch.zeros(N, dtype=torch.bool)
        allowed[sorted(options[calls[i]][i])] = True
        calls[i] += 1
        return allowed.expand(hidden.shape[0], hidden.shape[1], N)

    return fn


def run_engine(handle, ids, mode: str, budget: int, masks=None):
    """(engine statistics, routed, last): routed[i][c] = experts routed by call c at layer i (c = 0: the whole
    prompt), last[i] = experts of the prompt's last position."""
    policy = make_policy(mode, handle.num_layers, handle.num_experts, expert_budget=budget)
    engine = OffloadEngine(handle, policy, device="cpu", sim_bandwidth_gbps=BANDWIDTH)
    try:
        with handle.trace() as trace:
            tokens = list(decode_steps(engine, ids, NEW_TOKENS, masks=masks))
        engine.release(0)
        stats = engine.summary()
    finally:
        engine.detach()
    assert len(tokens) == NEW_TOKENS and trace.calls[0] == (1, ids.shape[1])
    S = ids.shape[1]
    routed, last = [], []
    for i in range(handle.num_layers):
        rows = trace.expert_ids(i)  # (S + decode calls, k)
        routed.append([set(rows[:S].flatten().tolist())] + [set(r.tolist()) for r in rows[S:]])
        last.append(set(rows[S - 1].tolist()))
    return stats, routed, last


def check_prediction(stats: dict, counts: LoadCounts) -> None:
    """Model bytes from the trace's counts == engine bytes; model stall == the engine's PCIe-bound stall."""
    tokens = NEW_TOKENS - 1  # decode steps after the first token
    assert stats["serve/loads_critical"] == counts.critical
    assert stats["serve/loads_background"] == counts.background
    nbytes = stats["serve/expert_bytes"]
    assert stats["serve/decode_h2d_bytes"] == counts.total * nbytes
    profile = dataclasses.replace(
        load_profile("h100-gpt-oss-20b").scaled(expert_bytes=nbytes),
        h2d_bandwidth_gbps=BANDWIDTH,
        copy_overhead_ms=0,
    )
    pred = predict(
        profile, critical_per_token=counts.critical / tokens, background_per_token=counts.background / tokens
    )
    assert pred.bytes_per_token == pytest.approx(stats["serve/bytes_per_token"], rel=1e-12)
    assert pred.critical_bytes_per_token * tokens == pytest.approx(counts.critical * nbytes, rel=1e-12)
    assert pred.stall_ms == pytest.approx(stats["serve/pcie_bound_stall_ms_per_token"], rel=1e-12)
    assert pred.stall_ms + pred.background_copy_ms == pytest.approx(
        stats["serve/pcie_bound_ms_per_token"], rel=1e-12
    )


def test_option_mode_counts(served):
    handle, ids = served
    L, N, K = handle.num_layers, handle.num_experts, handle.num_experts // 2
    options = scripted_options(L, N, K, NEW_TOKENS)
    stats, routed, _ = run_engine(handle, ids, "option", K, masks=mask_fn(options, N))
    counts = LoadCounts()
    for i in range(L):
        for c in range(1, NEW_TOKENS):  # no spare slots: the resident set is the previous option
            counts += split_loads(options[c - 1][i], options[c][i], routed[i][c])
    assert counts.critical > 0 and counts.background > 0  # the schedule exercises both kinds
    check_prediction(stats, counts)


@pytest.mark.parametrize("budget", ["top_k", "all"])
def test_lru_mode_counts(served, budget):
    handle, ids = served
    L, k = handle.num_layers, handle.top_k
    slots = k if budget == "top_k" else handle.num_experts
    stats, routed, last = run_engine(handle, ids, "lru", slots)
    counts = LoadCounts()
    for i in range(L):
        # after the prompt: k slots hold the last prompt position's experts (the prompt overflows them and
        # streams through staging); N slots hold every expert the prompt routed to
        resident = last[i] if slots == k else routed[i][0]
        for c in range(1, NEW_TOKENS):
            counts += split_loads(resident, set(), routed[i][c])  # an LRU cache wants nothing extra
            resident = routed[i][c] if slots == k else resident | routed[i][c]
    assert counts.background == 0 and counts.critical > 0
    check_prediction(stats, counts)
    assert stats["serve/lru_hit_rate"] == pytest.approx(1 - counts.critical / (k * L * (NEW_TOKENS - 1)))
