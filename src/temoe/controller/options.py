"""Option utilities: mask <-> indices, Plackett–Luce sampling and log-probability, the initial option.

Shape legend: B batch, T tokens, L MoE layers, N experts, K = k̂ allowed experts, k = k̃ routed, H hidden.
Every function here is pure and works on any leading dims (`...`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def indices_to_mask(ids: Tensor, num_experts: int) -> Tensor:
    """Expert ids (..., K) -> bool mask (..., N) with exactly the K ids set."""
    mask = torch.zeros(*ids.shape[:-1], num_experts, dtype=torch.bool, device=ids.device)
    return mask.scatter_(-1, ids, True)


def mask_to_indices(mask: Tensor, k: int) -> Tensor:
    """Bool mask (..., N) with exactly k True per row -> ascending expert ids (..., k)."""
    counts = mask.sum(-1)
    if not bool((counts == k).all()):
        raise ValueError(f"mask_to_indices: every row must have exactly {k} allowed experts, "
                         f"got counts in [{int(counts.min())}, {int(counts.max())}]")
    # A stable descending sort of the 0/1 mask puts the allowed ids first, in ascending order.
    order = torch.sort(mask.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def initial_option(router_logits: Tensor, k: int) -> Tensor:
    """The paper's ω_0 (§4.2 "Initialization", Alg. 2 line 3): top-k̂ of the router logits.

    router_logits (..., N) -> ids (..., K), in descending logit order.
    """
    return router_logits.topk(k, dim=-1).indices


def sample_plackett_luce(logits: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Sample an ordered k-tuple without replacement from PL(logits) via the Gumbel-top-k trick (Eq. 5).

    logits (..., N) -> ordered ids (..., k). Adding i.i.d. Gumbel(0, 1) noise and taking the top-k is
    exactly sequential PL sampling; the topk order is the PL order. `generator` must live on
    `logits.device` (None uses the global RNG; pass one for reproducible rollouts).
    """
    # Gumbel(0, 1) = -log(E) with E ~ Exp(1); clamp guards log(0).
    exp_noise = torch.empty_like(logits, dtype=torch.float32).exponential_(generator=generator)
    perturbed = logits.float() - exp_noise.clamp_min(torch.finfo(torch.float32).tiny).log()
    return perturbed.topk(k, dim=-1).indices


def plackett_luce_log_prob(logits: Tensor, ordered_ids: Tensor) -> Tensor:
    """Exact log P_PL(i_1..i_k | c) of an ordered tuple (Eq. 5), closed form, float32.

    logits (..., N), ordered_ids (..., k) -> (...). Differentiable in `logits`.
    log P = Σ_j [c_{i_j} - log(Σ_{m ∉ {i_1..i_{j-1}}} exp c_m)]. The denominator of step j is the mass of the
    never-chosen experts plus the mass of the chosen ones from position j on; both are sums of positive
    terms, so this is computed with logsumexp / a reversed logcumsumexp and never subtracts masses.
    """
    logits = logits.float()
    chosen = logits.gather(-1, ordered_ids)  # (..., k)
    chosen_mask = indices_to_mask(ordered_ids, logits.shape[-1])
    rest = logits.masked_fill(chosen_mask, float("-inf")).logsumexp(-1, keepdim=True)  # (..., 1)
    # suffix[j] = log Σ_{j' >= j} exp c_{i_j'}: reverse, logcumsumexp, reverse back.
    suffix = chosen.flip(-1).logcumsumexp(-1).flip(-1)  # (..., k)
    return (chosen - torch.logaddexp(rest, suffix)).sum(-1)
