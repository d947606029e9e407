"""temoe.rl: option-critic and distillation math as pure functions (tensors in; tensors or (loss, stats))."""

from temoe.rl.deliberation import (
    counted_positions,
    dual_update,
    ema_update,
    expert_loads,
    loads_per_token,
    loads_switch_cost,
    pi_dual_update,
    stall_budget_to_load_budget,
    stall_ms_per_load,
    switch_loads,
)
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
    "counted_positions",
    "critic_loss",
    "discounted_cumsum",
    "discounted_returns",
    "dual_update",
    "ema_update",
    "expert_loads",
    "gae",
    "importance_weights",
    "intra_option_loss",
    "token_kl_loss",
    "kl_reward",
    "loads_per_token",
    "loads_switch_cost",
    "mixture_log_probs",
    "next_step",
    "option_critic_targets",
    "pi_dual_update",
    "selection_loss",
    "stall_budget_to_load_budget",
    "stall_ms_per_load",
    "standardize",
    "switch_loads",
    "termination_loss",
    "token_log_probs",
]
