"""Frequency pruning baseline (the paper's §5): keep the k̂ experts each layer routes to most on
calibration data."""

from __future__ import annotations

import torch
from torch import Tensor

from temoe.baselines.calibration import RoutingStats

__all__ = ["expert_counts", "frequency_masks"]


def expert_counts(stats: RoutingStats, num_experts: int) -> Tensor:
    """(L, N) int64: how many real calibration tokens each layer routed to each expert (top-k̃ activations)."""
    counts = [torch.bincount(ids.flatten().long(), minlength=num_experts) for ids in stats.expert_ids]
    return torch.stack(counts)


def frequency_masks(counts: Tensor, k_hat: int) -> Tensor:
    """(L, N) bool: the k̂ most frequent experts per layer. Ties go to the lower expert id (deterministic)."""
    L, N = counts.shape
    if not 1 <= k_hat <= N:
        raise ValueError(f"k_hat={k_hat} out of range 1..N={N}")
    # Stable descending sort: equal counts keep ascending id order.
    order = torch.sort(counts, dim=-1, descending=True, stable=True).indices[:, :k_hat]
    return torch.zeros(L, N, dtype=torch.bool).scatter_(-1, order, True)
