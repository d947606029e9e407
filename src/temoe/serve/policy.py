"""Residency policies: which experts of each MoE layer should be on the device (policy, no bytes moved here).

The engine asks `plan(...)` once per MoE layer per forward call and executes the answer with the slot table
and the store (the mechanism). Four policies, one per rung of the serving ladder:
- `FullPolicy`: every expert resident (upper bound, k̂ = N).
- `StaticPolicy`: a fixed mask per layer (pruning baselines); loaded once, never changes.
- `OptionPolicy`: the current option of every active request (the temporally extended engine); the resident
  set of a layer is the union of the active options, capped at the layer's slots.
- `LRUPolicy`: a reactive cache of the base router's experts at an expert budget (mixtral-offloading style).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class ResidencyOverflow(RuntimeError):
    """The experts a call needs resident do not fit in the layer's slots (the engine streams
    prefill instead)."""


@dataclass
class Plan:
    """What one layer needs for one forward call.

    critical: experts routed by this call that are not resident; loaded before the expert computation.
    background: experts that should become resident but are not read by this call (the rest of a new option);
        loaded off the critical path (a side stream on CUDA, after the computation on CPU).
    keep: experts that must not be evicted while executing this plan (routed ∪ wanted resident set).
    """

    critical: list[int]
    background: list[int]
    keep: set[int] = field(default_factory=set)


class ResidencyPolicy:
    """Base class. `num_slots` is the per-layer slot count the engine allocates (the expert budget)."""

    name = "base"
    num_slots: int

    def initial(self, layer: int) -> list[int]:
        """Experts to load when the engine attaches (before any request)."""
        return []

    def plan(self, layer: int, routed: set[int], resident: set[int], stream: int) -> Plan:
        raise NotImplementedError

    def set_options(self, stream: int, layer: int, option: set[int]) -> None:
        """Record the option(s) of `stream` at `layer` (from the routing mask); ignored by
        non-option policies."""

    def release(self, stream: int) -> None:
        """`stream` finished: its options no longer need to stay resident."""


def _plan_for(wanted: set[int], routed: set[int], resident: set[int], num_slots: int, what: str) -> Plan:
    keep = wanted | routed
    if len(keep) > num_slots:
        raise ResidencyOverflow(
            f"{what} needs {len(keep)} resident experts ({sorted(keep)}) but the layer has {num_slots} slots"
        )
    critical = sorted(routed - resident)
    background = sorted(wanted - resident - routed)
    return Plan(critical=critical, background=background, keep=keep)


class FullPolicy(ResidencyPolicy):
    """All N experts resident from the start: no transfers after attach (the k̂ = N upper bound)."""

    name = "full"

    def __init__(self, num_experts: int):
        self.num_slots = num_experts

    def initial(self, layer: int) -> list[int]:
        return list(range(self.num_slots))

    def plan(self, layer, routed, resident, stream):
        return Plan(critical=sorted(routed - resident), background=[], keep=set(range(self.num_slots)))


class OptionPolicy(ResidencyPolicy):
    """Resident set of layer ℓ = union over active streams of their current option at ℓ (§3.2 of the paper).

    On a switch only the experts the current token routes to are critical; the rest of the new option is
    background. Spare slots (`num_slots` > k̂ × active streams) keep experts of old options until evicted, so a
    switch back to a recent option costs nothing. Raises if the union of options exceeds `num_slots`.
    """

    name = "option"

    def __init__(self, num_layers: int, num_slots: int):
        self.num_layers = num_layers
        self.num_slots = num_slots
        self._options: dict[int, list[set[int]]] = {}

    def set_options(self, stream, layer, option):
        self._options.setdefault(stream, [set() for _ in range(self.num_layers)])[layer] = set(option)

    def wanted(self, layer: int) -> set[int]:
        out: set[int] = set()
        for per_layer in self._options.values():
            out |= per_layer[layer]
        return out

    def plan(self, layer, routed, resident, stream):
        return _plan_for(
            self.wanted(layer),
            routed,
            resident,
            self.num_slots,
            f"the union of {len(self._options)} active option(s) at layer {layer}",
        )

    def release(self, stream):
        self._options.pop(stream, None)


class StaticPolicy(OptionPolicy):
    """A fixed mask (L, N) per layer, loaded once at attach (frequency/reconstruction pruning baselines)."""

    name = "static"

    def __init__(self, mask: torch.Tensor):
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(
                f"static mask must be a bool tensor (L, N), got {tuple(mask.shape)} {mask.dtype}"
            )
        counts = mask.sum(-1)
        super().__init__(mask.shape[0], int(counts.max()))
        self._fixed = [set(mask[layer].nonzero().flatten().tolist()) for layer in range(mask.shape[0])]

    def initial(self, layer):
        return sorted(self._fixed[layer])

    def wanted(self, layer):
        return self._fixed[layer]


class LRUPolicy(ResidencyPolicy):
    """Reactive cache of the base router's experts: a miss loads the expert on the critical path and evicts
    the least recently used one (mixtral-offloading, vLLM #37190). No prefetch; `num_slots` = expert
    budget."""

    name = "lru"

    def __init__(self, num_slots: int):
        self.num_slots = num_slots

    def plan(self, layer, routed, resident, stream):
        return _plan_for(
            set(), routed, resident, self.num_slots, f"LRU at layer {layer} (one call's routed set)"
        )
