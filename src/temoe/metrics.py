"""Switch rates (§2): how often the expert mask of a layer changes between consecutive tokens.

Pure functions on tensors; they rate exactly the positions they are given (callers pass generated tokens
only). Shapes: B sequences, T positions, L MoE layers, N experts, k = k̃ routed experts, k̂ allowed experts.
"""

from __future__ import annotations

import torch
from torch import Tensor


def switch_rate(masks: Tensor, per_layer: bool = False) -> float | Tensor:
    """§2 switch rate: (1/L) Σ_ℓ (1/(T−1)) Σ_{t=1}^{T−1} 1[ω_t^ℓ ≠ ω_{t−1}^ℓ].

    masks: bool (T, L, N) for one sequence, or (B, T, L, N) for B sequences of equal length (then the mean
    over sequences). Returns the mean over layers as a float, or with `per_layer=True` the (L,) float32
    per-layer rates.
    """
    if masks.dtype != torch.bool or masks.dim() not in (3, 4):
        raise ValueError(
            f"masks must be bool (T, L, N) or (B, T, L, N), got {masks.dtype} {tuple(masks.shape)}"
        )
    if masks.dim() == 3:
        masks = masks.unsqueeze(0)
    if masks.shape[1] < 2:
        raise ValueError(f"a switch rate needs at least T = 2 positions, got T = {masks.shape[1]}")
    changed = (masks[:, 1:] != masks[:, :-1]).any(dim=-1)  # (B, T-1, L): ω_t ≠ ω_{t−1}
    rates = changed.float().mean(dim=(0, 1))  # (L,): mean over t = 1..T-1, then over sequences
    return rates if per_layer else float(rates.mean())


def router_option_masks(router_logits: Tensor, expert_ids: Tensor, k_hat: int) -> Tensor:
    """§2 base-model options: the masks ω_t the router itself would hold, bool (T, L, N).

    At t = 0 and at every switch, ω := the router's top-k̂ experts of that token, taken as the k̃ routed experts
    plus the k̂ − k̃ highest-logit others (identical to the top-k̂ logits for softmax/top-k routers; for
    DeepSeek's biased selection it keeps the routed experts inside the mask). ω persists while every later
    token's k̃ routed experts lie inside it. router_logits (T, L, N), expert_ids (T, L, k).
    """
    if router_logits.dim() != 3 or expert_ids.dim() != 3:
        raise ValueError(f"expected router_logits (T, L, N) and expert_ids (T, L, k), got "
                         f"{tuple(router_logits.shape)} and {tuple(expert_ids.shape)}")
    T, L, N = router_logits.shape
    k = expert_ids.shape[-1]
    if expert_ids.shape[:2] != (T, L):
        raise ValueError(f"expert_ids {tuple(expert_ids.shape)} do not match router_logits {(T, L, N)}")
    if not k <= k_hat <= N:
        raise ValueError(f"k_hat={k_hat} is out of range; need k̃ = {k} <= k_hat <= N = {N}")
    routed = torch.zeros(T, L, N, dtype=torch.bool).scatter_(-1, expert_ids.long().cpu(), True)
    # Candidate option at every position: routed experts first (score +inf), then the highest logits.
    score = router_logits.detach().float().cpu().masked_fill(routed, float("inf"))
    candidate = torch.zeros(T, L, N, dtype=torch.bool).scatter_(-1, score.topk(k_hat, dim=-1).indices, True)
    masks = torch.empty(T, L, N, dtype=torch.bool)
    masks[0] = candidate[0]
    for t in range(1, T):  # sequential in t (the option persists), vectorised over layers
        inside = (routed[t] <= masks[t - 1]).all(dim=-1, keepdim=True)  # (L, 1)
        masks[t] = torch.where(inside, masks[t - 1], candidate[t])
    return masks


def router_switch_rate(router_logits: Tensor, expert_ids: Tensor, k_hat: int,
                       per_layer: bool = False) -> float | Tensor:
    """§2 base-model switch rate: `switch_rate` of the router's own options (`router_option_masks`).

    router_logits (T, L, N), expert_ids (T, L, k) routed ids, k̃ <= k_hat <= N. With k_hat = k̃ it is the
    fraction of steps where the routed set changed; with k_hat = N it is 0. Every triggered switch changes
    the mask (the new mask holds the routed experts that left the old one), so counting mask changes equals
    counting the triggers, as the reference implementation does.
    """
    return switch_rate(router_option_masks(router_logits, expert_ids, k_hat), per_layer=per_layer)
