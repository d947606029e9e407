"""Reconstruction-loss pruning baseline (Lu et al. 2024; the paper's §5): per layer, greedy forward selection
of the k̂-subset C minimising ‖F′(X, C) − F(X)‖_F on cached MoE-block inputs X from the calibration set.

F(X) is the routed part of the MoE block with every expert allowed; F′(X, C) recomputes the routing with only
the experts in C allowed: the router's own rule (`temoe.moe.routing`, the same functions the masked-routing
hook uses) with top-min(k̃, |C|) over the allowed logits, then the weighted sum of those experts' outputs.
Shared experts (qwen2_moe, deepseek_v3) do not depend on C and cancel in F′ − F, so they are left out.

Every expert's output E_j(x) is computed once per layer by calling the model's own experts module with all
k̃ slots set to expert j and weights (1, 0, ..., 0), which works for every supported architecture. Then each
candidate C costs a gather, not an expert forward: k̂ rounds × ≤ N candidates per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from temoe.moe import routing

__all__ = ["expert_outputs", "route_restricted", "restricted_output", "reconstruction_error",
           "greedy_reconstruction", "reconstruction_masks"]


@torch.no_grad()
def router_logits(handle, i: int, x: Tensor) -> Tensor:
    """(T, N) float32 raw router logits of MoE layer i for inputs x (T, H)."""
    router = handle.routers[i]
    inp = x[None] if handle.spec.family == "sigmoid_group" else x  # DeepSeek-style routers take (B, S, H)
    logits = router(inp)[0]
    return logits.reshape(x.shape[0], -1).float()


@torch.no_grad()
def expert_outputs(handle, i: int, x: Tensor) -> Tensor:
    """(N, T, H) float32: E_j(x) of every expert j of MoE layer i, unweighted, for x (T, H)."""
    experts = handle.experts[i]
    T, k = x.shape[0], handle.top_k
    weights = torch.zeros(T, k, dtype=x.dtype, device=x.device)
    weights[:, 0] = 1  # the other k̃ − 1 slots repeat expert j with weight 0
    outs = []
    for j in range(handle.num_experts):
        ids = torch.full((T, k), j, dtype=torch.long, device=x.device)
        outs.append(experts(x, ids, weights).float())
    return torch.stack(outs)


def route_restricted(handle, i: int, logits: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Weights (T, k') float32 and ids (T, k') of layer i's own routing rule over `allowed` (N,) bool,
    with k' = min(k̃, |allowed|) (Lu et al.: top-min(k̃, |C|) while the greedy set is still small)."""
    spec, router = handle.spec, handle.routers[i]
    k = min(handle.top_k, int(allowed.sum()))
    allowed = allowed.to(logits.device).expand_as(logits)
    if spec.family == "topk_softmax":
        w, ids = routing.topk_softmax(logits, allowed, k, torch.float32)
    elif spec.family == "softmax_topk":
        renorm = router.norm_topk_prob if spec.renormalize is None else spec.renormalize
        w, ids = routing.softmax_topk(logits, allowed, k, renorm, torch.float32)
    else:
        w, ids = routing.sigmoid_group(logits, allowed, k, router.e_score_correction_bias.float(),
                                       router.num_group, router.topk_group, router.norm_topk_prob,
                                       router.routed_scaling_factor)
    return w.float(), ids


def restricted_output(outputs: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
    """(T, H) Σ_s weights[t, s] · E_{ids[t, s]}(x_t) from expert outputs (N, T, H), weights/ids (T, k')."""
    per_token = outputs.permute(1, 0, 2)  # (T, N, H)
    chosen = per_token.gather(1, ids[:, :, None].expand(-1, -1, per_token.shape[-1]))  # (T, k', H)
    return (weights[:, :, None] * chosen).sum(1)


def reconstruction_error(handle, i: int, logits: Tensor, outputs: Tensor, allowed: Tensor,
                         target: Tensor | None = None) -> float:
    """‖F′(X, C) − F(X)‖_F² for allowed = C (N,) bool. `target` = F(X) (T, H) (computed if None)."""
    if target is None:
        target = restricted_output(outputs, *route_restricted(handle, i, logits, torch.ones_like(allowed)))
    pred = restricted_output(outputs, *route_restricted(handle, i, logits, allowed))
    return float(((pred - target) ** 2).sum())


@torch.no_grad()
def greedy_reconstruction(handle, i: int, x: Tensor, k_hat: int) -> tuple[Tensor, list[float]]:
    """Greedy forward selection for MoE layer i on inputs x (T, H).

    Returns the (N,) bool mask of the chosen k̂ experts and the objective after each round (non-increasing
    is not guaranteed, as top-k̃ changes with C; the greedy choice is the best single addition per round).
    """
    N = handle.num_experts
    if not handle.top_k <= k_hat <= N:
        raise ValueError(f"k_hat={k_hat} out of range; need k̃ = {handle.top_k} <= k_hat <= N = {N}")
    logits = router_logits(handle, i, x)
    outputs = expert_outputs(handle, i, x)
    target = restricted_output(outputs, *route_restricted(handle, i, logits, torch.ones(N, dtype=torch.bool)))
    chosen = torch.zeros(N, dtype=torch.bool)
    history = []
    for _ in range(k_hat):
        best, best_err = -1, float("inf")
        for j in range(N):
            if chosen[j]:
                continue
            trial = chosen.clone()
            trial[j] = True
            err = reconstruction_error(handle, i, logits, outputs, trial, target)
            if err < best_err:
                best, best_err = j, err
        chosen[best] = True
        history.append(best_err)
    return chosen, history


def reconstruction_masks(handle, hidden: list[Tensor], k_hat: int, max_tokens: int | None = 4096,
                         generator: torch.Generator | None = None) -> Tensor:
    """(L, N) bool greedy reconstruction masks from cached MoE-block inputs `hidden[i]` (T_i, H).

    max_tokens: use a uniform random subset of this many calibration tokens per layer (None: all).
    The authors' reference code used all calibration tokens; the objective is a sum over tokens, so a subset
    estimates it (BENCHMARKS.md, "Reconstruction baseline across calibration draws", measures the spread).
    """
    device = next(handle.model.parameters()).device
    dtype = next(handle.experts[0].parameters()).dtype
    masks = []
    for i, x in enumerate(hidden):
        if max_tokens is not None and x.shape[0] > max_tokens:
            keep = torch.randperm(x.shape[0], generator=generator)[:max_tokens]
            x = x[keep]
        mask, _ = greedy_reconstruction(handle, i, x.to(device, dtype), k_hat)
        masks.append(mask)
    return torch.stack(masks)
