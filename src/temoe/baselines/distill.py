"""Self-distillation without a controller: a compact teacher-forced loop that trains some of the model's
weights to match the original model (full-vocabulary KL(student ‖ teacher), `temoe.rl.token_kl_loss`) on
base-model text, optionally under a fixed expert mask and with a recency reward on the routers.

Two methods users would pick instead of temporal extension use it:
- `train_recency`: router-only fine-tuning for expert reuse (ReMoE, Zhu et al., arXiv 2605.27081): only the
  router weights train, with the KL anchoring the model to the original and a recency reward, the router
  probability mass on the experts the previous token was routed to;
- `train_static_distill`: LoRA self-distillation (the controller's LoRA configuration, `temoe.moe.lora`)
  under a fixed frequency or REAP mask, the ablation of temporal extension with no controller.

Shapes: B batch, S tokens, L MoE layers, N experts, k = k̃ routed, V vocab.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from temoe.baselines.calibration import padded_batches
from temoe.moe.lora import add_lora, snapshot_routers, swap_routers, teacher_mode, trainable_router_parameters
from temoe.rl import token_kl_loss

__all__ = ["DistillConfig", "recency_reward", "train_recency", "train_static_distill"]


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one self-distillation run."""

    steps: int = 40
    """Optimizer steps (one batch each, cycling over the sequences)."""
    batch_size: int = 8
    """Sequences per step."""
    lr: float = 1e-3
    """Adam learning rate."""
    recency: float = 0.0
    """Weight of the recency reward (router-only method); 0 = pure self-distillation."""
    seed: int = 42
    """Seeds the order of the sequences."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.recency < 0:
            raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, recency >= 0; got {self}")


def recency_reward(router_logits: Tensor, expert_ids: Tensor, valid: Tensor) -> Tensor:
    """Mean over layers and positions s >= 1 (both s − 1 and s real) of Σ_{e routed at s−1} p_s(e).

    router_logits (L, B, S, N) with gradients, expert_ids (L, B, S, k), valid (B, S) bool -> scalar. The
    router mass a token puts on the experts its predecessor used: 1 when it reuses them all with certainty.
    """
    probs = router_logits.float().softmax(-1)[:, :, 1:]  # (L, B, S-1, N)
    previous = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, expert_ids[:, :, :-1], True)
    mass = (probs * previous).sum(-1)  # (L, B, S-1)
    both = (valid[:, 1:] & valid[:, :-1]).float()  # (B, S-1)
    return (mass * both).sum() / (both.sum() * mass.shape[0]).clamp_min(1.0)


class _RouterCapture:
    """Forward hooks keeping every router's (logits, expert ids) of one call, logits with gradients."""

    def __init__(self, handle):
        self.outputs: list[tuple[Tensor, Tensor]] = []
        self._hooks = [r.register_forward_hook(lambda _m, _a, out: self.outputs.append((out[0], out[2])))
                       for r in handle.routers]

    def stacked(self, batch: int, seq: int) -> tuple[Tensor, Tensor]:
        """(L, B, S, N) logits and (L, B, S, k) ids (router rows are (batch, position) ordered)."""
        logits = torch.stack([lg.reshape(batch, seq, -1) for lg, _ in self.outputs])
        ids = torch.stack([ids.reshape(batch, seq, -1) for _, ids in self.outputs])
        return logits, ids

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def _step(model, handle, teacher: Callable[[], AbstractContextManager], input_ids: Tensor, attn: Tensor,
          optimizer: torch.optim.Optimizer, params: Sequence[Tensor], masks: Tensor | None,
          recency: float) -> dict[str, float]:
    """One update: teacher logits (no grad), student logits under `masks`, KL − recency · reward."""
    with torch.no_grad(), teacher():
        teacher_logits = model(input_ids=input_ids, attention_mask=attn, use_cache=False).logits
    capture = _RouterCapture(handle) if recency > 0 else None
    try:
        with handle.restrict(masks) if masks is not None else nullcontext():
            student_logits = model(input_ids=input_ids, attention_mask=attn, use_cache=False).logits
    finally:
        if capture is not None:
            capture.remove()
    loss, stats = token_kl_loss(student_logits, teacher_logits, attn.bool())
    if capture is not None:
        reward = recency_reward(*capture.stacked(*input_ids.shape), attn.bool())
        loss = loss - recency * reward
        stats["loss/recency_reward"] = float(reward.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return stats


def _loop(model, handle, teacher, sequences, params, cfg: DistillConfig, masks=None) -> list[dict]:
    device = next(model.parameters()).device
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    batches = itertools.cycle(list(padded_batches([sequences[j] for j in order], cfg.batch_size)))
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    history = []
    model.train(False)  # no dropout: the teacher and the student differ only in the trained weights
    for _ in range(cfg.steps):
        ids, attn = next(batches)
        history.append(_step(model, handle, teacher, ids.to(device), attn.to(device), optimizer, params,
                             masks, cfg.recency))
    return history


def train_recency(handle, sequences: Sequence[Sequence[int]], cfg: DistillConfig) -> list[dict]:
    """Fine-tune only the router weights of `handle.model` in place (ReMoE-style): KL to the original model
    minus `cfg.recency` x `recency_reward`. Every other parameter is frozen. Returns per-step stats."""
    model = handle.model
    teacher_routers = snapshot_routers(handle)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for router in handle.routers for p in router.parameters()]
    for p in params:
        p.requires_grad_(True)
    return _loop(model, handle, lambda: swap_routers(handle, teacher_routers), sequences, params, cfg)


def train_static_distill(handle, sequences: Sequence[Sequence[int]], masks: Tensor,
                         cfg: DistillConfig, rank: int = 16, alpha: float = 16.0):
    """LoRA self-distillation under one fixed (L, N) mask: the controller's θ (LoRA on experts and attention,
    trainable routers; `temoe.moe.lora.add_lora`) trained to match the original unmasked model. Returns
    (peft model, per-step stats); `handle` keeps working on the adapted model."""
    teacher_routers = snapshot_routers(handle)
    peft_model = add_lora(handle.model, handle, rank, alpha)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    assert set(map(id, trainable_router_parameters(handle))) <= set(map(id, params))
    history = _loop(peft_model, handle, lambda: teacher_mode(peft_model, handle, teacher_routers), sequences,
                    params, cfg, masks=masks)
    return peft_model, history
