"""Returns and advantages (paper §4.3, Alg. 2 lines 4-12 and 18): GAE(λ) for V and Q, Monte Carlo returns.

Shape legend: B batch, T controlled positions (one per generated token), L MoE layers. Time is dim 1;
any trailing dims (e.g. L) are carried along. `valid` (B, T) marks each row's positions that carry an
action a_t and reward r_t (before and including EOS, never padding). All arithmetic is float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    """(B, T) -> (B, T, 1, ...) broadcastable against `like` (B, T, ...)."""
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def discounted_cumsum(x: Tensor, valid: Tensor, discount: float) -> Tensor:
    """y_t = Σ_{j>=0} discount^j x_{t+j} over the row's valid positions. x (B, T, ...) -> (B, T, ...).

    Vectorised as one matmul with the upper-triangular matrix D[t, j] = discount^(j - t) (j >= t); x is
    zeroed outside `valid`, so a sum stops at the end of its row. Zero at invalid positions. The matmul runs
    in float64 so a global TF32 matmul setting cannot degrade it; the result is float32.
    """
    m = _expand(valid, x)
    x = x.double() * m
    T = x.shape[1]
    steps = torch.arange(T, device=x.device)
    diff = steps[None, :] - steps[:, None]  # (T, T): j - t
    powers = torch.tensor(discount, dtype=torch.float64, device=x.device).pow(diff.clamp_min(0))
    D = powers * (diff >= 0)  # pow(0, 0) = 1 keeps discount = 0 exact
    return (torch.einsum("tj,bj...->bt...", D, x) * m).float()


def next_step(x: Tensor, valid: Tensor, terminated: Tensor) -> Tensor:
    """x_{t+1} as seen from t, for bootstrapping. x (B, T, ...), valid (B, T), terminated (B,) -> (B, T, ...).

    Inside a row: x[t + 1]. After the row's last valid position: 0 if the row terminated (EOS: no
    bootstrap past the end); for a truncated row, x at the column right after its last valid one, which
    the rollout fills by recording one more controlled position (left invalid). A truncated row whose last
    valid position is column T-1 has no such column and is treated as terminal.
    """
    x = x.float()
    shifted = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
    next_valid = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], dim=1)
    has_column = torch.ones_like(valid)
    has_column[:, -1] = False
    keep = valid & (next_valid | (~terminated.bool()[:, None] & has_column))
    return shifted * _expand(keep, x)


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, valid: Tensor, gamma: float,
        lam: float) -> Tensor:
    """GAE(λ) advantages Â_t = Σ_j (γλ)^j δ_{t+j}, δ_t = r_t + γ·next_t - values_t (Alg. 2 lines 7-10).

    rewards (B, T); values, next_values (B, T, ...) (next_values from `next_step`, 0 past a terminal end);
    valid (B, T). Returns (B, T, ...), 0 at invalid positions. No gradient flows (inputs are detached).
    """
    r = _expand(rewards.float(), values)
    delta = r + gamma * next_values.detach().float() - values.detach().float()
    return discounted_cumsum(delta, valid, gamma * lam)


class CriticTargets(NamedTuple):
    """GAE advantages and critic targets, each (B, T, ...) float32, detached, 0 at invalid positions."""

    v_advantage: Tensor  # Â^V_t
    q_advantage: Tensor  # Â^Q_t
    v_target: Tensor  # V̂_t = V(h_t) + Â^V_t
    q_target: Tensor  # Q̂_t = Q(h_t, ω_t) + Â^Q_t


def option_critic_targets(rewards: Tensor, values: Tensor, q_prev: Tensor, q_exec: Tensor, betas: Tensor,
                          valid: Tensor, terminated: Tensor, gamma: float = 0.95,
                          lam: float = 0.95) -> CriticTargets:
    """GAE(λ) targets for V and for Q with the option bootstrap U (§4.3, Alg. 2 lines 4-12).

    rewards (B, T); values V(h_t), q_prev Q(h_t, ω_{t-1}), q_exec Q(h_t, ω_t), betas β(h_t, ω_{t-1}), each
    (B, T, ...); valid (B, T); terminated (B,) bool (row ended with EOS). γ = λ = 0.95 (§5).
    U_t = β_{t+1} V(h_{t+1}) + (1 - β_{t+1}) Q(h_{t+1}, ω_t): column t+1 of `betas` and `q_prev` is
    evaluated at ω_t, so U is formed per column and shifted with `next_step`.
    """
    values, q_prev, q_exec, betas = (x.detach().float() for x in (values, q_prev, q_exec, betas))
    u = betas * values + (1.0 - betas) * q_prev  # column t+1 of this is U_t
    v_adv = gae(rewards, values, next_step(values, valid, terminated), valid, gamma, lam)
    q_adv = gae(rewards, q_exec, next_step(u, valid, terminated), valid, gamma, lam)
    m = _expand(valid, values)
    return CriticTargets(v_adv, q_adv, (values + v_adv) * m, (q_exec + q_adv) * m)


def discounted_returns(rewards: Tensor, valid: Tensor, gamma: float = 0.95) -> Tensor:
    """Monte Carlo returns Ḡ_t = Σ_{j>=0} γ^j r_{t+j} to the end of the row, no bootstrap (Alg. 2 line 18).

    rewards, valid (B, T) -> (B, T), 0 at invalid positions.
    """
    return discounted_cumsum(rewards, valid, gamma)


def standardize(x: Tensor, valid: Tensor, per_sequence: bool = False, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the valid positions (§4.3: Ḡ standardised over the response tokens).

    x, valid (B, T) -> (B, T), 0 at invalid positions. Statistics over all valid positions of the batch,
    or over each row's own positions with `per_sequence=True`. Population std, clamped at `eps`.
    """
    x, m = x.float(), valid.float()
    dims = (1,) if per_sequence else (0, 1)
    n = m.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dims, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(dims, keepdim=True) / n
    return (x - mean) / var.sqrt().clamp_min(eps) * m
