"""The serving engine and the trace simulator count the same loads and hits for the same routing and budget.

Each sequence runs through a fresh `OffloadEngine` with a one-token prompt, so the engine's prefill routes
exactly generated position 0, which is the simulator's uncounted initial fill; every later forward call is one
decode position. The routing the engine executed is recorded with `handle.trace()` and replayed.
"""

import pytest
import torch

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps
from temoe.testing import tiny_model
from temoe.traces import simulate_sequence, validate_record

NEW = 16
K_HAT = 4


def _switching_mask_fn(num_experts: int, period: int):
    """A stand-in option policy: per layer, k̂ = 4 consecutive experts that move every `period` calls; it
    records the (N,) allowed set it returned for each layer and call."""
    calls, seen = {}, {}

    def fn(i, hidden):
        B, S, _ = hidden.shape
        t = calls.get(i, 0)
        calls[i] = t + 1
        start = (t // period * 3 + 2 * i) % num_experts
        ids = (start + torch.arange(K_HAT)) % num_experts
        mask = torch.zeros(num_experts, dtype=torch.bool).scatter(0, ids, True)
        seen.setdefault(i, []).append(mask)
        return mask.expand(B, S, -1)

    return fn, seen


def _run(handle, mode, budget, prompt, masks=None):
    L, N = handle.num_layers, handle.num_experts
    static = masks if mode == "static" else None
    engine = OffloadEngine(handle, make_policy(mode, L, N, expert_budget=budget, static_mask=static))
    try:
        with handle.trace() as trace:
            tokens = list(decode_steps(engine, prompt, NEW, masks=masks))
        return engine, trace, len(tokens)
    finally:
        engine.release(0)
        engine.detach()


def _record(handle, trace, T, allowed=None):
    layers = [trace.expert_ids(i)[:T].tolist() for i in range(handle.num_layers)]
    record = {"id": 0, "k_tilde": handle.top_k, "num_experts": handle.num_experts, "layers": layers}
    if allowed is not None:
        record["allowed"] = allowed
    return validate_record(record)


def _changes(per_call):
    """[(N,) bool per call] -> [[t, ids], ...] at each change."""
    out, prev = [], None
    for t, mask in enumerate(per_call):
        ids = torch.nonzero(mask).flatten().tolist()
        if ids != prev:
            out.append([t, ids])
            prev = ids
    return out


def _check(engine, counts):
    assert engine.decode_tokens == counts.decode_tokens
    assert engine.transfer.loads_critical + engine.transfer.loads_background == sum(counts.loads)
    assert engine.routing.hits == sum(counts.hits)
    assert engine.routing.hits + engine.routing.misses == sum(counts.accesses)


@pytest.mark.parametrize("model_type", ["gpt_oss", "mixtral"])
@pytest.mark.parametrize("budget", [2, 3, 5])
def test_lru_engine_equals_simulator(model_type, budget):
    handle = temoe.wrap(tiny_model(model_type, seed=4))
    for seed in range(3):
        prompt = torch.randint(3, 128, (1, 1), generator=torch.Generator().manual_seed(seed))
        engine, trace, T = _run(handle, "lru", budget, prompt)
        counts = simulate_sequence(_record(handle, trace, T), "lru", budget)
        _check(engine, counts)
        assert sum(counts.loads) > 0 or budget == 5


@pytest.mark.parametrize("budget", [K_HAT, K_HAT + 2])
def test_option_engine_equals_simulator(budget):
    handle = temoe.wrap(tiny_model("gpt_oss", seed=4))
    fn, seen = _switching_mask_fn(handle.num_experts, period=3)
    prompt = torch.tensor([[7]])
    engine, trace, T = _run(handle, "option", budget, prompt, masks=fn)
    allowed = [_changes(seen[i][:T]) for i in range(handle.num_layers)]
    counts = simulate_sequence(_record(handle, trace, T, allowed), "option", budget)
    _check(engine, counts)
    assert sum(counts.loads) > 0


def test_static_engine_equals_simulator():
    handle = temoe.wrap(tiny_model("mixtral", seed=4))
    mask = torch.zeros(handle.num_layers, handle.num_experts, dtype=torch.bool)
    mask[:, [0, 2, 3, 5]] = True
    engine, trace, T = _run(handle, "static", K_HAT, torch.tensor([[9]]), masks=mask)
    allowed = [[[0, [0, 2, 3, 5]]] for _ in range(handle.num_layers)]
    counts = simulate_sequence(_record(handle, trace, T, allowed), "static", K_HAT)
    _check(engine, counts)
    assert sum(counts.loads) == 0
