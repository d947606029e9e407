"""The one sampler: teacher-mixed sampling (nucleus on the mixture, importance weights, reward log-probs,
hand-computed) and plain next-token sampling, checked against the samplers it replaced."""

import math

import pytest
import torch

from temoe.rollout.sampling import mixed_sample, nucleus, sample_next


def test_nucleus_keeps_smallest_set_reaching_top_p():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    # mass before each sorted entry: 0, .5, .8, .95 -> keep three at top_p = 0.9; renormalise by 0.95
    q = nucleus(p, 0.9)
    torch.testing.assert_close(q, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)
    # top_p small keeps only the argmax
    torch.testing.assert_close(nucleus(p, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert nucleus(p, 1.0) is p


def test_mixed_sample_weights_and_logprobs_by_hand():
    # student p_s = (0.5, 0.5, 0, 0) approx; teacher p_t = (0, 0, 0.5, 0.5) approx (large negative logits)
    neg = -1e4
    s = torch.tensor([[0.0, 0.0, neg, neg]])
    t = torch.tensor([[neg, neg, 0.0, 0.0]])
    # p_mix = 0.8*(.5,.5,0,0) + 0.2*(0,0,.5,.5) = (.4,.4,.1,.1)
    # top_p = 0.95: mass before = 0,.4,.8,.9 -> all kept
    counts = torch.zeros(4)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = mixed_sample(s.expand(40, 4), t.expand(40, 4), tau=0.2, top_p=0.95, generator=g)
        counts += torch.bincount(out.tokens, minlength=4)
        a = out.tokens
        student_side = a < 2
        # w = p_s(a)/q(a): 0.5/0.4 = 1.25 on the student's tokens, 0/0.1 = 0 on the teacher's
        torch.testing.assert_close(out.weight[student_side], torch.full_like(out.weight[student_side], 1.25))
        assert torch.all(out.weight[~student_side] < 1e-6)
        torch.testing.assert_close(out.logp_sampled, torch.where(student_side, math.log(0.4), math.log(0.1)))
        torch.testing.assert_close(
            out.logp_student[student_side], torch.full_like(out.logp_student[student_side], math.log(0.5))
        )
        assert out.logp_student.dtype == torch.float32
    freq = counts / counts.sum()
    torch.testing.assert_close(freq, torch.tensor([0.4, 0.4, 0.1, 0.1]), atol=0.03, rtol=0)


def test_top_p_truncates_the_mixture_and_renormalises_the_weight():
    neg = -1e4
    s = torch.tensor([[0.0, 0.0, neg, neg]])
    t = torch.tensor([[neg, neg, 0.0, 0.0]])
    # p_mix = (.4,.4,.1,.1); top_p = 0.85: mass before = 0,.4,.8,.9 -> keep 3 tokens, Z = 0.9
    g = torch.Generator().manual_seed(1)
    out = mixed_sample(s.expand(2000, 4), t.expand(2000, 4), tau=0.2, top_p=0.85, generator=g)
    kept = torch.bincount(out.tokens, minlength=4)
    assert kept[3] == 0 or kept[2] == 0  # one of the two teacher-only tokens (tied) is cut
    on_student = out.tokens < 2
    # w = p_s / q = 0.5 / (0.4 / 0.9) = 1.125
    torch.testing.assert_close(out.weight[on_student], torch.full_like(out.weight[on_student], 1.125))


def test_no_mixing_no_truncation_gives_unit_weights_and_zero_reward_for_identical_models():
    logits = torch.randn(8, 16)
    out = mixed_sample(logits, logits, tau=0.0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.weight, torch.ones(8))
    torch.testing.assert_close(out.logp_teacher - out.logp_student, torch.zeros(8))


def test_forced_sample_scores_the_given_tokens():
    from temoe.rollout.sampling import forced_sample

    torch.manual_seed(0)
    s, t = torch.randn(3, 11), torch.randn(3, 11)
    tokens = torch.tensor([4, 0, 10])
    out = forced_sample(s, t, tokens)
    assert torch.equal(out.tokens, tokens)
    torch.testing.assert_close(out.logp_student, s.log_softmax(-1)[torch.arange(3), tokens])
    torch.testing.assert_close(out.logp_teacher, t.log_softmax(-1)[torch.arange(3), tokens])
    kl = (s.softmax(-1) * (s.log_softmax(-1) - t.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(out.kl, kl)
    assert torch.equal(out.weight, torch.ones(3))
    # the exact KL of a mixed draw is the same quantity, whatever token was drawn
    torch.testing.assert_close(mixed_sample(s, t, tau=0.2).kl, kl)


def _serving_rule_before_merge(logits, temperature, top_p, generator):
    """The serving engine's own sampler before it used `sample_next` (reference for the parity test)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)


def _eval_rule_before_merge(logits, temperature, top_p, generator):
    """The evaluation runner's and `generate_text`'s sampler before they used `sample_next`."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = nucleus(torch.softmax(logits.float() / temperature, dim=-1), top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (0.5, 0.95), (1.0, 1.0), (0.7, 0.5)])
def test_sample_next_draws_what_the_merged_samplers_drew(temperature, top_p):
    """Same logits, same generator seed -> the same tokens as each sampler it replaced, over many draws."""
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(3)) * 3
    for reference in (_serving_rule_before_merge, _eval_rule_before_merge):
        g_new, g_old = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _ in range(20):
            new = sample_next(logits, temperature, top_p, g_new)
            old = reference(logits, temperature, top_p, g_old).reshape(-1)
            assert torch.equal(new, old)


def test_sample_next_greedy_at_zero_temperature_and_inside_the_nucleus():
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]])
    assert sample_next(logits, 0.0).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    # top-p 0.5 keeps only the most likely token (its mass alone exceeds 0.5 at temperature 1).
    assert {int(sample_next(logits, 1.0, 0.5, g)) for _ in range(50)} == {1}
