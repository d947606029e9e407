"""Slot table and residency-policy invariants, on the tables alone and inside a running engine."""

from __future__ import annotations

import pytest
import torch

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps
from temoe.serve.policy import LRUPolicy, OptionPolicy, ResidencyOverflow
from temoe.serve.slots import SlotTable
from temoe.testing import tiny_model


def test_slot_table_evicts_lru_outside_keep_and_never_exceeds_budget():
    table = SlotTable(num_experts=8, num_slots=3)
    for e in (0, 1, 2):
        assert table.allocate(e, keep=set())[1] == -1          # free slots first, no eviction
    table.touch([0])                                           # 1 is now least recently used, then 2
    slot, victim = table.allocate(5, keep={1})                 # 1 is protected -> evict 2
    assert victim == 2 and table.resident() == {0, 1, 5}
    table.check()
    assert table.lookup(torch.tensor([[5, 0]])).tolist() == [[slot, int(table.slot_of[0])]]
    with pytest.raises(RuntimeError, match="not resident"):
        table.lookup(torch.tensor([2]))
    with pytest.raises(RuntimeError, match="no evictable slot"):
        table.allocate(6, keep={0, 1, 5})
    assert len(table.resident()) <= 3


def test_option_policy_keeps_union_of_active_streams_and_caps_it():
    policy = OptionPolicy(num_layers=1, num_slots=6)
    policy.set_options(1, 0, {0, 1, 2})
    policy.set_options(2, 0, {2, 3, 4})
    plan = policy.plan(0, routed={0, 1}, resident={0, 5}, stream=1)
    assert plan.critical == [1]                  # routed and missing: before the computation
    assert plan.background == [2, 3, 4]          # the rest of the union: off the critical path
    assert plan.keep == {0, 1, 2, 3, 4}
    policy.set_options(3, 0, {5, 6})
    with pytest.raises(ResidencyOverflow, match="7 resident experts"):
        policy.plan(0, routed={5}, resident=set(), stream=3)
    policy.release(3)
    assert policy.wanted(0) == {0, 1, 2, 3, 4}


def test_lru_policy_is_reactive():
    plan = LRUPolicy(num_slots=2).plan(0, routed={3, 4}, resident={4, 7}, stream=0)
    assert plan.critical == [3] and plan.background == [] and plan.keep == {3, 4}


class _Spy:
    """Wraps each layer's compact experts module to check residency at the moment of computation."""

    def __init__(self, engine):
        self.engine, self.calls, self.max_resident = engine, 0, 0
        for layer, compact in enumerate(engine._compacts):
            compact.forward = self._wrap(layer, compact.forward)

    def _wrap(self, layer, forward):
        def run(hidden, slot_ids, weights):
            table, bank = self.engine.tables[layer], self.engine.banks[layer]
            self.calls += 1
            self.max_resident = max(self.max_resident, len(table.resident()))
            host = self.engine.store.rows[layer]
            for s in slot_ids.unique().tolist():      # every slot read holds exactly its expert's bytes
                assert torch.equal(bank.rows[s], host[table.expert_in[s]])
            return forward(hidden, slot_ids, weights)
        return run


@pytest.mark.parametrize("mode", ["lru", "option"])
def test_engine_invariants_under_pressure(mode):
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    budget = 2 if mode == "lru" else 3
    gen = torch.Generator().manual_seed(0)

    def switching(i, hidden):   # k̂ = 3, a fresh random option at every call: maximal churn
        B, S, _ = hidden.shape
        ids = torch.randperm(N, generator=gen)[:3]
        return torch.zeros(B, S, N, dtype=torch.bool).index_fill_(-1, ids, True)

    engine = OffloadEngine(handle, make_policy(mode, L, N, expert_budget=budget))
    host_before = [r.clone() for r in engine.store.rows]
    spy = _Spy(engine)
    ids = torch.randint(3, 128, (1, 5), generator=gen)
    tokens = list(decode_steps(engine, ids, 12, masks=switching if mode == "option" else None))
    engine.release(0)
    assert len(tokens) == 12 and spy.calls > 0
    assert spy.max_resident <= budget                       # never more than the budget resident
    assert engine.transfer.evictions > 0                    # the budget was really exercised
    for before, after in zip(host_before, engine.store.rows):
        assert torch.equal(before, after)                   # no write-back: the host store is read-only
    for table in engine.tables:
        table.check()
    if mode == "option":
        assert engine.transfer.loads_background > 0         # option fill happens off the critical path
    engine.detach()
