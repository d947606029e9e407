"""Random baseline (the paper's §5): a fresh uniformly random k̂-set of experts at every token and
layer (the paper), or one fixed random k̂-set per layer (the authors' reference code's variant).
Draws use an explicit torch.Generator."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_static_masks", "RandomPerTokenMasks"]


def _random_sets(shape: tuple[int, ...], num_experts: int, k_hat: int, generator: torch.Generator) -> Tensor:
    """bool (*shape, N) with exactly k̂ True per row, each k̂-subset equally likely (top-k̂ of uniform noise)."""
    noise = torch.rand(*shape, num_experts, generator=generator)
    ids = noise.topk(k_hat, dim=-1).indices
    return torch.zeros(*shape, num_experts, dtype=torch.bool).scatter_(-1, ids, True)


def random_static_masks(num_layers: int, num_experts: int, k_hat: int, generator: torch.Generator) -> Tensor:
    """(L, N) bool: one random k̂-set per layer, fixed for the whole evaluation (fixed-subset variant)."""
    if not 1 <= k_hat <= num_experts:
        raise ValueError(f"k_hat={k_hat} out of range 1..N={num_experts}")
    return _random_sets((num_layers,), num_experts, k_hat, generator)


class RandomPerTokenMasks:
    """A `MaskFn` drawing a fresh random k̂-set for every (token, layer), and recording what it drew.

    `fn(i, hidden (B, S, H)) -> bool (B, S, N)`. `recorded(i)` returns the (T_total, N) masks emitted for
    layer i since the last `reset()`, rows in `handle.trace()` order (call order, then batch, position).
    """

    def __init__(self, num_layers: int, num_experts: int, k_hat: int, generator: torch.Generator):
        if not 1 <= k_hat <= num_experts:
            raise ValueError(f"k_hat={k_hat} out of range 1..N={num_experts}")
        self.num_layers, self.num_experts, self.k_hat = num_layers, num_experts, k_hat
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        self._record: list[list[Tensor]] = [[] for _ in range(self.num_layers)]

    def __call__(self, i: int, hidden: Tensor) -> Tensor:
        B, S, _ = hidden.shape
        masks = _random_sets((B, S), self.num_experts, self.k_hat, self.generator)  # (B, S, N) on CPU
        self._record[i].append(masks.reshape(B * S, self.num_experts))
        return masks.to(hidden.device)

    def recorded(self, i: int) -> Tensor:
        """(T_total, N) bool masks emitted for MoE layer i."""
        return torch.cat(self._record[i])
