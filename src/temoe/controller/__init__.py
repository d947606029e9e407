"""temoe.controller: per-layer option controllers (paper §4.2) and their policy (sample / greedy / replay)."""

from temoe.controller.config import ControllerConfig
from temoe.controller.networks import LayerController, SetEncoder
from temoe.controller.policy import (
    MaskFn,
    OptionController,
    OptionState,
    ReplayOutput,
    Trajectory,
    recorded_mask_fn,
)

__all__ = [
    "ControllerConfig",
    "LayerController",
    "MaskFn",
    "OptionController",
    "OptionState",
    "ReplayOutput",
    "SetEncoder",
    "Trajectory",
    "recorded_mask_fn",
]
