"""Offloaded MoE execution: each layer's fused experts module is replaced in place (reversibly, the original
kept as `base_layer`) by a wrapper that computes only with experts resident in the layer's device slots.

The wrapper remaps the router's expert ids to slot ids and calls the experts module's own forward (whatever
`experts_implementation` is configured) on a compact copy whose parameters are the slot buffers, so every
architecture's math (gpt_oss interleaved gate/up + bias + clamped gate; concatenated `[N,2I,H]` layouts) is
reused unchanged. Which experts are resident is decided by a `ResidencyPolicy`; bytes are moved by the store.

Host reads per MoE layer and decode call: one small device tensor (the routed expert ids and the option the
mask function allowed), from which the host plans; the id -> slot remap, the residency flags and the option
masks stay on the device. Expert weights are served in the floating dtype the model was loaded in
(bf16 for gpt-oss checkpoints, whose MXFP4 experts `temoe.load_model` dequantises); quantised expert
parameters are refused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from temoe.serve.policy import (
    FullPolicy,
    LRUPolicy,
    OptionPolicy,
    ResidencyOverflow,
    ResidencyPolicy,
    StaticPolicy,
)
from temoe.serve.slots import SlotTable
from temoe.serve.stats import RoutingStats, TransferStats, engine_summary
from temoe.serve.store import ExpertMover, HostExpertStore, SlotBank

MaskFn = Callable[[int, torch.Tensor], torch.Tensor]


class OffloadedExperts(nn.Module):
    """Stand-in for one layer's experts module; `base_layer` is the original (its expert weights now live in
    the engine's host store). forward(hidden (T, H), top_k_index (T, k), top_k_weights (T, k)) -> (T, H)."""

    def __init__(self, base_layer: nn.Module, engine: OffloadEngine, layer: int):
        super().__init__()
        self.base_layer = base_layer
        self.layer = layer
        object.__setattr__(self, "_engine", engine)  # not a submodule: no cycle in the module tree

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return self._engine._run(self.layer, hidden_states, top_k_index, top_k_weights)


def _compact(base: nn.Module, bank: SlotBank, num_rows: int) -> nn.Module:
    """A shallow copy of `base` whose expert parameters are the bank's slot views (num_rows, *shape)."""
    module = copy.copy(base)
    module._parameters = dict(bank.params)  # plain tensors are fine: inference only, read via __getattr__
    module._buffers = dict(base._buffers)
    module._modules = dict(base._modules)
    module.num_experts = num_rows
    return module


def _as_mask_fn(masks, num_layers: int, top_k: int, device: torch.device) -> MaskFn:
    """Static (L, N) or per-sequence (B, L, N) bool masks as a MaskFn: fn(i, hidden (B, S, H)) ->
    (B, S, N). The masks are checked (every row allows >= k experts) and uploaded to `device` once, here."""
    if callable(masks):
        return masks
    if masks.dtype != torch.bool or masks.dim() not in (2, 3) or masks.shape[-2] != num_layers:
        raise ValueError(
            f"masks must be a bool tensor (L={num_layers}, N) or (B, L, N) or a MaskFn, "
            f"got {tuple(masks.shape)} {masks.dtype}"
        )
    low = int(masks.sum(-1).min())
    if low < top_k:
        raise ValueError(f"masks allow only {low} experts in some row; every row must allow >= k={top_k}")
    on_device = masks.to(device)

    def fn(i: int, hidden: torch.Tensor) -> torch.Tensor:
        B, S = hidden.shape[0], hidden.shape[1]
        m = on_device[i] if on_device.dim() == 2 else on_device[:, i]  # (N,) or (B, N)
        return m.reshape(-1, 1, m.shape[-1]).expand(B, S, -1)

    fn.temoe_counts_checked = True  # checked above, once
    return fn


class OffloadEngine:
    """Keeps all expert weights in a host store and, per MoE layer, `policy.num_slots` experts on `device`.

    Use: `engine = OffloadEngine(handle, policy, device)`; for every forward call `with engine.step(stream,
    masks, batch_shape=(B, S), prefill=...): model(...)`; `engine.release(stream)` when a request ends;
    `engine.detach()` restores the model (expert weights back in their parameters). `masks`
    (option/static/full modes) is what `handle.restrict` takes: (L, N), (B, L, N) or a MaskFn; the engine
    records the allowed set at each layer (union over the batch rows' last position) as that stream's option.

    Prefill (`prefill=True`, S > 1): if the experts routed by the prompt fit in the layer's slots together
    with the wanted resident set, they are loaded into slots; otherwise the layer streams through a staging
    bank of N rows (one layer at a time, reused by every layer): routed experts are copied in (resident ones
    device-to-device), the layer runs, then the experts the last prompt position needs are placed in slots
    (from staging).
    """

    def __init__(
        self,
        handle,
        policy: ResidencyPolicy,
        device: torch.device | str | None = None,
        sim_bandwidth_gbps: float | None = None,
        store: HostExpertStore | None = None,
    ):
        self.handle = handle
        self.policy = policy
        model = handle.model
        self.num_layers, self.num_experts, self.top_k = handle.num_layers, handle.num_experts, handle.top_k
        if policy.num_slots < self.top_k:
            raise ValueError(f"expert budget {policy.num_slots} per layer is below top-k={self.top_k}")
        if policy.num_slots > self.num_experts:
            raise ValueError(
                f"expert budget {policy.num_slots} exceeds the {self.num_experts} experts per layer"
            )
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.sim_bandwidth_gbps = sim_bandwidth_gbps
        self.transfer = TransferStats()
        self.routing = RoutingStats(self.num_layers)
        bases = list(handle.experts)
        _check_float_experts(bases)
        # A store from a previous engine on this handle (detached with restore_weights=False) is reused: the
        # bench ladder packs the experts once instead of once per rung.
        self.store = store or HostExpertStore(bases, self.num_experts, self.device)
        self.mover = ExpertMover(self.store, self.device, self.transfer)
        layout = self.store.layout
        self._orig_device = [next(b.parameters()).device for b in bases]
        self._model_device = next(model.parameters()).device
        with torch.no_grad():  # free the original expert weights: the host store holds them now
            for base in bases:
                for name in layout.names:
                    getattr(base, name).data = torch.empty(0, dtype=layout.dtype, device=self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the freed expert weights back before the slots are allocated
        model.to(self.device)
        self.tables = [
            SlotTable(self.num_experts, policy.num_slots, self.device) for _ in range(self.num_layers)
        ]
        self.banks = [SlotBank(layout, policy.num_slots, self.device) for _ in range(self.num_layers)]
        self._compacts = [_compact(b, bank, policy.num_slots) for b, bank in zip(bases, self.banks)]
        self._staging: SlotBank | None = None
        self._staging_compacts: list[nn.Module] | None = None
        self._wrappers: list[tuple[nn.Module, str, OffloadedExperts]] = []
        for i, (block, base) in enumerate(zip(handle.blocks, bases)):
            attr = next(n for n, child in block.named_children() if child is base)
            wrapper = OffloadedExperts(base, self, i)
            setattr(block, attr, wrapper)
            self._wrappers.append((block, attr, wrapper))
        for i in range(self.num_layers):
            experts = policy.initial(i)
            slots = [self.tables[i].allocate(e, set(experts))[0] for e in experts]
            self.mover.load(i, experts, self.banks[i], slots, "initial")
        self._stream = 0
        self._prefill = False
        self._batch_shape: tuple[int, int] | None = None
        self._last_option: dict[tuple[int, int], set[int]] = {}
        self._option_dev: list[torch.Tensor | None] = [None] * self.num_layers  # this call's option (B, N)
        self._stream_masks: dict[int, tuple[object, MaskFn]] = {}  # stream -> (masks given, device MaskFn)
        self.decode_tokens = 0
        self.last_cache = None  # KV cache of the latest decode_steps call (for the memory report)

    # ----------------------------------------------------------------------------------------- public API
    @contextmanager
    def step(
        self, stream: int = 0, masks=None, *, batch_shape: tuple[int, int], prefill: bool
    ) -> Iterator[None]:
        """Context for one forward call of `stream` over input ids of shape `batch_shape` (B, S)."""
        if (
            isinstance(self.policy, OptionPolicy)
            and masks is None
            and not isinstance(self.policy, StaticPolicy)
        ):
            raise ValueError(
                "option mode needs routing masks or a controller MaskFn; use mode='lru' or 'full' "
                "for the base router"
            )
        self._stream, self._prefill, self._batch_shape = stream, prefill, batch_shape
        self._option_dev = [None] * self.num_layers
        if masks is None:
            yield
            return
        inner = self._mask_fn(stream, masks)

        def recording(i: int, hidden: torch.Tensor) -> torch.Tensor:
            allowed = inner(i, hidden)  # (B, S, N) bool
            self._option_dev[i] = allowed[:, -1]  # (B, N) the option in force after this call (a view)
            return allowed

        # A mask fn that guarantees its row counts (controllers, synthetic options, checked tensors) spares
        # the handle its per-call count check, a host read per layer and token.
        recording.temoe_counts_checked = getattr(inner, "temoe_counts_checked", False)
        with self.handle.restrict(recording):
            yield

    def _mask_fn(self, stream: int, masks) -> MaskFn:
        """`masks` as a MaskFn on the engine's device; a tensor is checked and uploaded once per stream."""
        cached = self._stream_masks.get(stream)
        if cached is None or cached[0] is not masks:
            cached = self._stream_masks[stream] = (
                masks,
                _as_mask_fn(masks, self.num_layers, self.top_k, self.device),
            )
        return cached[1]

    def release(self, stream: int) -> None:
        """A request finished: drop its options (its experts become evictable)."""
        self.policy.release(stream)
        self._stream_masks.pop(stream, None)
        for key in [k for k in self._last_option if k[0] == stream]:
            del self._last_option[key]

    def detach(self, restore_weights: bool = True) -> None:
        """Put the original experts modules back. With `restore_weights` the model returns to the device it
        was on and the expert weights return from the store (False: leave them empty and the model on the
        engine's device, to hand `self.store` to the next engine)."""
        if restore_weights:
            self.handle.model.to(self._model_device)
        with torch.no_grad():
            for (block, attr, wrapper), dev in zip(self._wrappers, self._orig_device):
                base = wrapper.base_layer
                for name in self.store.layout.names if restore_weights else ():
                    getattr(base, name).data = self.store.unpack(wrapper.layer, name).to(dev)
                setattr(block, attr, base)
        self._wrappers.clear()

    def memory_report(self, cache=None) -> dict:
        """Device memory split (bytes): non-expert weights, resident expert slots, prefill staging,
        KV cache."""
        model = self.handle.model
        tensors = list(model.parameters()) + list(model.buffers())
        out = {
            "serve/vram_non_expert_bytes": sum(
                t.numel() * t.element_size() for t in tensors if t.device.type == self.device.type
            ),
            "serve/vram_resident_expert_bytes": sum(b.nbytes for b in self.banks),
            "serve/vram_staging_bytes": self._staging.nbytes if self._staging is not None else 0,
            "serve/vram_kv_cache_bytes": cache_bytes(cache) if cache is not None else 0,
            "serve/host_store_bytes": self.store.nbytes,
            "serve/pinned_host_bytes": self.store.pinned_bytes,
            "serve/expert_slots_per_layer": self.policy.num_slots,
            "serve/resident_expert_fraction": self.policy.num_slots / self.num_experts,
            "serve/device_tier": "cuda" if self.device.type == "cuda" else "simulated (cpu)",
        }
        if self.device.type == "cuda":
            out["serve/vram_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return out

    def summary(self, measured_bandwidth_gbps: float | None = None) -> dict:
        return engine_summary(
            self.transfer,
            self.routing,
            decode_tokens=self.decode_tokens,
            sim_bandwidth_gbps=self.sim_bandwidth_gbps,
            measured_bandwidth_gbps=measured_bandwidth_gbps,
        )

    # ------------------------------------------------------------------------------------------ internals
    def _record_option(self, layer: int, option: set[int]) -> None:
        self.policy.set_options(self._stream, layer, option)
        key = (self._stream, layer)
        prev = self._last_option.get(key)
        if prev is not None and not self._prefill:
            self.routing.option_steps += 1
            if option != prev:
                self.routing.switches += 1
                self.routing.replaced_total += len(option - prev)
        self._last_option[key] = option

    def _read_routing(self, layer: int, top_k_index: torch.Tensor) -> tuple[set, set, set | None]:
        """The one host read of a layer call: (routed, routed at a row's last position, option or None).

        top_k_index (T, k) with T = B*S, flattened, followed (option modes) by the option rows (B, N) the mask
        function allowed at the last position: one 1-D tensor of T*k + B*N values read with one `tolist()`.
        Building it is one `cat` (none without an option), so a decode layer issues at most one small kernel
        and one device -> host copy for its plan.
        """
        B, S = self._batch_shape
        k = top_k_index.shape[-1]
        ids = top_k_index.reshape(-1)  # (T*k,)
        option = self._option_dev[layer]  # (B, N) bool or None
        if option is not None:
            ids = torch.cat((ids, option.reshape(-1)))  # bool promoted to int64: (T*k + B*N,)
        values = ids.tolist()  # the single device -> host read of this layer call
        n = top_k_index.numel()
        routed = set(values[:n])
        at_last = set()
        for b in range(B):  # row b's last position is token b*S + S-1: its k ids
            at_last.update(values[(b * S + S - 1) * k : (b * S + S) * k])
        if option is None:
            return routed, at_last, None
        N = self.num_experts
        return routed, at_last, {j % N for j, f in enumerate(values[n:]) if f}

    def _run(
        self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Expert computation of `layer` for hidden (T, H), ids and weights (T, k), reading only
        device slots."""
        table, bank = self.tables[layer], self.banks[layer]
        if isinstance(self.policy, FullPolicy):  # every expert resident: nothing to plan, nothing to read
            return self._compacts[layer].forward(hidden, table.slot_dev[top_k_index], top_k_weights)
        routed, at_last, option = self._read_routing(layer, top_k_index)
        if option is not None:
            self._record_option(layer, option)
        resident = table.resident()
        try:
            plan = self.policy.plan(layer, routed, resident, self._stream)
        except ResidencyOverflow:
            if not self._prefill:
                raise
            return self._run_staged(layer, hidden, top_k_index, top_k_weights, routed, at_last)
        if not self._prefill:
            self.routing.hits += len(routed & resident)
            self.routing.misses += len(routed - resident)
            self.routing.union_size_total += len(plan.keep)
            self.routing.plan_calls += 1
        self._load(
            layer, plan.critical, plan.keep, "prefill" if self._prefill else "critical", background=False
        )
        self._load(
            layer, plan.background, plan.keep, "prefill" if self._prefill else "background", background=True
        )
        table.touch(routed)
        self.mover.before_compute(bank, [table.slot_of[e] for e in routed])
        out = self._compacts[layer].forward(hidden, table.lookup(top_k_index, routed), top_k_weights)
        self.mover.after_compute(layer)
        return out

    def _load(self, layer: int, experts: list[int], keep: set[int], kind: str, background: bool) -> None:
        if not experts:
            return
        table = self.tables[layer]
        slots = []
        for e in experts:
            slot, victim = table.allocate(e, keep)
            self.transfer.evictions += victim >= 0
            slots.append(slot)
        self.mover.load(layer, experts, self.banks[layer], slots, kind, background=background)

    def _run_staged(self, layer, hidden, top_k_index, top_k_weights, routed: set[int], last: set[int]):
        """Prefill through the N-row staging bank (identity ids), then seat the last position's experts."""
        if self._staging is None:
            self._staging = SlotBank(self.store.layout, self.num_experts, self.device)
            self._staging_compacts = [
                _compact(w.base_layer, self._staging, self.num_experts) for _, _, w in self._wrappers
            ]
        table, bank, staging = self.tables[layer], self.banks[layer], self._staging
        ordered = sorted(routed)
        from_host = [e for e in ordered if not table.is_resident(e)]
        for e in ordered:
            if table.is_resident(e):
                slot = table.slot_of[e]
                self.mover.before_compute(bank, [slot])
                self.mover.copy_device(staging.rows[e], bank.rows[slot])
        self.mover.load(layer, from_host, staging, from_host, "prefill")
        out = self._staging_compacts[layer].forward(hidden, top_k_index, top_k_weights)
        plan = self.policy.plan(layer, last, table.resident(), self._stream)
        for e in plan.critical + plan.background:
            slot, victim = table.allocate(e, plan.keep)
            self.transfer.evictions += victim >= 0
            if e in routed:
                self.mover.before_compute(bank, [slot])
                self.mover.copy_device(bank.rows[slot], staging.rows[e])
            else:
                self.mover.load(layer, [e], bank, [slot], "prefill")
        table.touch(last)
        self.mover.after_compute(layer)
        return out


def _check_float_experts(bases: list[nn.Module]) -> None:
    """The engine packs and serves floating-point expert weights; quantised ones (native MXFP4) are
    refused."""
    for base in bases:
        for name, p in base.named_parameters(recurse=False):
            if not p.dtype.is_floating_point:
                raise ValueError(
                    f"expert parameter {name} of {type(base).__name__} has dtype {p.dtype}: the offloading "
                    "engine serves floating-point experts; load gpt-oss dequantised to bf16 "
                    "(temoe.load_model does) instead of in native MXFP4"
                )


def cache_bytes(cache) -> int:
    """Bytes held by a transformers KV cache (every tensor reachable from its layers)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in vars(layer).values():
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def make_policy(
    mode: str,
    num_layers: int,
    num_experts: int,
    *,
    expert_budget: int | None = None,
    static_mask: torch.Tensor | None = None,
) -> ResidencyPolicy:
    """The policy for a serving mode: option (needs `expert_budget` slots), static (a fixed mask),
    lru, full."""
    if mode == "full":
        return FullPolicy(num_experts)
    if mode == "static":
        if static_mask is None:
            raise ValueError("mode='static' needs a bool mask (L, N)")
        return StaticPolicy(static_mask)
    if expert_budget is None:
        raise ValueError(f"mode={mode!r} needs expert_budget (slots per layer)")
    if mode == "option":
        return OptionPolicy(num_layers, expert_budget)
    if mode == "lru":
        return LRUPolicy(expert_budget)
    raise ValueError(f"unknown mode {mode!r}; valid: option, static, lru, full")


def restore_experts(handle, store: HostExpertStore, device: torch.device) -> None:
    """Copy every expert weight from `store` back into the (emptied) parameters of `handle.experts`."""
    with torch.no_grad():
        for layer, base in enumerate(handle.experts):
            for name in store.layout.names:
                getattr(base, name).data = store.unpack(layer, name).to(device)
