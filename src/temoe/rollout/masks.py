"""Where an evaluated method's expert masks come from: the base model, a static baseline mask, per-token
random masks, or a trained controller. Each `MaskSource` also defines how its switch rate is measured.

Switch-rate definitions (paper §2), over the generated positions of one sequence:
- "router": the base-model definition `temoe.metrics.router_switch_rate` (the router itself as the option
  policy with k̂ slots). For a static baseline mask it is applied to the restricted routing (logits outside
  the mask set to −inf), where the option can never change: 0.
- "mask": the actual change rate of the installed masks, `temoe.metrics.switch_rate` (random per-token
  masks; controller options).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from temoe import metrics

__all__ = ["MaskSource", "BaseSource", "StaticMaskSource", "MaskFnSource", "ControllerSource"]


def _loads(options: Tensor) -> int:
    """Σ_ℓ Σ_{t≥1} |ω_t \\ ω_{t−1}| for options (T, L, N) bool: experts that enter the allowed set."""
    return int((options[1:] & ~options[:-1]).sum())


class MaskSource:
    """Base class. Subclasses set `name`, `k_hat`, `switch_definition` and override the hooks they need.

    `residency` is how a serving engine would hold this method's experts, for `loads_per_token`
    (`temoe.traces.residency` policies): "lru" (a cache of the routed experts: the base router, caches,
    cache-conditional routing), "static" (one fixed set per layer) or "option" (the installed masks).
    """

    name: str = "base"
    k_hat: int | None = None
    switch_definition: str = "router"
    residency: str = "lru"

    def start(self, batch_size: int) -> Tensor | Callable | None:
        """Masks to install for a new batch of `batch_size` prompts (None: no restriction)."""
        return None

    def set_prompt_mask(self, attention_mask: Tensor) -> None:
        """Called before `start` with the batch's (B, P) attention mask of the left-padded prompts."""

    def after_prefill(self) -> None:
        """Called once after the prompt forward, before the first decode step."""

    def mark_done(self, done: Tensor) -> None:
        """Rows (B,) bool that have finished generating."""

    def sequence_switches(self, b: int, rows: Tensor, router_logits: Tensor,
                          expert_ids: Tensor) -> tuple[float | None, int | None]:
        """(switch rate, experts loaded) of row b from its generated positions' routing.

        rows: (T,) trace row of each generated position; router_logits (T, L, N) raw; expert_ids (T, L, k).
        """
        if router_logits.shape[0] < 2:
            return None, None
        options = metrics.router_option_masks(self._restricted(router_logits), expert_ids,
                                              self._k_hat_for(router_logits))
        return metrics.switch_rate(options), _loads(options)

    def options(self, b: int, rows: Tensor) -> Tensor | None:
        """(T, L, N) bool masks installed at row b's generated positions, for mask-defined sources
        (random per token, controller); None for the router-defined ones."""
        return None

    def describe(self) -> dict[str, Any]:
        """Extra summary fields."""
        return {}

    def _restricted(self, router_logits: Tensor) -> Tensor:
        return router_logits

    def _k_hat_for(self, router_logits: Tensor) -> int:
        return router_logits.shape[-1] if self.k_hat is None else self.k_hat


class BaseSource(MaskSource):
    """No mask: the unmodified model (also Wanda, whose weights are pruned but every expert stays routable).

    `k_hat` sets the slots of the base-model switch-rate definition (§5: the same k̂ as the methods).
    """

    def __init__(self, k_hat: int, name: str = "base", extra: dict[str, Any] | None = None):
        self.k_hat, self.name, self.extra = k_hat, name, dict(extra or {})

    def describe(self) -> dict[str, Any]:
        return self.extra


class StaticMaskSource(MaskSource):
    """A fixed (L, N) bool mask per layer (frequency, reconstruction, REAP, fixed random subset)."""

    residency = "static"

    def __init__(self, masks: Tensor, name: str, extra: dict[str, Any] | None = None):
        if masks.dtype != torch.bool or masks.dim() != 2:
            raise ValueError(f"static masks must be bool (L, N), got {masks.dtype} {tuple(masks.shape)}")
        counts = masks.sum(-1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"static masks allow different numbers of experts per layer: {counts.tolist()}")
        self.masks, self.name, self.k_hat = masks, name, int(counts[0])
        self.extra = dict(extra or {})

    def start(self, batch_size: int) -> Tensor:
        return self.masks

    def _restricted(self, router_logits: Tensor) -> Tensor:
        # The routing the model actually did: logits outside the mask are −inf (§2, mask before top-k̃).
        return router_logits.masked_fill(~self.masks.to(router_logits.device), float("-inf"))

    def describe(self) -> dict[str, Any]:
        return {"masks": [torch.nonzero(m).flatten().tolist() for m in self.masks], **self.extra}


class MaskFnSource(MaskSource):
    """A per-token MaskFn that records what it emitted (random per-token masks); switch rate of the masks.

    `fn` must have `reset()` and `recorded(i) -> (T_total, N)` bool, rows in the trace's order.
    """

    switch_definition = "mask"
    residency = "option"

    def __init__(self, fn: Any, name: str, k_hat: int):
        self.fn, self.name, self.k_hat = fn, name, k_hat

    def start(self, batch_size: int) -> Callable:
        self.fn.reset()
        return self.fn

    def options(self, b, rows):
        L = self.fn.num_layers
        return torch.stack([self.fn.recorded(i)[rows] for i in range(L)], dim=1)  # (T, L, N)

    def sequence_switches(self, b, rows, router_logits, expert_ids):
        if rows.numel() < 2:
            return None, None
        options = self.options(b, rows)
        return metrics.switch_rate(options), _loads(options)


class ControllerSource(MaskSource):
    """A trained `OptionController`: a fresh `OptionState` per batch, switch rate of its option masks.

    mode: "sample" (d_t ~ Bernoulli(β_t), Plackett–Luce selection; the paper's switch rates come from sampling
    mode) or "greedy". `generator` drives the controller's draws (seeded by the caller).
    """

    switch_definition = "mask"
    residency = "option"

    def __init__(self, controller: Any, generator: torch.Generator, mode: str = "sample",
                 name: str = "controller", eta: float | None = None, selection_mode: str | None = None):
        for key, value in (("mode", mode), ("selection mode", selection_mode or mode)):
            if value not in ("sample", "greedy"):
                raise ValueError(f"controller {key} must be 'sample' or 'greedy', got {value!r}")
        self.controller, self.generator, self.mode, self.name = controller, generator, mode, name
        self.selection_mode = selection_mode or mode
        self.k_hat, self.eta = controller.k_hat, eta
        self.state = None
        self._options = None
        self._prompt_mask = None

    def set_prompt_mask(self, attention_mask: Tensor) -> None:
        self._prompt_mask = attention_mask.bool()

    def start(self, batch_size: int) -> Callable:
        prompt_mask, self._prompt_mask = self._prompt_mask, None
        if prompt_mask is not None and prompt_mask.shape[0] != batch_size:
            prompt_mask = None
        self.state = self.controller.new_state(batch_size, self.generator, mode=self.mode,
                                               record_hidden=False, prompt_mask=prompt_mask,
                                               selection_mode=self.selection_mode)
        self._options = None
        return self.controller.mask_fn(self.state)

    def after_prefill(self) -> None:
        self.state.begin_generation()

    def mark_done(self, done: Tensor) -> None:
        self.state.mark_done(done)

    def options(self, b, rows):
        if self._options is None:  # (B, T_max, L, N), stacked once per batch
            self._options = self.state.option_masks().cpu()
        return self._options[b, :rows.numel()]  # (T, L, N)

    def sequence_switches(self, b, rows, router_logits, expert_ids):
        if rows.numel() < 2:
            return None, None
        options = self.options(b, rows)
        return metrics.switch_rate(options), _loads(options)

    def describe(self) -> dict[str, Any]:
        return {"eta": self.eta, "controller_mode": self.mode, "selection_mode": self.selection_mode}
