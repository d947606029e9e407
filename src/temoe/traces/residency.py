"""Expert-cache simulation: replay a routing trace against a per-layer residency policy with B expert slots.

Definitions (docs/traces.md), per sequence and MoE layer, over generated positions t = 0..T-1:
- the slots start empty; position t = 0 fills them (its routed experts, plus the allowed set for `option` and
  `static`): that initial fill is not counted, as the prompt's own loads are not;
- at t >= 1, `accesses` += |R_t| (R_t the routed experts), `hits` += |R_t ∩ resident| before any load, and
  `loads` += experts copied in to serve t (the misses, plus for `option` the rest of a new allowed set);
- `loads_per_token` = Σ loads over layers and sequences / Σ (T − 1), the serving engine's
  `serve/loads_per_token`; `hit_rate` = hits / accesses.

Eviction follows the serving engine (`temoe.serve.slots.SlotTable`) exactly, so that the engine and the
simulator count the same loads on the same trace: free slots fill in order; a full layer evicts, among the
experts not needed by the current token, the least recently used one (ties: the lower slot); `lfu` evicts
the least often routed one over the sequence so far (ties: least recently used, then the lower slot).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from temoe.traces.format import allowed_at

__all__ = ["POLICIES", "SequenceCounts", "simulate_sequence", "simulate", "check_budget"]

POLICIES = ("lru", "lfu", "option", "static")


@dataclass
class SequenceCounts:
    """Per-layer counts of one or more sequences (lists of length L) and their decode positions."""

    loads: list[int]
    hits: list[int]
    accesses: list[int]
    decode_tokens: int = 0
    sequences: int = field(default=1)

    def add(self, other: SequenceCounts) -> None:
        for mine, theirs in ((self.loads, other.loads), (self.hits, other.hits),
                             (self.accesses, other.accesses)):
            for i, value in enumerate(theirs):
                mine[i] += value
        self.decode_tokens += other.decode_tokens
        self.sequences += other.sequences

    def summary(self) -> dict:
        loads, hits, accesses = sum(self.loads), sum(self.hits), sum(self.accesses)
        return {"sequences": self.sequences, "decode_tokens": self.decode_tokens, "loads": loads,
                "loads_per_token": loads / self.decode_tokens if self.decode_tokens else None,
                "hits": hits, "accesses": accesses, "hit_rate": hits / accesses if accesses else None,
                "per_layer": {"loads": list(self.loads), "hits": list(self.hits),
                              "accesses": list(self.accesses)}}


class _Slots:
    """The B device slots of one layer, evicting as the serving engine's slot table does.

    `order` lists the resident experts by (last use, slot), least recently used first: a loaded expert is
    appended when it is loaded, and the experts a token routes to move to the end in slot order (the engine
    stamps them with one shared clock value, so ties go to the lower slot).
    """

    def __init__(self, budget: int, lfu: bool):
        self.budget = budget
        self.slot_of: dict[int, int] = {}
        self.order: OrderedDict[int, None] = OrderedDict()
        self.uses: dict[int, int] | None = {} if lfu else None
        self.filled = 0  # slots handed out so far; free slots are taken in order

    def _victim(self, keep: set[int]) -> int:
        if self.uses is None:
            return next(e for e in self.order if e not in keep)
        uses = self.uses  # least often routed; ties: the earlier in `order`
        return min((e for e in self.order if e not in keep), key=lambda e: uses.get(e, 0))

    def load(self, expert: int, keep: set[int]) -> None:
        if self.filled < self.budget:
            slot = self.filled
            self.filled += 1
        else:
            victim = self._victim(keep)
            slot = self.slot_of.pop(victim)
            del self.order[victim]
        self.slot_of[expert] = slot
        self.order[expert] = None

    def step(self, routed: set[int], wanted: frozenset[int]) -> tuple[int, int]:
        """Serve one token routed to `routed` with `wanted` to be resident; returns (hits, loads)."""
        resident = self.slot_of.keys()
        hits = len(routed & resident)
        loads = 0
        if hits < len(routed) or not wanted <= resident:
            keep = routed | wanted
            if len(keep) > self.budget:
                raise ValueError(f"{len(keep)} experts must be resident at once ({sorted(keep)}) but the "
                                 f"budget is {self.budget} slots; raise --budget to at least k-hat")
            # The engine loads the misses first, then the rest of the option, each in id order.
            loads_list = sorted(routed - resident) + sorted(wanted - resident - routed)
            for e in loads_list:
                self.load(e, keep)
            loads = len(loads_list)
        slot_of = self.slot_of
        for e in sorted(routed, key=slot_of.__getitem__):
            self.order.move_to_end(e)
        if self.uses is not None:
            for e in routed:
                self.uses[e] = self.uses.get(e, 0) + 1
        return hits, loads


def check_budget(budget: int, minimum: int, num_experts: int) -> None:
    """Raise ValueError unless minimum (k̃ for caches, k̂ for options) <= budget <= N."""
    if not minimum <= budget <= num_experts:
        raise ValueError(f"budget {budget} is out of range; need {minimum} (the experts one token or option "
                         f"needs) <= budget <= num_experts = {num_experts}")


def _wanted(record: dict, policy: str, i: int, T: int) -> list[frozenset[int]] | frozenset[int]:
    """The set each token of layer i needs resident besides its routed experts."""
    if policy in ("lru", "lfu"):
        return frozenset()
    allowed = record.get("allowed")
    if policy == "option":
        if allowed is None:
            raise ValueError(f"policy 'option' needs the allowed sets, but trace record {record['id']!r} has "
                             "none (trace an option method, e.g. temoe trace --method demand)")
        return allowed_at(allowed[i], T)
    if allowed is not None:
        if len(allowed[i]) != 1:
            raise ValueError(f"policy 'static' needs one allowed set per layer, but record {record['id']!r} "
                             f"changes it {len(allowed[i]) - 1} times in layer {i}")
        return frozenset(allowed[i][0][1])
    return frozenset(e for ids in record["layers"][i] for e in ids)  # every expert the sequence routes to


def simulate_sequence(record: dict, policy: str, budget: int) -> SequenceCounts:
    """Counts of one validated trace record under `policy` with `budget` slots per layer."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
    check_budget(budget, record["k_tilde"], record["num_experts"])
    layers = record["layers"]
    T = len(layers[0])
    loads, hits, accesses = [0] * len(layers), [0] * len(layers), [0] * len(layers)
    for i, tokens in enumerate(layers):
        slots = _Slots(budget, lfu=policy == "lfu")
        wanted = _wanted(record, policy, i, T)
        per_token = isinstance(wanted, list)
        for t, ids in enumerate(tokens):
            h, n = slots.step(set(ids), wanted[t] if per_token else wanted)
            if t:
                hits[i] += h
                loads[i] += n
                accesses[i] += len(ids)
    return SequenceCounts(loads, hits, accesses, decode_tokens=max(T - 1, 0))


def simulate(records: Iterable[dict], policy: str, budget: int) -> dict:
    """Summary over all records: loads, loads_per_token, hits, accesses, hit_rate and per-layer lists."""
    total: SequenceCounts | None = None
    for record in records:
        counts = simulate_sequence(record, policy, budget)
        if total is None:
            total = counts
        else:
            if len(counts.loads) != len(total.loads):
                raise ValueError(f"record {record['id']!r} has {len(counts.loads)} MoE layers, earlier "
                                 f"records {len(total.loads)}")
            total.add(counts)
    if total is None:
        raise ValueError("the trace has no records")
    return {"policy": policy, "budget": budget, **total.summary()}
