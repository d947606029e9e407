"""REAP static pruning (Router-weighted Expert Activation Pruning, Cerebras, ICLR 2026): keep the k̂
experts per layer of highest saliency, the mean over the calibration tokens routed to an expert of the
router's gate weight times the L2 norm of that expert's output.

Shapes: B batch, S tokens, T real tokens, L MoE layers, N experts, k = k̃ routed experts, H hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from temoe.baselines.calibration import padded_batches
from temoe.baselines.frequency import frequency_masks
from temoe.moe.routing import reroute

__all__ = ["expert_saliency", "saliency_sums", "reap_masks"]


def _gate_weights(handle, i: int, logits: Tensor) -> Tensor:
    """(T, k) float32 gate weights of the router of MoE layer i for raw logits (T, N), its own rule."""
    router = handle.routers[i]
    device = next(router.parameters()).device
    logits = logits.to(device)
    allowed = torch.ones_like(logits, dtype=torch.bool)
    return reroute(handle.spec, router, logits, allowed, torch.float32)[0].float()


def _expert_output_norms(experts, hidden: Tensor, expert: int) -> Tensor:
    """(T,) ||E_e(x_t)||_2 for hidden (T, H): the experts module called with one expert and weight 1."""
    ids = torch.full((hidden.shape[0], 1), expert, dtype=torch.long, device=hidden.device)
    ones = torch.ones(hidden.shape[0], 1, dtype=hidden.dtype, device=hidden.device)
    return experts(hidden, ids, ones).float().norm(dim=-1)


@torch.no_grad()
def saliency_sums(handle, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sums, counts), both (L, N) float32: Σ over real tokens routed to e of g_e(x) ||E_e(x)||, and how
    many real tokens were routed to e. input_ids, attention_mask (B, S); padding (mask 0) never counts."""
    model = handle.model
    device = next(model.parameters()).device
    with handle.trace(hidden_states=True) as trace:
        model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    valid = attention_mask.flatten().bool().cpu()  # trace rows are (batch, position) within the call
    L, N = handle.num_layers, handle.num_experts
    sums, counts = torch.zeros(L, N), torch.zeros(L, N)
    for i in range(L):
        hidden = trace.hidden_states(i)[valid]  # (T, H)
        ids = trace.expert_ids(i)[valid]  # (T, k)
        gates = _gate_weights(handle, i, trace.router_logits(i)[valid]).cpu()  # (T, k)
        expert_device = next(handle.experts[i].parameters()).device
        for e in ids.unique().tolist():
            rows, slot = torch.nonzero(ids == e, as_tuple=True)
            norms = _expert_output_norms(handle.experts[i], hidden[rows].to(expert_device), e).cpu()
            sums[i, e] = (gates[rows, slot] * norms).sum()
            counts[i, e] = rows.numel()
    return sums, counts


def expert_saliency(handle, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(L, N) REAP saliency on one batch: mean over real tokens routed to expert e of gate weight x
    ||expert output||_2; 0 for experts no token was routed to."""
    sums, counts = saliency_sums(handle, input_ids, attention_mask)
    return sums / counts.clamp(min=1)


def reap_masks(handle, sequences: Sequence[Sequence[int]], k_hat: int, batch_size: int = 8) -> Tensor:
    """(L, N) bool: per layer the k̂ experts of highest REAP saliency over all calibration sequences
    (sums and counts pooled over batches before the mean; ties go to the lower id)."""
    L, N = handle.num_layers, handle.num_experts
    sums, counts = torch.zeros(L, N), torch.zeros(L, N)
    for ids, attn in padded_batches(sequences, batch_size):
        s, c = saliency_sums(handle, ids, attn)
        sums, counts = sums + s, counts + c
    return frequency_masks(sums / counts.clamp(min=1), k_hat)
