"""temoe.cost: predicted decode time per token from expert loads on named hardware (docs/cost-model.md).

Torch-free: `predict`, `Prediction`, `HardwareProfile`, `load_profile`, `profile_names`, `split_loads`,
`LoadCounts`. Measuring the `local` profile needs torch: `temoe.serve.local_profile.measure_local_profile`.
"""

from __future__ import annotations

from temoe.cost.loads import LoadCounts, split_loads
from temoe.cost.model import Prediction, predict
from temoe.cost.profiles import HardwareProfile, load_profile, profile_names

__all__ = [
    "HardwareProfile",
    "LoadCounts",
    "Prediction",
    "load_profile",
    "predict",
    "profile_names",
    "split_loads",
]
