"""Slot table of one MoE layer: which expert id lives in which device slot (the id -> slot indirection).

Bookkeeping on the host (Python lists), mirrored into one small device tensor updated in place (scalar
writes, no host read) so the per-call remap never leaves the device. Invariants (checked by `check()` and the
tests): at most `num_slots` experts resident, the two maps are inverse of each other and equal the device
copy, and an expert pinned for the current step is never evicted.
"""

from __future__ import annotations

import torch


class SlotTable:
    """id -> slot map for one layer with `num_slots` device slots for `num_experts` experts.

    `slot_of` (host list of N ints) is -1 for experts not resident. `slot_dev` (N,) int64 is the same map on
    `device`, what the engine indexes to remap the router's expert ids (B*S, k) to slot ids. `last_used` is a
    logical clock per slot used to choose victims (least recently used first) among the experts the policy
    allows to evict.
    """

    def __init__(self, num_experts: int, num_slots: int, device: torch.device | str = "cpu"):
        if not 1 <= num_slots <= num_experts:
            raise ValueError(f"num_slots must be in [1, {num_experts}], got {num_slots}")
        self.num_experts = num_experts
        self.num_slots = num_slots
        self.slot_of = [-1] * num_experts
        self.expert_in = [-1] * num_slots
        self.last_used = [0] * num_slots
        self._clock = 0
        self.slot_dev = torch.full((num_experts,), -1, dtype=torch.long, device=device)

    def resident(self) -> set[int]:
        return {e for e in self.expert_in if e >= 0}

    def is_resident(self, expert: int) -> bool:
        return self.slot_of[expert] >= 0

    def touch(self, experts) -> None:
        """Mark `experts` (all resident) as used now."""
        self._clock += 1
        for e in experts:
            self.last_used[self.slot_of[e]] = self._clock

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
            self.slot_dev[victim] = -1  # a scalar fill on the device: no host read
        self.expert_in[slot] = expert
        self.slot_of[expert] = slot
        self.slot_dev[expert] = slot
        self._clock += 1
        self.last_used[slot] = self._clock
        return slot, victim

    def lookup(self, expert_ids: torch.Tensor, routed: set[int] | None = None) -> torch.Tensor:
        """Map expert ids (any shape, int64, on the table's device) to slot ids; raises loudly if any routed
        expert is not resident. `routed`: the ids' distinct values if the caller already knows them on the
        host (the engine does): the check then reads nothing from the device."""
        if routed is None:
            routed = set(expert_ids.unique().tolist())  # a device read: the engine passes `routed` instead
        missing = sorted(e for e in routed if self.slot_of[e] < 0)
        if missing:
            raise RuntimeError(
                f"routed experts {missing} are not resident (resident: {sorted(self.resident())}); "
                "the routing mask and the residency policy disagree"
            )
        return self.slot_dev[expert_ids]

    def check(self) -> None:
        """Assert the internal invariants (tests call this after every step)."""
        resident = [e for e in self.expert_in if e >= 0]
        assert len(resident) == len(set(resident)) <= self.num_slots
        for s, e in enumerate(self.expert_in):
            if e >= 0:
                assert self.slot_of[e] == s
        assert sum(s >= 0 for s in self.slot_of) == len(resident)
        assert self.slot_dev.tolist() == self.slot_of
