"""Re-routing under an expert mask: each routing family's own rule, restricted to the allowed experts.

Each function repeats the exact op sequence (and dtype casts) of the transformers router it stands for,
with the mask applied before the top-k (§2: disallowed logits are -inf before the router's own top-k̃).
With every expert allowed the result is bit-identical to the router's own output, so the hook that calls
these functions can run unconditionally (branchless).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from temoe.moe.arch import ArchSpec

# Fill for disallowed experts in DeepSeek's group scores: finite so that sums over a group stay ordered
# (a group with fewer allowed experts ranks lower) instead of becoming -inf - (-inf) = nan-prone ties.
_GROUP_FILL = -1e9


def topk_softmax(logits: Tensor, allowed: Tensor, k: int,
                 weights_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """gpt_oss / granitemoe: top-k over the allowed logits, then softmax over those k values.

    logits (T, N), allowed bool (T, N) -> weights (T, k) in `weights_dtype`, ids (T, k) int64.
    """
    top_value, top_index = torch.topk(logits.masked_fill(~allowed, float("-inf")), k, dim=-1)
    # gpt_oss: softmax(v, dim=1, dtype=v.dtype); granitemoe: softmax(v).type_as(hidden) with fp32 logits.
    weights = torch.nn.functional.softmax(top_value, dim=-1, dtype=top_value.dtype).to(weights_dtype)
    return weights, top_index


def softmax_topk(logits: Tensor, allowed: Tensor, k: int, renormalize: bool,
                 weights_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """mixtral / qwen*_moe / olmoe: float32 softmax over the allowed logits, top-k, optional renormalisation.

    The softmax runs over the allowed experts only, so without renormalisation (qwen2_moe, olmoe) the k
    weights are probabilities under the allowed set (docs/foundation.md). Mixtral keeps float32 weights,
    the others cast back to the logits' dtype: `weights_dtype` is the router's own output dtype.
    logits (T, N), allowed bool (T, N) -> weights (T, k), ids (T, k) int64.
    """
    masked = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.nn.functional.softmax(masked, dim=-1, dtype=torch.float)
    top_value, top_index = torch.topk(probs, k, dim=-1)
    if renormalize:
        top_value = top_value / top_value.sum(dim=-1, keepdim=True)
    return top_value.to(weights_dtype), top_index


def sigmoid_group(logits: Tensor, allowed: Tensor, k: int, correction_bias: Tensor, num_group: int,
                  topk_group: int, renormalize: bool, scaling: float) -> tuple[Tensor, Tensor]:
    """deepseek_v3 / glm4_moe: sigmoid scores + correction bias, group-limited top-k, unbiased weights.

    The mask applies to the selection scores (scores + bias), not the logits: sigmoid(-inf) = 0 plus a
    positive bias could still win. Groups are ranked by the sum of their two best *allowed* selection scores.
    Fallback: a token whose chosen groups hold fewer than k allowed experts picks among all its allowed
    experts, ignoring the group limit (docs/foundation.md).
    logits (T, N) float32, allowed bool (T, N) -> weights (T, k) float32, ids (T, k) int64.
    """
    num_experts = logits.shape[-1]
    scores = logits.sigmoid()
    scores_for_choice = scores + correction_bias
    group_scores = (
        scores_for_choice.masked_fill(~allowed, _GROUP_FILL)
        .view(-1, num_group, num_experts // num_group)  # (T, groups, N / groups)
        .topk(2, dim=-1)[0]
        .sum(dim=-1)
    )
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = (
        group_mask.unsqueeze(-1)
        .expand(-1, num_group, num_experts // num_group)
        .reshape(-1, num_experts)
        .bool()
    )
    eligible = score_mask & allowed
    eligible = torch.where(eligible.sum(dim=-1, keepdim=True) < k, allowed, eligible)
    choice = scores_for_choice.masked_fill(~eligible, float("-inf"))
    top_index = torch.topk(choice, k=k, dim=-1, sorted=False)[1]
    top_weights = scores.gather(1, top_index)
    if renormalize:
        top_weights = top_weights / (top_weights.sum(dim=-1, keepdim=True) + 1e-20)
    return top_weights * scaling, top_index


def reroute(spec: ArchSpec, router: nn.Module, logits: Tensor, allowed: Tensor,
            weights_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Routing weights and expert ids of `router` (a router of `spec.model_type`) restricted to `allowed`.

    logits (T, N) are the router's own raw logits, allowed bool (T, N) on the same device, weights_dtype the
    dtype of the router's own weights output. Returns weights (T, k) and ids (T, k) int64.
    """
    k = router.top_k
    if spec.family == "topk_softmax":
        return topk_softmax(logits, allowed, k, weights_dtype)
    if spec.family == "softmax_topk":
        renormalize = router.norm_topk_prob if spec.renormalize is None else spec.renormalize
        return softmax_topk(logits, allowed, k, renormalize, weights_dtype)
    if spec.family == "sigmoid_group":
        return sigmoid_group(logits, allowed, k, router.e_score_correction_bias, router.num_group,
                             router.topk_group, router.norm_topk_prob, router.routed_scaling_factor)
    raise AssertionError(f"unknown routing family {spec.family!r}")
