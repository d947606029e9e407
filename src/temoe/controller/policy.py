"""The option controller policy: per-layer controllers, explicit per-sequence state, sample/greedy/replay.

Shape legend: B batch, T controlled positions, L MoE layers, N experts, K = k̂ allowed experts,
k = k̃ routed experts, H hidden, S positions in one forward call.

Time indexing (docs/controller.md): controlled position t is the forward position whose logits give the
t-th generated token a_t. With `control_prompt=False`, t = 0 is the last prompt position, whose option is
the router's top-k̂ with d_0 = 0 (§4.2 "Initialization", Alg. 2 line 3); every later forward position
(one per decode step) is a decision point t = 1, 2, ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from temoe.controller.config import ControllerConfig
from temoe.controller.networks import LayerController, outside_mass
from temoe.controller.options import (
    indices_to_mask,
    initial_option,
    sample_selection,
    selection_log_prob,
)

MaskFn = Callable[[int, Tensor], Tensor]
"""`fn(i, hidden (B, S, H)) -> bool (B, S, N)`: allowed experts of MoE layer i (`MoEHandle.restrict`)."""

RouterLogitsFn = Callable[[int, Tensor], Tensor]
"""`fn(i, hidden (B, S, H)) -> (B, S, N)` float: the current router logits of MoE layer i."""

Mode = Literal["sample", "greedy"]


@dataclass(frozen=True)
class Trajectory:
    """A recorded controlled rollout; column t is controlled position t (see module docstring)."""

    options: Tensor
    """(B, T, L, K) long: ω_t, the option executed at t (an unordered set, stored in sampled order)."""
    selected: Tensor
    """(B, T, L, K) long: the ordered tuple drawn at t (read only where `decisions`; ω_0 at initial columns;
    on CPU, calls where no row terminated skip the draw and hold ω_{t-1})."""
    decisions: Tensor
    """(B, T, L) bool: d_t (False at initial columns and at invalid positions)."""
    betas: Tensor
    """(B, T, L) float32: β_t = β(h_t, ω_{t-1}) (0 at initial columns)."""
    log_probs: Tensor
    """(B, T, L) float32: log π_sel(selected_t | h_t) (0 at initial columns, and at calls that skipped the
    draw; exact wherever `decisions`)."""
    valid: Tensor
    """(B, T) bool: position t belongs to the row (before its EOS, not left padding)."""
    initial: Tensor
    """(B, T) bool: t = 0 of the row (option = router top-k̂, no decision)."""
    hidden: Tensor | None
    """(B, T, L, H) float32 pre-MLP hidden states h_t, or None when not recorded."""
    selection_input: Tensor | None = None
    """(B, T, L, H) float32 h̄_t, the selection head's input, when `ControllerConfig.selection_context_decay`
    > 0 and hidden states are recorded (None otherwise: the selection head reads `hidden`)."""
    outside_mass: Tensor | None = None
    """(B, T, L) float32 m_t, the router's probability mass outside ω_{t-1} at h_t (0 at initial columns),
    when `ControllerConfig.termination_demand` > 0 (None otherwise). Recorded, so the replay uses the router
    the rollout used."""

    @property
    def options_prev(self) -> Tensor:
        """(B, T, L, K) ω_{t-1}: the option entering t (ω_0 itself at t = 0, where it is unused)."""
        prev = torch.cat([self.options[:, :1], self.options[:, :-1]], dim=1)
        return torch.where(self.initial[:, :, None, None], self.options, prev)

    @property
    def decision_mask(self) -> Tensor:
        """(B, T) bool: positions with a termination decision (valid and t > 0)."""
        return self.valid & ~self.initial

    def option_masks(self, num_experts: int) -> Tensor:
        """(B, T, L, N) bool option masks."""
        return indices_to_mask(self.options, num_experts)


class ReplayOutput(NamedTuple):
    """Controller outputs recomputed for a recorded trajectory, each (B, T, L) float32, with gradients."""

    beta: Tensor  # β(h_t, ω_{t-1})
    q_prev: Tensor  # Q(h_t, ω_{t-1})
    q_exec: Tensor  # Q(h_t, ω_t), ω_t the executed option
    value: Tensor  # V(h_t)
    log_prob: Tensor  # log π_sel(selected_t | h_t)


class OptionState:
    """Explicit per-sequence controller state for one batch of rollouts; create with `controller.new_state`.

    Lifecycle (default `control_prompt=False`): run the prompt forward (left-padded) under
    `handle.restrict(controller.mask_fn(state))`, call `begin_generation()`, then one decode forward per
    generated token; call `mark_done(rows)` when rows emit EOS so no decisions are counted after it.
    """

    def __init__(self, num_layers: int, num_experts: int, k_hat: int, batch_size: int, mode: Mode,
                 generator: torch.Generator | None, record_hidden: bool, control_prompt: bool,
                 prompt_mask: Tensor | None, selection_mode: Mode | None = None, context_decay: float = 0.0,
                 demand: bool = False):
        selection_mode = mode if selection_mode is None else selection_mode
        for name, value in (("mode", mode), ("selection_mode", selection_mode)):
            if value not in ("sample", "greedy"):
                raise ValueError(f"{name} must be 'sample' or 'greedy', got {value!r}")
        self.num_layers, self.num_experts, self.k_hat = num_layers, num_experts, k_hat
        self.batch_size, self.mode, self.generator = batch_size, mode, generator
        self.selection_mode, self.context_decay = selection_mode, context_decay
        self.demand = demand  # the termination has the demand term: record m_t (`Trajectory.outside_mass`)
        self.record_hidden, self.control_prompt = record_hidden, control_prompt
        self.prompt_mask = prompt_mask
        self.reset()

    def reset(self) -> None:
        """Forget everything (same batch size): a fresh state for new prompts."""
        L = self.num_layers
        self.controlled = self.control_prompt
        self.done = torch.zeros(self.batch_size, dtype=torch.bool)
        self.option: list[Tensor | None] = [None] * L  # per layer (B, K): ω_{t-1} entering the next step
        self.started: list[Tensor | None] = [None] * L  # per layer (B,) bool: row has had its t = 0
        self.positions = [0] * L  # forward positions seen per layer (indexes prompt_mask)
        self._pending: list[tuple[Tensor | None, Tensor] | None] = [None] * L  # default mode: (h_0, ω_0)
        self._columns: list[list[dict[str, Any]]] = [[] for _ in range(L)]
        # Online caches per layer, valid while the option tensor object is unchanged (no row switched):
        # (option, RMSNorm(z(option))) and (option, its (B, N) mask).
        self._z_cache: list[tuple[Tensor, Tensor] | None] = [None] * L
        self._mask_cache: list[tuple[Tensor, Tensor] | None] = [None] * L
        self._all_started = [False] * L
        # Selection context per layer (context_decay > 0): running numerator (B, H) and denominator (B, 1)
        # of the padding-excluded moving average h̄.
        self._context: list[tuple[Tensor, Tensor] | None] = [None] * L

    def update_context(self, i: int, hidden: Tensor, weight: Tensor) -> Tensor:
        """Advance layer i's moving average over S new positions; returns h̄ at the last one, (B, H).

        hidden (B, S, H) float32; weight (B, S) float, 1 for real positions and 0 for padding. The average is
        normalised by its accumulated weight, so it starts at the first real position (no bias to zero).
        """
        d = self.context_decay
        B, S, H = hidden.shape
        if S == 1:  # a decode step (the hot path): no decay table
            den = weight.float() * (1.0 - d)  # (B, 1)
            num = den * hidden[:, 0].float()
        else:
            decay = d ** torch.arange(S - 1, -1, -1, device=hidden.device, dtype=torch.float32)  # (S,)
            w = weight.float() * (1.0 - d) * decay  # (B, S)
            num = torch.einsum("bs,bsh->bh", w, hidden.float())
            den = w.sum(1, keepdim=True)
        prev = self._context[i]
        if prev is not None:
            num, den = num + prev[0] * d**S, den + prev[1] * d**S
        self._context[i] = (num, den)
        return num / den.clamp_min(torch.finfo(torch.float32).tiny)

    def mark_done(self, done: Tensor) -> None:
        """Rows (B,) bool that finished (emitted EOS): later positions are invalid and never switch."""
        self.done = self.done.to(done.device) | done.bool()

    def begin_generation(self) -> None:
        """Mark the start of controlled positions, after the prompt forward(s) (default mode only).

        Commits t = 0 at the last prompt position: ω_0 = router top-k̂ there, d_0 = 0.
        """
        if self.controlled:
            raise RuntimeError("begin_generation() called twice, or with control_prompt=True "
                               "(where every position is controlled from the start)")
        if any(p is None for p in self._pending):
            raise RuntimeError("begin_generation() needs the prompt forward first: every MoE layer must "
                               "have been called once under controller.mask_fn(state)")
        for i, (h0, omega0, context0) in enumerate(self._pending):
            B = omega0.shape[0]
            valid = ~self.done.to(omega0.device)
            zeros = torch.zeros(B, dtype=torch.float32, device=omega0.device)
            self._columns[i].append(dict(option=omega0, selected=omega0, decision=torch.zeros_like(valid),
                                         beta=zeros, log_prob=zeros, valid=valid, initial=valid, hidden=h0,
                                         sel_input=context0, outside=zeros if self.demand else None))
            self.option[i] = omega0
            self.started[i] = valid.clone()
            self._all_started[i] = bool(valid.all())
        self.controlled = True

    @property
    def num_steps(self) -> int:
        """T: controlled positions recorded so far."""
        return len(self._columns[0])

    def trajectory(self) -> Trajectory:
        """Stack the record into (B, T, L, ...) tensors."""
        if self.num_steps == 0:
            raise RuntimeError("no controlled positions recorded yet")
        counts = {len(c) for c in self._columns}
        assert len(counts) == 1, f"layers recorded different numbers of positions: {counts}"

        def stack(key: str) -> Tensor:
            # per layer: T columns of (B, ...) -> (B, T, ...); then layers -> (B, T, L, ...)
            return torch.stack([torch.stack([c[key] for c in cols], dim=1) for cols in self._columns], dim=2)

        hidden = stack("hidden") if self.record_hidden else None
        context = stack("sel_input") if self.record_hidden and self.context_decay > 0 else None
        outside = stack("outside") if self.demand else None
        first = self._columns[0]
        return Trajectory(options=stack("option"), selected=stack("selected"), decisions=stack("decision"),
                          betas=stack("beta"), log_probs=stack("log_prob"),
                          valid=torch.stack([c["valid"] for c in first], dim=1),
                          initial=torch.stack([c["initial"] for c in first], dim=1), hidden=hidden,
                          selection_input=context, outside_mass=outside)

    def option_masks(self) -> Tensor:
        """(B, T, L, N) bool: the option mask at every controlled position (for `temoe.metrics`)."""
        return self.trajectory().option_masks(self.num_experts)

    def switch_rate(self) -> float:
        """Fraction of (decision position, layer) pairs where the mask changed, ω_t ≠ ω_{t-1} (§2)."""
        traj = self.trajectory()
        masks = traj.option_masks(self.num_experts)
        changed = (masks[:, 1:] != masks[:, :-1]).any(-1)  # (B, T-1, L)
        keep = traj.decision_mask[:, 1:]  # (B, T-1)
        return float(changed[keep].float().mean()) if bool(keep.any()) else float("nan")

    def termination_rate(self) -> float:
        """Fraction of (decision position, layer) pairs with d_t = 1 (a re-selection, same set possible)."""
        traj = self.trajectory()
        keep = traj.decision_mask
        return float(traj.decisions[keep].float().mean()) if bool(keep.any()) else float("nan")

    def mean_beta(self) -> float:
        """Mean β_t over (decision position, layer) pairs: the expected termination rate."""
        traj = self.trajectory()
        keep = traj.decision_mask
        return float(traj.betas[keep].mean()) if bool(keep.any()) else float("nan")


def recorded_mask_fn(option_masks: Tensor, start: int) -> MaskFn:
    """A MaskFn replaying recorded masks in one teacher-forced forward over the whole sequence.

    option_masks (B, T, L, N) bool from `Trajectory.option_masks`; `start` is the input position of
    controlled position 0 (the last prompt position with `control_prompt=False`). Positions outside
    [start, start + T) are unrestricted.
    """
    B, T, _, N = option_masks.shape

    def fn(i: int, hidden: Tensor) -> Tensor:
        S = hidden.shape[1]
        mask = torch.ones(B, S, N, dtype=torch.bool, device=hidden.device)
        end = min(S, start + T)
        mask[:, start:end] = option_masks[:, : end - start, i].to(hidden.device)
        return mask

    return fn


class OptionController(nn.Module):
    """L independent `LayerController`s (same architecture, separate parameters, §4.2) and the policy.

    Not registered inside the HF model, so HF's missing-key initialisation never touches it.
    """

    def __init__(self, num_layers: int, num_experts: int, top_k: int, hidden_size: int,
                 config: ControllerConfig):
        super().__init__()
        if not top_k <= config.k_hat <= num_experts:
            raise ValueError(f"ControllerConfig.k_hat={config.k_hat} must satisfy top_k={top_k} <= k_hat <= "
                             f"num_experts={num_experts}")
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.hidden_size = hidden_size
        self.config = config
        self.layers = nn.ModuleList(LayerController(num_experts, hidden_size, config)
                                    for _ in range(num_layers))
        self.router_logits: RouterLogitsFn | None = None

    @classmethod
    def from_handle(cls, handle: Any, config: ControllerConfig) -> OptionController:
        """Build from a `temoe.wrap(model)` handle: dims from it, selection heads copied from its routers."""
        controller = cls(handle.num_layers, handle.num_experts, handle.top_k, handle.hidden_size, config)
        for i, layer in enumerate(controller.layers):
            layer.init_selection_from_router(handle.router_weight(i), handle.router_bias(i))
        controller.router_logits = handle.router_logits
        return controller

    @property
    def k_hat(self) -> int:
        return self.config.k_hat

    def num_parameters(self, per_layer: bool = False) -> int:
        """Parameter count of all L controllers (or of one layer's controller)."""
        module = self.layers[0] if per_layer else self
        return sum(p.numel() for p in module.parameters())

    def new_state(self, batch_size: int, generator: torch.Generator | None = None, mode: Mode = "sample",
                  record_hidden: bool = True, prompt_mask: Tensor | None = None,
                  selection_mode: Mode | None = None) -> OptionState:
        """A fresh `OptionState` for `batch_size` sequences.

        generator: on the model's device; drives d_t ~ Bernoulli(β_t) and the Plackett–Luce draws.
        mode: "sample" (training rollouts) or "greedy" (d_t = [β_t >= 0.5], ω_t = top-k̂ of c_t).
        selection_mode: overrides how ω_t is chosen at a termination ("greedy": top-k̂ of c_t, while d_t
        still follows `mode`); default: as `mode`.
        record_hidden: keep h_t (float32, B*T*L*H floats) for `replay`.
        prompt_mask: (B, P) bool attention mask of the left-padded prompt. Its False positions are not
        decision points (`control_prompt=True`) and are left out of the selection context's moving average;
        without it every prompt position counts.
        """
        return OptionState(self.num_layers, self.num_experts, self.k_hat, batch_size, mode, generator,
                           record_hidden, self.config.control_prompt, prompt_mask, selection_mode,
                           self.config.selection_context_decay, self.config.termination_demand > 0)

    def mask_fn(self, state: OptionState, router_logits: RouterLogitsFn | None = None) -> MaskFn:
        """The MaskFn for `handle.restrict(...)` that runs the policy online and records into `state`.

        router_logits: current router logits, for ω_0 = top-k̂ (defaults to the handle given to
        `from_handle`).
        """
        router_logits = router_logits or self.router_logits
        if router_logits is None:
            raise ValueError("mask_fn needs router logits for the initial option: build the controller with "
                             "OptionController.from_handle(handle, config) or pass router_logits=")

        @torch.no_grad()
        def fn(i: int, hidden: Tensor) -> Tensor:
            if state.controlled:
                return self._controlled_call(i, hidden, state, router_logits)
            return self._prompt_call(i, hidden, state, router_logits)

        # Every row of every mask this returns allows exactly k̂ (or all N) experts, so the handle may skip
        # its per-call count check (a host sync per layer and token).
        fn.temoe_counts_checked = True
        return fn

    def _prompt_call(self, i: int, hidden: Tensor, state: OptionState,
                     router_logits: RouterLogitsFn) -> Tensor:
        """Default mode, prompt forward: router's own routing; the last column gets ω_0 (pending t = 0)."""
        B, S, _ = hidden.shape
        last = hidden[:, -1]  # (B, H): the position predicting the first generated token (left padding)
        context = None
        if state.context_decay > 0:
            pos = state.positions[i]
            weight = torch.ones(B, S, device=hidden.device)
            if state.prompt_mask is not None:
                weight[:, : max(0, state.prompt_mask.shape[1] - pos)] = state.prompt_mask[:, pos:pos + S].to(
                    hidden.device, torch.float32)
            context = state.update_context(i, hidden, weight)  # h̄_0, (B, H)
        omega0 = self._initial_option(i, last, context, router_logits)  # (B, K)
        record = state.record_hidden
        state._pending[i] = (last.float().clone() if record else None, omega0,
                             context.clone() if record and context is not None else None)
        state.positions[i] += S
        mask = torch.ones(B, S, self.num_experts, dtype=torch.bool, device=hidden.device)
        # ω_0 is executed at t = 0. With the router's own top-k̂ (the default) this leaves its top-k̃ unchanged;
        # with initial_option="selection" it may not.
        mask[:, -1] = indices_to_mask(omega0, self.num_experts)
        return mask

    def _initial_option(self, i: int, h: Tensor, context: Tensor | None,
                        router_logits: RouterLogitsFn) -> Tensor:
        """ω_0 (B, K) at t = 0 for h (B, H): the router's or the selection head's top-k̂ (`initial_option`)."""
        if self.config.initial_option == "selection":
            logits = self.layers[i].selection_logits(h if context is None else context)
            return initial_option(logits, self.k_hat)
        return initial_option(router_logits(i, h[:, None])[:, 0], self.k_hat)

    def _controlled_call(self, i: int, hidden: Tensor, state: OptionState,
                         router_logits: RouterLogitsFn) -> Tensor:
        """S controlled positions in order (a decode call has S = 1): decide, record, return (B, S, N)."""
        B, S, _ = hidden.shape
        device, K, layer = hidden.device, self.k_hat, self.layers[i]
        if state.option[i] is None:  # control_prompt=True, first call
            state.option[i] = torch.arange(K, device=device).expand(B, K).clone()  # placeholder, never used
            state.started[i] = torch.zeros(B, dtype=torch.bool, device=device)
        masks = []
        for s in range(S):  # sequential by nature: ω_t depends on d_t, which depends on ω_{t-1}
            h = hidden[:, s].float()  # (B, H)
            pos = state.positions[i]
            state.done = state.done.to(device)  # once: later calls find it on the device
            valid = ~state.done
            if state.prompt_mask is not None and pos < state.prompt_mask.shape[1]:
                valid = valid & state.prompt_mask[:, pos].to(device)
            started = state.started[i]
            init_rows, decide_rows = valid & ~started, valid & started
            context = None
            if state.context_decay > 0:  # h̄_t, the selection head's input
                context = state.update_context(i, h[:, None], valid[:, None].float())
            option_prev = state.option[i]

            cached = state._z_cache[i]
            if cached is None or cached[0] is not option_prev:
                cached = state._z_cache[i] = (option_prev, layer.option_embedding(option_prev))
            mass = None
            if layer.uses_demand:  # m_t: the router's probability mass outside ω_{t-1}
                mass = outside_mass(router_logits(i, h[:, None])[:, 0], option_prev)
            beta = torch.sigmoid(layer.termination_logit(h, option_prev, z_normed=cached[1],
                                                         outside_mass=mass))  # (B,)
            if state.mode == "sample":
                d = torch.bernoulli(beta, generator=state.generator).bool()
            else:
                d = beta >= 0.5
            d = d & decide_rows
            # On CPU a host check is free: when no row terminates (most calls once the controller has
            # learnt to keep its options) the selection head, the draw and its log-prob are skipped and the
            # record holds selected = ω_{t-1}, log-prob 0 (neither is read where d_t = 0). On an accelerator
            # the check would be a device sync per layer and token, so the selection always runs there.
            unchanged = device.type == "cpu" and not state.control_prompt and not bool(d.any())
            if unchanged:
                selected, log_prob = option_prev, torch.zeros_like(beta)
            else:
                logits = layer.selection_logits(h if context is None else context)  # (B, N)
                if state.selection_mode == "sample":
                    selected = sample_selection(logits, K, self.config.epsilon, state.generator)
                else:
                    selected = logits.topk(K, dim=-1).indices
                log_prob = selection_log_prob(logits, selected, self.config.epsilon)
            # Keeping the same tensor object when nothing switched lets the caches above recognise it.
            option = option_prev if unchanged else torch.where(d[:, None], selected, option_prev)
            # Only control_prompt=True starts rows inside controlled calls; skipping the check otherwise
            # avoids a device sync per layer and token.
            if state.control_prompt and bool(init_rows.any()):
                omega0 = self._initial_option(i, h, context, router_logits)
                option = torch.where(init_rows[:, None], omega0, option)
                selected = torch.where(init_rows[:, None], omega0, selected)
                beta = beta.masked_fill(init_rows, 0.0)
                log_prob = log_prob.masked_fill(init_rows, 0.0)
                mass = None if mass is None else mass.masked_fill(init_rows, 0.0)

            state.option[i] = option
            state.started[i] = started | init_rows
            state.positions[i] = pos + 1
            state._columns[i].append(dict(option=option, selected=selected, decision=d, beta=beta,
                                          log_prob=log_prob, valid=valid, initial=init_rows,
                                          hidden=h.clone() if state.record_hidden else None,
                                          sel_input=context if state.record_hidden else None,
                                          outside=mass))
            if not state._all_started[i]:
                mask = indices_to_mask(option, self.num_experts)
                masks.append(mask | ~state.started[i][:, None])  # rows not yet started route freely
            else:  # every row started at begin_generation() (finished rows keep their last option)
                cached_mask = state._mask_cache[i]
                if cached_mask is None or cached_mask[0] is not option:
                    cached_mask = state._mask_cache[i] = (option, indices_to_mask(option, self.num_experts))
                masks.append(cached_mask[1])
        return torch.stack(masks, dim=1)

    def replay(self, hidden: Tensor, options_prev: Tensor, decisions: Tensor,
               selected: Tensor, selection_input: Tensor | None = None,
               outside_mass: Tensor | None = None) -> ReplayOutput:
        """Recompute β, Q(h, ω_{t-1}), Q(h, ω_t), V and log π_sel for a recorded trajectory, with gradients.

        hidden (B, T, L, H), options_prev (B, T, L, K) = ω_{t-1}, decisions (B, T, L) bool,
        selected (B, T, L, K) -> ReplayOutput of (B, T, L) float32. The option sequence is in the record,
        so this is vectorised over time (a loop over the L layers only).
        ω_t = selected where d_t, else ω_{t-1}. selection_input (B, T, L, H): h̄_t for the selection head
        (`Trajectory.selection_input`); None: the head reads `hidden`. outside_mass (B, T, L): m_t of the
        termination's demand term (`Trajectory.outside_mass`; required when it is on).
        """
        outs = []
        for i, layer in enumerate(self.layers):
            h, prev, sel = hidden[:, :, i].float(), options_prev[:, :, i], selected[:, :, i]
            h_sel = h if selection_input is None else selection_input[:, :, i].float()
            option = torch.where(decisions[:, :, i, None], sel, prev)
            outs.append(ReplayOutput(
                beta=torch.sigmoid(layer.termination_logit(
                    h, prev, outside_mass=None if outside_mass is None else outside_mass[:, :, i])),
                q_prev=layer.option_value(h, prev),
                q_exec=layer.option_value(h, option),
                value=layer.state_value(h),
                log_prob=selection_log_prob(layer.selection_logits(h_sel), sel, self.config.epsilon),
            ))
        return ReplayOutput(*(torch.stack(parts, dim=2) for parts in zip(*outs)))

    def replay_trajectory(self, trajectory: Trajectory) -> ReplayOutput:
        """`replay` on a recorded `Trajectory` (needs `record_hidden=True`)."""
        if trajectory.hidden is None:
            raise ValueError("the trajectory has no hidden states: record with new_state(record_hidden=True) "
                             "or call replay(hidden, ...) with states from a traced forward")
        return self.replay(trajectory.hidden, trajectory.options_prev, trajectory.decisions,
                           trajectory.selected, trajectory.selection_input, trajectory.outside_mass)
