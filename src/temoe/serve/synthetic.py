"""Synthetic option policies that isolate the serving engine from controller quality (benchmarks, tests).

`rule="random"`: each layer switches with probability `switch_rate` per generated token. `rule="router"`: the
paper's base-model switch rule (the paper's §2): switch when the router's top-k̃ leaves the current option. In
both, ω_0 is the router's top-k̂ at the last prompt position and a new option is the router's top-k̂ for the
current token, so the routed experts always lie inside the option (with rule="router" the routing, hence the
output, equals the unrestricted base model's).
"""

from __future__ import annotations

import random

import torch


class SyntheticOptions:
    """Factory of per-request MaskFns (`mask_fn()`), each with its own option state and seeded generator."""

    def __init__(self, handle, k_hat: int, *, rule: str = "random", switch_rate: float = 0.05, seed: int = 0):
        if rule not in ("random", "router"):
            raise ValueError(f"rule must be 'random' or 'router', got {rule!r}")
        if not handle.top_k <= k_hat <= handle.num_experts:
            raise ValueError(f"k_hat={k_hat} must be in [top_k={handle.top_k}, N={handle.num_experts}]")
        if rule == "random" and not 0.0 <= switch_rate <= 1.0:
            raise ValueError(f"switch_rate must be in [0, 1], got {switch_rate}")
        self.handle, self.k_hat, self.rule, self.switch_rate, self.seed = (
            handle,
            k_hat,
            rule,
            switch_rate,
            seed,
        )
        self.logits = handle.router_logits
        self._requests = 0

    @property
    def label(self) -> str:
        if self.rule == "router":
            return f"router-as-option-policy k̂={self.k_hat}"
        return f"synthetic options k̂={self.k_hat}, switch rate {self.switch_rate:g}"

    def mask_fn(self):
        """A fresh MaskFn fn(i, hidden (B, S, H)) -> (B, S, N) with its own options (one request).

        No host read of a device tensor: the random rule draws on the host, the router rule decides on the
        device. Every row allows exactly k̂ experts (the prompt's other positions: all N)."""
        N, K, k = self.handle.num_experts, self.k_hat, self.handle.top_k
        rng = random.Random(self.seed + self._requests)
        self._requests += 1
        option: dict[int, torch.Tensor] = {}  # layer -> (B, N) bool

        def top_k_hat(i: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(router's top-k̂ of every position (B, S, N) bool, router logits (B, S, N) float32)."""
            logits = self.logits(i, hidden)
            top = torch.zeros(logits.shape, dtype=torch.bool, device=hidden.device)
            return top.scatter_(-1, logits.topk(K, dim=-1).indices, True), logits

        def fn(i: int, hidden: torch.Tensor) -> torch.Tensor:
            B, S, _ = hidden.shape
            if i not in option:  # prompt: free routing, ω_0 at the last position
                top, _ = top_k_hat(i, hidden)
                mask = torch.ones_like(top)
                mask[:, -1] = top[:, -1]
                option[i] = top[:, -1]
                return mask
            if self.rule == "random":
                # Draw first (position, then row); the router's top-k̂ is needed only where a row switches.
                rows = [[b for b in range(B) if rng.random() < self.switch_rate] for _ in range(S)]
                if not any(rows):
                    return option[i][:, None].expand(B, S, N)
                top, _ = top_k_hat(i, hidden)
            else:
                top, logits = top_k_hat(i, hidden)
            masks = []
            for s in range(S):
                if self.rule == "random":
                    if rows[s]:  # basic indexing with host ints: no index upload, no read back
                        option[i] = option[i].clone()
                        for b in rows[s]:
                            option[i][b] = top[b, s]
                else:
                    routed = torch.zeros(B, N, dtype=torch.bool, device=hidden.device)
                    routed.scatter_(-1, logits[:, s].topk(k, dim=-1).indices, True)
                    switch = (routed & ~option[i]).any(-1)  # (B,) on the device
                    option[i] = torch.where(switch[:, None], top[:, s], option[i])
                masks.append(option[i])
            return torch.stack(masks, dim=1)

        fn.temoe_counts_checked = True
        return fn
