"""The mask source shared by the exploratory scripts: per layer, the option a chooser gives at the last prompt
position, kept for the whole answer or re-chosen every `period` generated tokens."""

from collections.abc import Callable

import torch

from temoe.rollout.masks import MaskSource

Chooser = Callable[[int, torch.Tensor], torch.Tensor]
"""fn(i, hidden (B, S, H)) -> (B, N) bool: layer i's candidate option after these S positions. It sees every
position in order (prompt, then one per decode step), so it can keep a moving average."""


class KeptOption(MaskSource):
    switch_definition = "mask"

    def __init__(
        self,
        name: str,
        k_hat: int,
        num_layers: int,
        num_experts: int,
        make_chooser: Callable[[], Chooser],
        period: int = 0,
    ):
        """make_chooser: a fresh `Chooser` per batch (its running state starts empty). period 0 = keep."""
        self.name, self.k_hat, self.period = name, k_hat, period
        self.num_layers, self.num_experts, self.make_chooser = num_layers, num_experts, make_chooser

    def start(self, batch_size: int):
        choose = self.make_chooser()
        option: list[torch.Tensor | None] = [None] * self.num_layers
        calls = [0] * self.num_layers

        def fn(i: int, hidden: torch.Tensor) -> torch.Tensor:
            B, S, _ = hidden.shape
            candidate = choose(i, hidden)
            if option[i] is None:  # prompt forward: free routing, the option from the last position
                option[i] = candidate
                out = torch.ones(B, S, self.num_experts, dtype=torch.bool)
                out[:, -1] = candidate
                return out
            calls[i] += 1
            if self.period and calls[i] % self.period == 0:
                option[i] = candidate
            return option[i][:, None].expand(B, S, self.num_experts)

        return fn

    def sequence_switches(self, b, rows, router_logits, expert_ids):
        return (None, None) if rows.numel() < 2 else (0.0, 0)  # accuracy only: switches are not counted
