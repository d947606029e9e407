"""The demand rule: keep an option of k̂ experts per layer until the router's probability mass outside it, at
the current token, exceeds τ; then re-choose it as the top-k̂ of a moving average of router probabilities.

A training-free option policy (what `ControllerConfig.termination_demand` starts a controller near), run
through the same masked routing as the trained controller. Shapes: B batch, S positions of a forward call,
H hidden, N experts, K = k̂.
"""

from __future__ import annotations

import torch
from torch import Tensor

from temoe.metrics import switch_rate
from temoe.rollout.masks import MaskSource

__all__ = ["DemandMasks", "DemandSource"]


class DemandMasks:
    """A `MaskFn` holding one option per sequence and layer, switched by the demand rule.

    The moving average ā ← decay·ā + (1 − decay)·softmax(router logits) runs over the real prompt positions
    (left padding skipped, via `set_prompt_mask`) and then every generated position. The prompt's forward
    routes freely except at its last position, which already uses the first option top-k̂(ā).
    `history(i)` lists the (B, N) option of layer i at every generated position.
    """

    temoe_counts_checked = True  # every row allows exactly k̂ >= k̃ experts

    def __init__(self, handle, k_hat: int, threshold: float, decay: float = 0.9):
        if not 0 < threshold < 1:
            raise ValueError(f"demand threshold τ must be in (0, 1), got {threshold}")
        if not 0 <= decay < 1:
            raise ValueError(f"moving-average decay must be in [0, 1), got {decay}")
        if not handle.top_k <= k_hat <= handle.num_experts:
            raise ValueError(f"k_hat={k_hat} out of range; need k̃ = {handle.top_k} <= k_hat <= "
                             f"N = {handle.num_experts}")
        self.num_layers, self.num_experts, self.k_hat = handle.num_layers, handle.num_experts, k_hat
        self.threshold, self.decay = threshold, decay
        self.router_logits = handle.router_logits
        self.prompt_mask: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self.avg: list[Tensor | None] = [None] * self.num_layers  # (B, N) moving average of probabilities
        self.option: list[Tensor | None] = [None] * self.num_layers  # (B, N) bool
        self._history: list[list[Tensor]] = [[] for _ in range(self.num_layers)]

    def history(self, i: int) -> Tensor:
        """(B, T, N) bool options of layer i at generated positions 0..T-1."""
        return torch.stack(self._history[i], dim=1)

    def _top(self, avg: Tensor) -> Tensor:
        ids = avg.topk(self.k_hat, dim=-1).indices
        return torch.zeros_like(avg, dtype=torch.bool).scatter_(-1, ids, True)

    def __call__(self, i: int, hidden: Tensor) -> Tensor:
        B, S, _ = hidden.shape
        probs = self.router_logits(i, hidden).softmax(-1)  # (B, S, N)
        if self.option[i] is None:  # the prompt forward
            valid = (self.prompt_mask.to(hidden.device).bool() if self.prompt_mask is not None
                     else torch.ones(B, S, dtype=torch.bool, device=hidden.device))
            avg = torch.zeros(B, self.num_experts, device=hidden.device)
            seen = torch.zeros(B, 1, dtype=torch.bool, device=hidden.device)
            for s in range(S):
                step = torch.where(seen, self.decay * avg + (1 - self.decay) * probs[:, s], probs[:, s])
                avg = torch.where(valid[:, s, None], step, avg)
                seen = seen | valid[:, s, None]
            self.avg[i], self.option[i] = avg, self._top(avg)
            out = torch.ones(B, S, self.num_experts, dtype=torch.bool, device=hidden.device)
            out[:, -1] = self.option[i]
        else:  # one decode position
            p = probs[:, -1]
            self.avg[i] = self.decay * self.avg[i] + (1 - self.decay) * p
            outside = (p * ~self.option[i]).sum(-1, keepdim=True)  # router mass outside the option
            self.option[i] = torch.where(outside > self.threshold, self._top(self.avg[i]), self.option[i])
            out = self.option[i][:, None, :].expand(B, S, self.num_experts)
        self._history[i].append(self.option[i].cpu())
        return out


class DemandSource(MaskSource):
    """`DemandMasks` as an evaluated method: switch rate and residency of its options."""

    switch_definition = "mask"
    residency = "option"

    def __init__(self, handle, k_hat: int, threshold: float, decay: float = 0.9):
        self.fn = DemandMasks(handle, k_hat, threshold, decay)
        self.k_hat, self.name, self.threshold, self.decay = k_hat, "demand", threshold, decay

    def set_prompt_mask(self, attention_mask: Tensor) -> None:
        self.fn.prompt_mask = attention_mask

    def start(self, batch_size: int):
        self.fn.reset()
        return self.fn

    def options(self, b, rows):
        T = rows.numel()
        return torch.stack([self.fn.history(i)[b, :T] for i in range(self.num_layers)], dim=1)  # (T, L, N)

    @property
    def num_layers(self) -> int:
        return self.fn.num_layers

    def sequence_switches(self, b, rows, router_logits, expert_ids):
        if rows.numel() < 2:
            return None, None
        options = self.options(b, rows)
        return switch_rate(options), int((options[1:] & ~options[:-1]).sum())

    def describe(self) -> dict:
        return {"demand_threshold": self.threshold, "demand_decay": self.decay}
