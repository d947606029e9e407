"""Which expert loads a residency change costs, and which of them the computation waits for.

One MoE layer, one forward call: the experts the policy wants resident, the experts the call routes to and
the experts already resident give the loads. Routed experts that are not resident are critical (loaded
before the layer computes); the rest of the wanted set is background (loaded while compute goes on). This is
the split the temoe serving engine's residency policies make (`temoe.serve.policy.Plan`), written over plain
sets so a trace simulator can count loads without torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadCounts:
    """Expert loads of one or more (layer, call) steps; `a + b` adds counts."""

    critical: int = 0
    background: int = 0

    @property
    def total(self) -> int:
        return self.critical + self.background

    def __add__(self, other: LoadCounts) -> LoadCounts:
        return LoadCounts(self.critical + other.critical, self.background + other.background)


def split_loads(resident: Iterable[int], wanted: Iterable[int], routed: Iterable[int]) -> LoadCounts:
    """Loads of one layer and call: critical = routed − resident, background = wanted − resident − routed.

    resident: experts on the device before the call; wanted: the set the policy keeps resident (an option
    policy: the current option; an LRU cache: nothing beyond what is routed); routed: the call's experts.
    An option switch with no spare slots has resident = the previous option.
    """
    resident, wanted, routed = set(resident), set(wanted), set(routed)
    return LoadCounts(critical=len(routed - resident), background=len(wanted - resident - routed))
