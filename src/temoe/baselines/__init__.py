"""Pruning baselines at the same k̂ (the paper's §5): frequency, reconstruction loss, random,
Wanda. Each emits masks that run through the shared masked-routing path (`MoEHandle.restrict`)."""

from temoe.baselines.build import BASELINES, baseline_source
from temoe.baselines.calibration import CalibrationConfig

__all__ = ["BASELINES", "baseline_source", "CalibrationConfig"]
