"""Option-critic losses (paper §4.3, Alg. 2 lines 13-19): critic, termination, selection, intra-option.

Pure functions: tensors in, `(loss, stats)` out; minimising each loss follows the paper's gradient.
Shape legend: B batch, T controlled positions, L MoE layers. Per-layer tensors are (B, T, L) (a (B, T)
tensor is one layer); masks and importance weights w_t are (B, T) and shared by all layers.
All arithmetic is float32. A loss that averages over layers weights every layer equally.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _per_layer(x: Tensor) -> Tensor:
    x = x.float()
    return x.unsqueeze(-1) if x.dim() == 2 else x


def _f(x: Tensor) -> float:
    return float(x.detach())


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    return (x * m).sum() / m.sum().clamp_min(1.0)


def _rms_per_layer(adv: Tensor, m: Tensor, eps: float) -> Tensor:
    """RMS over (B, T) of each layer, without mean centring (A2). adv, m (B, T, L) -> (1, 1, L)."""
    ms = (adv**2 * m).sum((0, 1), keepdim=True) / m.sum((0, 1), keepdim=True).clamp_min(1.0)
    return ms.sqrt().clamp_min(eps)


def critic_loss(values: Tensor, q_exec: Tensor, v_target: Tensor, q_target: Tensor, valid: Tensor,
                coef: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """coef · mean over valid (b, t, l) of (V - V̂)² + (Q(h_t, ω_t) - Q̂)² (Alg. 2 line 16).

    values, q_exec (B, T[, L]) with gradients; targets from `option_critic_targets`; valid (B, T) (t = 0
    included: ω_0 is executed there too). Not importance weighted (as the paper's algorithm). The paper
    scales the critic by 0.01 (§5); pass it as `coef` or apply it outside.
    """
    v, q, vt, qt = (_per_layer(x) for x in (values, q_exec, v_target, q_target))
    m = valid[..., None].float().expand_as(v)
    v_mse = _masked_mean((v - vt.detach()) ** 2, m)
    q_mse = _masked_mean((q - qt.detach()) ** 2, m)
    loss = coef * (v_mse + q_mse)
    return loss, {"loss/critic": _f(v_mse + q_mse), "loss/value_mse": _f(v_mse),
                  "loss/option_value_mse": _f(q_mse)}


def termination_loss(betas: Tensor, q_prev: Tensor, values: Tensor, mask: Tensor, eta: float | Tensor,
                     weights: Tensor | None = None, rms_normalize: bool = True,
                     eps: float = 1e-8) -> tuple[Tensor, dict[str, float]]:
    """Termination loss whose gradient is Σ w_t ∇β_t · Â^term_t (Eq. 9, Alg. 2 line 13: dν -= ...).

    betas (B, T[, L]) with gradients; q_prev Q(h_t, ω_{t-1}) and values V(h_t) (B, T[, L]), detached here;
    mask (B, T): decision positions (valid and t > 0, `Trajectory.decision_mask`); eta: the deliberation
    cost, a float (the paper's flat η) or a per-position switch cost c_t (B, T[, L]) (detached here; e.g.
    `rl.deliberation.loads_switch_cost`); weights (B, T) importance weights w_t (None = 1).
    A^term_t = Q(h_t, ω_{t-1}) - V(h_t) + η (or + c_t), divided by its RMS over each layer's masked positions
    (A2, no mean centring). Per layer: Σ w β Â / Σ w over the mask; then the mean over layers. Minimising
    lowers β where Q - V + η > 0 (keeping the current option is worth more than switching plus the cost).
    """
    b, qp, v = _per_layer(betas), _per_layer(q_prev).detach(), _per_layer(values).detach()
    m = mask[..., None].float().expand_as(b)
    adv = qp - v + (_per_layer(eta).detach() if isinstance(eta, Tensor) else eta)
    scale = _rms_per_layer(adv, m, eps) if rms_normalize else torch.ones_like(adv[:1, :1])
    w = m if weights is None else m * weights.float()[..., None]
    per_layer = (w * b * adv / scale).sum((0, 1)) / w.sum((0, 1)).clamp_min(1e-12)  # (L,)
    loss = per_layer.mean()
    return loss, {"loss/termination": _f(loss),
                  "termination/adv_mean": _f(_masked_mean(adv, m)),
                  "termination/adv_rms": _f(scale.mean()),
                  "termination/beta_mean": _f(_masked_mean(b, m)),
                  "termination/frac_keep_preferred": _f(_masked_mean((adv > 0).float(), m)),
                  **({"termination/cost_mean": _f(_masked_mean(_per_layer(eta).expand_as(b), m))}
                     if isinstance(eta, Tensor) else {})}


def selection_loss(log_probs: Tensor, q_exec: Tensor, values: Tensor, switches: Tensor,
                   weights: Tensor | None = None, rms_normalize: bool = True, eps: float = 1e-8,
                   cost: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Selection policy-gradient loss at switch positions (Eq. 10, Alg. 2 lines 14-15).

    log_probs log π_sel(ω_t | h_t) (B, T[, L]) with gradients; q_exec Q(h_t, ω_t) and values V(h_t)
    (B, T[, L]), detached here; switches (B, T[, L]) bool: d_t = 1 at a decision position
    (`Trajectory.decisions`); weights (B, T) or None; cost (B, T[, L]) or None: the switch cost c_t paid
    for choosing ω_t (detached here; read at switches only). None is the paper's flat cost: the same at
    every switch, it is an option-independent baseline and drops out of the expected gradient.
    A^sel_t = Q(h_t, ω_t) - V(h_t) [- c_t], divided by its RMS over the layer's switch positions (A2). Per
    layer: -Σ w log π Â / Σ w over its switches (0 for a layer without switches); then the mean over layers.
    """
    lp, q, v = _per_layer(log_probs), _per_layer(q_exec).detach(), _per_layer(values).detach()
    s = _per_layer(switches).expand_as(lp)
    adv = q - v if cost is None else q - v - _per_layer(cost).detach()
    scale = _rms_per_layer(adv, s, eps) if rms_normalize else torch.ones_like(adv[:1, :1])
    w = s if weights is None else s * weights.float()[..., None]
    per_layer = -(w * lp * adv / scale).sum((0, 1)) / w.sum((0, 1)).clamp_min(1e-12)  # (L,)
    loss = per_layer.mean()
    return loss, {"loss/selection": _f(loss), "selection/num_switches": _f(s.sum()),
                  "selection/adv_mean": _f(_masked_mean(adv, s)), "selection/adv_rms": _f(scale.mean()),
                  **({"selection/cost_mean": _f(_masked_mean(_per_layer(cost).expand_as(lp), s))}
                     if cost is not None else {})}


def intra_option_loss(token_log_probs: Tensor, advantages: Tensor, valid: Tensor,
                      weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Intra-option policy gradient on the LLM (Eq. 8, Alg. 2 line 19): -Σ w log π(a_t) Ĝ_t / Σ w.

    token_log_probs log π_θ(a_t | x, a_<t) (B, T) with gradients; advantages Ĝ_t (B, T), the standardised
    Monte Carlo returns (`standardize(discounted_returns(...))`), detached here; valid (B, T): response
    tokens, EOS included, padding excluded; weights (B, T) or None.
    """
    m = valid.float()
    w = m if weights is None else m * weights.float()
    loss = -(w * token_log_probs.float() * advantages.detach().float()).sum() / w.sum().clamp_min(1e-12)
    return loss, {"loss/intra_option": _f(loss),
                  "intra_option/adv_mean": _f(_masked_mean(advantages.float(), m))}


def token_kl_loss(student_logits: Tensor, teacher_logits: Tensor,
                  valid: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Full-vocabulary reverse KL(π_θ ‖ p_teacher) at every visited response position, averaged over them.

    The exact counterpart of `intra_option_loss`'s sampled objective (as in on-policy distillation, Agarwal
    et al. 2024; used by the `static-distill` peer method): the same per-token objective the reward estimates
    (−r_t is a one-sample estimate of this KL), computed exactly over the vocabulary at the states the rollout
    visited, without credit assignment to later tokens. student_logits (B, T, V) with gradients,
    teacher_logits (B, T, V) (detached here), both at the sampling temperature; valid (B, T).
    """
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    log_t = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)  # (B, T)
    m = valid.float()
    loss = (kl * m).sum() / m.sum().clamp_min(1e-12)
    return loss, {"loss/token_kl": _f(loss)}
