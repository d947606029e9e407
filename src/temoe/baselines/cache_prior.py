"""Cache-conditional routing (Skliar et al., "Mixture of Cache-Conditional Experts for Efficient Mobile Device
Inference", arXiv 2412.00099): at every decode step, experts resident in a B-slot LRU cache get a logit bonus
before the router's top-k̃, so the model prefers experts it already holds. Training-free; one strength λ.

Shapes: B batch, S positions of one forward call, H hidden, N experts, k = k̃ routed experts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from temoe.rollout.masks import MaskSource

__all__ = ["CachePriorMasks", "CachePriorSource"]


class CachePriorMasks:
    """A `MaskFn` that steers the router towards the experts of a per-sequence, per-layer LRU cache.

    The bonus is λ times the token's router-logit range (max − min), our scale-free reading of the paper's
    prior: λ = 0 leaves the routing unchanged, λ > 1 routes to resident experts whenever k̃ of them are
    resident. The cache holds the `budget` most recently routed experts of the sequence; the prompt's last
    position seeds it. The selection S = top-k̃(logits + bonus) is enforced through the masked-routing path
    by allowing S plus every expert whose logit lies below min_S logits, so the router's own top-k̃ over the
    allowed experts is S and, with λ = 0, every expert is allowed (bit-identical to the base model).
    """

    temoe_counts_checked = True  # every row allows at least the k̃ selected experts

    def __init__(self, handle, budget: int, strength: float):
        if strength < 0:
            raise ValueError(f"cache-prior strength must be >= 0, got {strength}")
        if not handle.top_k <= budget <= handle.num_experts:
            raise ValueError(f"budget {budget} is out of range; need k̃ = {handle.top_k} <= budget <= "
                             f"N = {handle.num_experts}")
        self.num_layers, self.num_experts, self.top_k = handle.num_layers, handle.num_experts, handle.top_k
        self.budget, self.strength = budget, strength
        self.router_logits = handle.router_logits
        self.reset()

    def reset(self) -> None:
        """Empty every cache (a new batch of sequences)."""
        self.last_used: list[Tensor | None] = [None] * self.num_layers  # (B, N) step of last use, -1 never
        self.steps = [0] * self.num_layers

    def resident(self, i: int) -> Tensor:
        """(B, N) bool: the `budget` most recently routed experts of each sequence in layer i."""
        last = self.last_used[i]
        top = last.topk(self.budget, dim=-1).indices
        return torch.zeros_like(last, dtype=torch.bool).scatter_(-1, top, True) & (last >= 0)

    def _use(self, i: int, selected: Tensor) -> None:
        self.steps[i] += 1
        self.last_used[i].scatter_(-1, selected, self.steps[i])

    def __call__(self, i: int, hidden: Tensor) -> Tensor:
        B, S, _ = hidden.shape
        logits = self.router_logits(i, hidden[:, -1])  # (B, N) float32, the newest position
        if self.last_used[i] is None or self.last_used[i].shape[0] != B:  # prompt: free routing
            self.last_used[i] = torch.full((B, self.num_experts), -1, dtype=torch.long, device=hidden.device)
            self._use(i, logits.topk(self.top_k, dim=-1).indices)
            return torch.ones(B, S, self.num_experts, dtype=torch.bool, device=hidden.device)
        span = logits.amax(-1, keepdim=True) - logits.amin(-1, keepdim=True)  # (B, 1)
        biased = logits + self.strength * span * self.resident(i)
        selected = biased.topk(self.top_k, dim=-1).indices  # (B, k)
        floor = logits.gather(-1, selected).amin(-1, keepdim=True)  # (B, 1)
        allowed = (logits < floor).scatter_(-1, selected, True)  # (B, N)
        self._use(i, selected)
        return allowed[:, None, :].expand(B, S, self.num_experts)


class CachePriorSource(MaskSource):
    """`CachePriorMasks` as an evaluated method: switch rate by the router definition at k̂ (its routing is
    the router's own, biased), residency an LRU cache of `budget` slots."""

    residency = "lru"

    def __init__(self, handle, k_hat: int, budget: int, strength: float):
        self.fn = CachePriorMasks(handle, budget, strength)
        self.k_hat, self.name, self.strength = k_hat, "cache-prior", strength

    def start(self, batch_size: int):
        self.fn.reset()
        return self.fn

    def describe(self) -> dict:
        return {"cache_prior_strength": self.strength}
