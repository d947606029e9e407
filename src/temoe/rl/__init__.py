"""temoe.rl: option-critic and distillation math as pure functions (tensors in; tensors or (loss, stats))."""

from temoe.rl.losses import critic_loss, intra_option_loss, selection_loss, termination_loss, token_kl_loss
from temoe.rl.returns import (
    CriticTargets,
    discounted_cumsum,
    discounted_returns,
    gae,
    next_step,
    option_critic_targets,
    standardize,
)
from temoe.rl.reward import importance_weights, kl_reward, mixture_log_probs, token_log_probs

__all__ = [
    "CriticTargets",
    "critic_loss",
    "discounted_cumsum",
    "discounted_returns",
    "gae",
    "importance_weights",
    "intra_option_loss",
    "token_kl_loss",
    "kl_reward",
    "mixture_log_probs",
    "next_step",
    "option_critic_targets",
    "selection_loss",
    "standardize",
    "termination_loss",
    "token_log_probs",
]
