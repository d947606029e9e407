"""Wanda structured pruning baseline (Sun et al. 2024; the paper's §5): prune (N − k̂)/N of every expert's
weights with n:m structured sparsity scored by |W| · ‖x‖, reversibly.

Mapping to experts (following the authors' locuslab-based reference code):
- Each expert's `gate_up_proj` and `down_proj` are viewed as [out, in] matrices (gpt_oss stores them [in, out]
  and is transposed for scoring). Biases, routers, attention, embeddings and `lm_head` are untouched.
- Input-channel norms ‖x_j‖₂ come only from the calibration tokens the base routing sends to that expert:
  the MoE block input for `gate_up_proj`, the expert's own post-GLU activation for `down_proj`. An expert that
  received no calibration token falls back to weight magnitude (all norms 1).
- Score S_oj = |W_oj| · ‖x_j‖₂. Within every row and every group of m consecutive input columns, the m − n
  lowest scores are zeroed, with n/m = k̂/N (`nm_for`: k̂ = 16 of N = 32 -> 2:4, k̂ = 8 -> 1:4).
- Layers are pruned in order, each with statistics gathered on the model whose earlier layers are already
  pruned (Sun et al.'s sequential procedure).
- All N experts stay routable: Wanda's mask source is the unrestricted model (an all-allowed mask), and the
  original weights are restored when the `wanda_pruned` context exits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

from temoe.baselines.calibration import collect_routing

__all__ = ["nm_for", "nm_prune_", "expert_norms", "prune_layer_", "wanda_pruned"]

#: model_types whose fused expert weights are stored [in, out] (used as `x @ W`); all others use F.linear.
_IN_OUT_LAYOUT = ("gpt_oss",)


def nm_for(k_hat: int, num_experts: int) -> tuple[int, int]:
    """(n kept, m group) with n/m = k̂/N: the paper's (N − k̂)/N pruned fraction.

    Groups of m = 4 as in the reference (2:4 for k̂ = N/2, 1:4 for k̂ = N/4) when k̂/N is a multiple of 1/4,
    otherwise k̂/N in lowest terms (k̂ = 12 of 32 -> 3:8).
    """
    if not 1 <= k_hat <= num_experts:
        raise ValueError(f"k_hat={k_hat} out of range 1..N={num_experts}")
    if (4 * k_hat) % num_experts == 0:
        return 4 * k_hat // num_experts, 4
    frac = Fraction(k_hat, num_experts)
    return frac.numerator, frac.denominator


def nm_prune_(weight: Tensor, scores: Tensor, n: int, m: int) -> None:
    """In place: in each row of weight (out, in) and each group of m input columns, zero the m − n
    lowest-scoring entries. scores has the weight's shape."""
    out_f, in_f = weight.shape
    if in_f % m:
        raise ValueError(f"input dimension {in_f} is not divisible by the n:m group size m={m}")
    groups = scores.reshape(out_f, in_f // m, m)  # (out, in/m, m)
    drop = groups.topk(m - n, dim=-1, largest=False).indices
    mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).reshape(out_f, in_f)
    weight.mul_(mask.to(weight.dtype))


def _matrices(handle, i: int) -> tuple[Tensor, Tensor, bool]:
    ex = handle.experts[i]
    return ex.gate_up_proj, ex.down_proj, handle.model_type in _IN_OUT_LAYOUT


def _activation(handle, i: int, e: int, x: Tensor) -> Tensor:
    """The input of expert e's down projection (its post-GLU activation) for tokens x (T_e, H)."""
    ex = handle.experts[i]
    gate_up, _, in_out = _matrices(handle, i)
    if in_out:  # gpt_oss: x @ W + b, then its clamped, interleaved GLU
        return ex._apply_gate(x @ gate_up[e] + ex.gate_up_proj_bias[e])
    gate, up = F.linear(x, gate_up[e]).chunk(2, dim=-1)
    return ex.act_fn(gate) * up


@torch.no_grad()
def expert_norms(handle, i: int, x: Tensor, ids: Tensor) -> list[tuple[Tensor | None, Tensor | None]]:
    """Per expert e of layer i: (‖x_j‖₂ over gate_up input channels (H,), over down input channels (I,)),
    from the tokens x (T, H) whose routed ids (T, k) contain e; (None, None) if no token went to e."""
    norms = []
    for e in range(handle.num_experts):
        sel = (ids == e).any(-1)
        if not bool(sel.any()):
            norms.append((None, None))
            continue
        xe = x[sel]
        act = _activation(handle, i, e, xe)
        norms.append((xe.float().norm(dim=0), act.float().norm(dim=0)))
    return norms


@torch.no_grad()
def prune_layer_(handle, i: int, x: Tensor, ids: Tensor, n: int, m: int) -> None:
    """Wanda n:m pruning of every expert of MoE layer i in place, from its calibration inputs x (T, H)."""
    gate_up, down, in_out = _matrices(handle, i)
    for e, (g_norm, d_norm) in enumerate(expert_norms(handle, i, x, ids)):
        for weight, norm in ((gate_up, g_norm), (down, d_norm)):
            w = weight[e].T if in_out else weight[e]  # (out, in) view; writes go through to the parameter
            scale = torch.ones(w.shape[1], device=w.device) if norm is None else norm.to(w.device)
            nm_prune_(w, w.abs().float() * scale[None, :], n, m)


@contextmanager
def wanda_pruned(handle, sequences: Sequence[Sequence[int]], k_hat: int,
                 batch_size: int = 8) -> Iterator[dict]:
    """Prune every expert (layer by layer, Sun et al.) for the duration of the block; restore on exit.

    Yields a dict with `n`, `m` and `sparsity` (fraction of expert weights zeroed).
    """
    n, m = nm_for(k_hat, handle.num_experts)
    saved = [(handle.experts[i].gate_up_proj.detach().clone(), handle.experts[i].down_proj.detach().clone())
             for i in range(handle.num_layers)]
    try:
        device = next(handle.model.parameters()).device
        for i in range(handle.num_layers):
            stats = collect_routing(handle, sequences, batch_size, hidden_states=True, layers=[i])
            prune_layer_(handle, i, stats.hidden[i].to(device), stats.expert_ids[i].to(device), n, m)
        zeros = sum(int((p == 0).sum()) for i in range(handle.num_layers) for p in _matrices(handle, i)[:2])
        total = sum(p.numel() for i in range(handle.num_layers) for p in _matrices(handle, i)[:2])
        yield {"n": n, "m": m, "sparsity": zeros / total}
    finally:
        with torch.no_grad():
            for i, (gu, dn) in enumerate(saved):
                handle.experts[i].gate_up_proj.copy_(gu)
                handle.experts[i].down_proj.copy_(dn)
