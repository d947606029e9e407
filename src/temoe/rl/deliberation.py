"""Deliberation cost in expert loads: the per-switch cost, the loads a rollout made, η's dual updates.

Pure functions; the derivation is in docs/controller.md ("A deliberation cost in expert loads"). Shape
legend: B batch, T controlled positions, L MoE layers, N experts, K = k̂. A load is one expert that enters a
layer's option and so has to be resident before the layer runs (|ω_t \\ ω_{t-1}| per layer and position).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def switch_loads(old_mask: Tensor, new_mask: Tensor) -> Tensor:
    """|new \\ old| per position: the experts of the new option that the old one lacked.

    old_mask, new_mask (B, T, L, N) bool option masks -> (B, T, L) int64.
    """
    return (new_mask.bool() & ~old_mask.bool()).sum(-1)


def loads_switch_cost(old_mask: Tensor, new_mask: Tensor, eta: float, k_hat: int) -> Tensor:
    """c_t = η · |new \\ old| / k̂, the loads-based cost of switching from `old` to `new`.

    old_mask (B, T, L, N): ω_{t-1}; new_mask (B, T, L, N): the selection head's candidate ω̃_t (= ω_t at a
    switch). -> (B, T, L) float32, for `termination_loss(eta=...)` and `selection_loss(cost=...)`. Replacing
    the whole option costs η, the paper's flat cost; keeping it costs 0.
    """
    return eta * switch_loads(old_mask, new_mask).float() / k_hat


def expert_loads(option_masks: Tensor, valid: Tensor) -> Tensor:
    """Experts loaded at each position, summed over layers: Σ_ℓ |ω_t \\ ω_{t-1}|.

    option_masks (B, T, L, N) bool: the executed options; valid (B, T): generated-token positions.
    -> (B, T) float32, counted where t and t - 1 are both valid (a row's first position, t = 0, starts
    from ω_0 with no load charged to the policy), 0 elsewhere.
    """
    loads = switch_loads(option_masks[:, :-1], option_masks[:, 1:]).sum(-1).float()  # (B, T-1): t = 1..T-1
    return torch.cat([torch.zeros_like(loads[:, :1]), loads], dim=1) * counted_positions(valid)


def counted_positions(valid: Tensor) -> Tensor:
    """(B, T) bool: the positions `expert_loads` counts (t and t - 1 valid)."""
    return torch.cat([torch.zeros_like(valid[:, :1]), valid[:, 1:] & valid[:, :-1]], dim=1).bool()


def loads_per_token(option_masks: Tensor, valid: Tensor) -> float:
    """Expert loads per generated token, summed over layers, averaged over the counted positions.

    option_masks (B, T, L, N) bool; valid (B, T). 0.0 when no position is counted. Under data parallelism
    sum `expert_loads` and `counted_positions` over processes before dividing.
    """
    n = counted_positions(valid).sum()
    return float(expert_loads(option_masks, valid).sum() / n.clamp_min(1))


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}: must be a finite number > 0")


def dual_update(eta: float, measured: float, budget: float, lr: float) -> float:
    """One dual-ascent step on the deliberation cost: η ← max(0, η + α · (measured − budget) / budget).

    η acts as the Lagrange multiplier of "expert loads per token ≤ budget" (as SAC's entropy temperature,
    Haarnoja et al. 2018): above budget it rises, below it falls, never below 0. The error is relative, so α
    is the same for any budget. measured and budget in the same unit (loads or stall ms per token).
    """
    _check_positive("budget", budget)
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"eta_lr={lr!r}: must be a finite number >= 0")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta={eta!r}: must be a finite number >= 0")
    if not math.isfinite(measured):
        raise ValueError(f"measured={measured!r}: the step's loads per token must be finite")
    return max(0.0, eta + lr * (measured - budget) / budget)


def pi_dual_update(integral: float, measured: float, budget: float, lr: float, kp: float,
                   smoothed: float | None = None) -> tuple[float, float]:
    """One PI step on the deliberation cost (the PID Lagrangian of Stooke, Achiam & Abbeel, ICML 2020).

    e = (measured − budget) / budget; η_I ← max(0, η_I + α · e) (`dual_update`), and
    η = max(0, η_I + K_p · e_s), e_s the same error of `smoothed` (an average of the per-step loads; None =
    `measured`). The proportional term answers the current error at once: η falls as soon as the loads drop
    under budget instead of waiting for the integral to unwind, which is what lets plain dual ascent overshoot
    when the controller answers η with a lag. K_p = 0 is `dual_update`. Returns (η_I, η).
    """
    if not (math.isfinite(kp) and kp >= 0):
        raise ValueError(f"eta_kp={kp!r}: must be a finite number >= 0")
    integral = dual_update(integral, measured, budget, lr)
    level = measured if smoothed is None else smoothed
    if not math.isfinite(level):
        raise ValueError(f"smoothed={smoothed!r}: the averaged loads per token must be finite")
    return integral, max(0.0, integral + kp * (level - budget) / budget)


def ema_update(average: float | None, measured: float, decay: float) -> float:
    """m ← d · m + (1 − d) · x, the exponential moving average of the per-step loads; m = x at the first
    step (`average` None). decay d in [0, 1): 0 = the step's own loads."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"eta_ema={decay!r}: must be a finite number in [0, 1)")
    return measured if average is None else decay * average + (1.0 - decay) * measured


def stall_ms_per_load(bytes_per_expert: float, host_to_device_gb_s: float) -> float:
    """Milliseconds one expert load stalls decoding: bytes / bandwidth (GB = 1e9 bytes), no overlap."""
    _check_positive("bytes_per_expert", bytes_per_expert)
    _check_positive("host_to_device_gb_s", host_to_device_gb_s)
    return bytes_per_expert / (host_to_device_gb_s * 1e9) * 1e3


def stall_budget_to_load_budget(stall_budget_ms: float, bytes_per_expert: float,
                                host_to_device_gb_s: float) -> float:
    """Expert loads per token that fit a stall budget (ms per token): stall / (bytes / bandwidth)."""
    _check_positive("stall_budget_ms", stall_budget_ms)
    return stall_budget_ms / stall_ms_per_load(bytes_per_expert, host_to_device_gb_s)
