"""Public option utilities: Plackett–Luce sampling / log-probability and expert mask <-> indices.

Re-exports `temoe.controller.options` so callers (rollout, baselines, serving) need not know the layout.
"""

from temoe.controller.options import (
    indices_to_mask,
    initial_option,
    mask_to_indices,
    plackett_luce_log_prob,
    sample_plackett_luce,
)

__all__ = [
    "indices_to_mask",
    "initial_option",
    "mask_to_indices",
    "plackett_luce_log_prob",
    "sample_plackett_luce",
]
