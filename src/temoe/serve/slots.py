"""Slot table of one MoE layer: which expert id lives in which device slot (the id -> slot indirection).

Pure bookkeeping, no tensors moved here. Invariants (checked by `check()` and the tests): at most `num_slots`
experts resident, the two maps are inverse of each other, and an expert pinned for the current step is never
evicted.
"""

from __future__ import annotations

import torch


class SlotTable:
    """id -> slot map for one layer with `num_slots` device slots for `num_experts` experts.

    `slot_of` (N,) int64 is -1 for experts not resident; it is what the engine indexes to remap the router's
    expert ids (B*S, k) to slot ids. `last_used` is a logical clock per slot used to choose victims (least
    recently used first) among the experts the policy allows to evict.
    """

    def __init__(self, num_experts: int, num_slots: int):
        if not 1 <= num_slots <= num_experts:
            raise ValueError(f"num_slots must be in [1, {num_experts}], got {num_slots}")
        self.num_experts = num_experts
        self.num_slots = num_slots
        self.slot_of = torch.full((num_experts,), -1, dtype=torch.long)
        self.expert_in = [-1] * num_slots
        self.last_used = [0] * num_slots
        self._clock = 0
        self._on_device: torch.Tensor | None = None  # cached copy of slot_of where the ids live (CUDA)

    def resident(self) -> set[int]:
        return {e for e in self.expert_in if e >= 0}

    def is_resident(self, expert: int) -> bool:
        return int(self.slot_of[expert]) >= 0

    def touch(self, experts) -> None:
        """Mark `experts` (all resident) as used now."""
        self._clock += 1
        for e in experts:
            self.last_used[int(self.slot_of[e])] = self._clock

    def allocate(self, expert: int, keep: set[int]) -> tuple[int, int]:
        """Give `expert` (not resident) a slot: a free one, else evict the least recently used
        expert not in `keep`.

        Returns `(slot, evicted_expert_or_-1)`. Evicted weights are read-only and are simply overwritten (no
        write-back). Raises if every slot holds an expert in `keep` (the policy asked for more than fits).
        """
        assert not self.is_resident(expert), f"expert {expert} is already resident"
        free = [s for s, e in enumerate(self.expert_in) if e < 0]
        if free:
            slot, victim = free[0], -1
        else:
            candidates = [s for s, e in enumerate(self.expert_in) if e not in keep]
            if not candidates:
                raise RuntimeError(
                    f"no evictable slot: all {self.num_slots} slots hold experts that must stay resident "
                    f"({sorted(keep)}); raise the expert budget or lower the number of concurrent requests"
                )
            slot = min(candidates, key=lambda s: self.last_used[s])
            victim = self.expert_in[slot]
            self.slot_of[victim] = -1
        self.expert_in[slot] = expert
        self.slot_of[expert] = slot
        self._on_device = None
        self._clock += 1
        self.last_used[slot] = self._clock
        return slot, victim

    def lookup(self, expert_ids: torch.Tensor) -> torch.Tensor:
        """Map expert ids (any shape, int64) to slot ids; raises loudly if any routed expert is not
        resident."""
        if self._on_device is None or self._on_device.device != expert_ids.device:
            self._on_device = self.slot_of.to(expert_ids.device)
        slots = self._on_device[expert_ids]
        if bool((slots < 0).any()):
            missing = sorted({int(e) for e in expert_ids[slots < 0].unique()})
            raise RuntimeError(
                f"routed experts {missing} are not resident (resident: {sorted(self.resident())}); "
                "the routing mask and the residency policy disagree"
            )
        return slots

    def check(self) -> None:
        """Assert the internal invariants (tests call this after every step)."""
        resident = [e for e in self.expert_in if e >= 0]
        assert len(resident) == len(set(resident)) <= self.num_slots
        for s, e in enumerate(self.expert_in):
            if e >= 0:
                assert int(self.slot_of[e]) == s
        assert int((self.slot_of >= 0).sum()) == len(resident)
