"""The one token sampler: temperature, top-p and teacher mixing, for rollouts, evaluation and serving.

`sample_next` draws from one model's tempered nucleus (greedy at temperature 0); `mixed_sample` draws from
the teacher-student mixture p_mix = (1 − τ) p_student + τ p_teacher, nucleus on p_mix (§4, Alg. 2 l. 10–13).
Both use the same `nucleus` rule and the same draw from an explicit `torch.Generator`.

How top-p combines with the mixture (the paper states both; the authors' code applied no top-p): the two
distributions are tempered and mixed first, the nucleus is taken on the *mixture* (the smallest set of tokens
whose p_mix mass reaches top_p, always at least the most likely token), and the truncated mixture is
renormalised to q. The token is drawn from q, so the importance weight of the distribution actually sampled
from is w_t = p_student(a_t) / q(a_t) = Z · p_student(a_t) / p_mix(a_t), with Z ≤ 1 the kept mass, so
w_t ≤ Z / (1 − τ) ≤ 1 / (1 − τ) (1.25 at τ = 0.2). With τ = 0 and top_p = 1, w_t = 1. The reward uses the
untruncated student and teacher log-probs at temperature 1 (r_t = log p_teacher(a_t) − log p_student(a_t),
Alg. 2 l. 13), so −r_t stays an estimate of the per-token reverse KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MixedSample:
    """One sampled token per row and its log-probabilities, all float32, shape (B,)."""

    tokens: Tensor
    logp_student: Tensor
    """log p_student(a_t) at temperature 1 (the intra-option policy's own distribution)."""
    logp_teacher: Tensor
    """log p_teacher(a_t) at temperature 1."""
    logp_sampled: Tensor
    """log q(a_t): the tempered, top-p-truncated, renormalised mixture the token was drawn from."""
    weight: Tensor
    """w_t = p_student(a_t) / q(a_t) with the student tempered as in the mixture (Alg. 2 l. 12)."""
    kl: Tensor
    """KL(p_student ‖ p_teacher) at temperature 1 over the whole vocabulary: the exact per-token reverse KL
    at this state, of which −r_t is a one-sample estimate (logged, never trained on)."""


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Zero all but the smallest set of highest-probability entries whose mass reaches `top_p`; renormalise.

    probs: (B, V) rows summing to 1 -> (B, V). The most likely token is always kept.
    """
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # Keep an entry if the mass strictly before it is < top_p (so the entry that crosses top_p stays).
    before = sorted_p.cumsum(dim=-1) - sorted_p
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_next(logits: Tensor, temperature: float, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """(B, V) next-token logits -> (B,) long token ids: argmax at temperature <= 0, else a draw from
    nucleus(softmax(logits / temperature), top_p). `generator` must live on the logits' device."""
    if temperature <= 0:
        return logits.argmax(-1)
    return _draw(nucleus(torch.softmax(logits.float() / temperature, dim=-1), top_p), generator)


def _draw(q: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row from probabilities q (B, V) -> (B,) long."""
    return torch.multinomial(q, 1, generator=generator).squeeze(-1)


def mixed_sample(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    tau: float,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> MixedSample:
    """Draw a_t ~ nucleus_top_p((1 − τ) softmax(s / temp) + τ softmax(t / temp)).

    student_logits, teacher_logits: (B, V) next-token logits (any dtype; the arithmetic is float32).
    """
    s = student_logits.float()
    t = teacher_logits.float()
    p_student_temp = torch.softmax(s / temperature, dim=-1)
    p_mix = (1.0 - tau) * p_student_temp + tau * torch.softmax(t / temperature, dim=-1)
    q = nucleus(p_mix, top_p)
    tokens = _draw(q, generator)  # (B,)
    pick = tokens.unsqueeze(-1)
    logp_student, logp_teacher, kl = _scores(s, t, pick)
    q_a = q.gather(-1, pick).squeeze(-1)
    weight = p_student_temp.gather(-1, pick).squeeze(-1) / q_a
    return MixedSample(
        tokens=tokens,
        logp_student=logp_student,
        logp_teacher=logp_teacher,
        logp_sampled=q_a.log(),
        weight=weight,
        kl=kl,
    )


def forced_sample(student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor) -> MixedSample:
    """A `MixedSample` for given tokens (B,) instead of a draw: teacher-forced evaluation of fixed text.

    logp_student, logp_teacher and kl as in `mixed_sample`; the token was not sampled from the student, so
    weight is 1 and logp_sampled is the teacher's log-prob (the fixed text comes from the teacher in
    `temoe.train` probes).
    """
    logp_student, logp_teacher, kl = _scores(student_logits.float(), teacher_logits.float(), tokens[:, None])
    return MixedSample(
        tokens=tokens,
        logp_student=logp_student,
        logp_teacher=logp_teacher,
        logp_sampled=logp_teacher,
        weight=torch.ones_like(logp_teacher),
        kl=kl,
    )


def _scores(s: Tensor, t: Tensor, pick: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Temperature-1 log p_student(a), log p_teacher(a) of the tokens `pick` (B, 1) and the exact
    KL(p_student ‖ p_teacher) over the vocabulary, each (B,), from float32 logits s, t (B, V)."""
    log_s, log_t = torch.log_softmax(s, dim=-1), torch.log_softmax(t, dim=-1)
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    return log_s.gather(-1, pick).squeeze(-1), log_t.gather(-1, pick).squeeze(-1), kl
