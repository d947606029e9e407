"""Per-token reward and importance weights (paper §4.3, Alg. 2 lines 10-13), from token log-probs.

Shape legend: B batch, T response tokens, V vocab. All outputs float32; invalid (padding) positions are 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def token_log_probs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[a_t] in float32: logits (B, T, V), tokens (B, T) -> (B, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def kl_reward(teacher_log_probs: Tensor, student_log_probs: Tensor, valid: Tensor,
              scale: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """r_t = scale · (log p_teacher(a_t) - log p_student(a_t)) (Alg. 2 line 13), 0 at padding.

    teacher_log_probs, student_log_probs, valid (B, T) -> (rewards (B, T), stats). Under student sampling
    -r_t is an unbiased per-token estimate of KL(student ‖ teacher). The paper states no scale, so the default
    is 1; a scale changes the size of Q - V relative to η.
    """
    m = valid.float()
    log_ratio = (teacher_log_probs.float() - student_log_probs.float()) * m
    n = m.sum().clamp_min(1.0)
    stats = {"reward/mean": float(log_ratio.sum() / n), "reward/kl_mean": float(-log_ratio.sum() / n)}
    return scale * log_ratio, stats


def mixture_log_probs(student_log_probs: Tensor, teacher_log_probs: Tensor, tau: float) -> Tensor:
    """log p_mix(a_t) with p_mix = (1 - τ) p_student + τ p_teacher (Alg. 2 line 10). (B, T) -> (B, T)."""
    if tau == 0.0:
        return student_log_probs.float()
    if tau == 1.0:
        return teacher_log_probs.float()
    return torch.logaddexp(student_log_probs.float() + math.log1p(-tau),
                           teacher_log_probs.float() + math.log(tau))


def importance_weights(student_log_probs: Tensor, behaviour_log_probs: Tensor, valid: Tensor) -> Tensor:
    """w_t = p_student(a_t) / p_behaviour(a_t), per token, not a product over t (Alg. 2 line 12).

    behaviour_log_probs: log-prob of a_t under the distribution it was actually sampled from (p_mix, or
    its top-p truncation). (B, T) -> (B, T), 0 at padding. Detached: w is a weight, not a gradient path.
    """
    w = torch.exp(student_log_probs.detach().float() - behaviour_log_probs.detach().float())
    return w * valid.float()
