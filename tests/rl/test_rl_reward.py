"""Reward and importance weights, hand-computed."""

import math

import torch

from temoe.rl import importance_weights, kl_reward, mixture_log_probs, token_log_probs


def test_token_log_probs_float32():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]], dtype=torch.bfloat16)
    out = token_log_probs(logits, torch.tensor([[1, 0]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.5)]]), atol=2e-3, rtol=0)


def test_kl_reward_and_padding():
    lt = torch.tensor([[math.log(0.25), math.log(0.5), -7.0]])
    ls = torch.tensor([[math.log(0.5), math.log(0.5), -1.0]])
    valid = torch.tensor([[True, True, False]])
    r, stats = kl_reward(lt, ls, valid)
    # r = log p_t - log p_s = [log 0.5, 0, (padding) 0]
    torch.testing.assert_close(r, torch.tensor([[math.log(0.5), 0.0, 0.0]]))
    assert abs(stats["reward/kl_mean"] - math.log(2) / 2) < 1e-6
    torch.testing.assert_close(kl_reward(lt, ls, valid, scale=0.5)[0], r * 0.5)


def test_importance_weight_of_teacher_mixture():
    ls, lt = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    lmix = mixture_log_probs(ls, lt, tau=0.2)
    # p_mix = 0.8·0.5 + 0.2·0.25 = 0.45; w = 0.5 / 0.45 = 1.111111
    torch.testing.assert_close(lmix.exp(), torch.tensor([[0.45]]))
    w = importance_weights(ls, lmix, torch.tensor([[True]]))
    torch.testing.assert_close(w, torch.tensor([[0.5 / 0.45]]))
    assert float(importance_weights(ls, lmix, torch.tensor([[False]]))) == 0.0
    torch.testing.assert_close(mixture_log_probs(ls, lt, 0.0), ls)
