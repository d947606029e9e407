"""`wrap(model) -> MoEHandle`: masked routing and tracing on a loaded HF MoE model, in place and reversibly.

One forward hook per router (prepend=True) re-routes under the active mask and records traces; one pre/post
hook pair per MoE block records the call shape (B, S) and checks that the router hook fired (fused kernels and
native MXFP4 bypass the router module). `handle.unwrap()` removes every hook.
Shapes: B batch, S tokens of one forward call, T = B*S, L MoE layers, N experts, k routed, H hidden.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from temoe.moe.arch import ArchSpec, arch_spec
from temoe.moe.routing import reroute

#: A mask function: `fn(i, hidden)` with i the MoE layer (0..L-1) and hidden (B, S, H) that layer's pre-MLP
#: hidden state (the MoE block input) returns a bool (B, S, N) mask of allowed experts.
MaskFn = Callable[[int, Tensor], Tensor]


class Trace:
    """Router activity recorded inside `MoEHandle.trace()`, on CPU and detached.

    Rows are concatenated over forward calls in call order, then in (batch, position) order within a call
    (row b*S + s of a call of shape (B, S)), for prefill and cached one-token decode steps alike.
    """

    def __init__(self, num_layers: int, hidden_states: bool):
        self.calls: list[tuple[int, int]] = []
        """(B, S) of every forward call, in order."""
        self._record_hidden = hidden_states
        self._logits: list[list[Tensor]] = [[] for _ in range(num_layers)]
        self._ids: list[list[Tensor]] = [[] for _ in range(num_layers)]
        self._hidden: list[list[Tensor]] = [[] for _ in range(num_layers)]

    def _layer(self, chunks: list[list[Tensor]], i: int) -> Tensor:
        if not 0 <= i < len(chunks):
            raise IndexError(f"MoE layer index {i} out of range; valid: 0..{len(chunks) - 1}")
        if not chunks[i]:
            raise RuntimeError(f"nothing recorded for MoE layer {i}: no forward call ran inside trace()")
        return torch.cat(chunks[i])

    def router_logits(self, i: int) -> Tensor:
        """(T_total, N) float32 raw router logits of MoE layer i, before any mask."""
        return self._layer(self._logits, i)

    def expert_ids(self, i: int) -> Tensor:
        """(T_total, k) int64 expert ids actually routed in MoE layer i (after the mask, if any)."""
        return self._layer(self._ids, i)

    def hidden_states(self, i: int) -> Tensor:
        """(T_total, H) pre-MLP hidden states of MoE layer i, model dtype; needs trace(hidden_states=True)."""
        if not self._record_hidden:
            raise RuntimeError("hidden states were not recorded; use handle.trace(hidden_states=True)")
        return self._layer(self._hidden, i)

    def _record(self, i: int, logits: Tensor, ids: Tensor, hidden: Tensor, call: tuple[int, int]) -> None:
        if i == 0:
            self.calls.append(call)
        # copy=True: on CPU `.cpu()` would alias live tensors (Mixtral's jitter edits its input in place).
        self._logits[i].append(logits.detach().to("cpu", torch.float32, copy=True))
        self._ids[i].append(ids.detach().to("cpu", copy=True))
        if self._record_hidden:
            self._hidden[i].append(hidden.detach().reshape(-1, hidden.shape[-1]).to("cpu", copy=True))


class MoEHandle:
    """Access to the MoE layers of a wrapped model; create with `temoe.wrap(model)`.

    Attributes: `model`, `model_type`, `spec` (ArchSpec), `num_layers` (L), `num_experts` (N), `top_k` (k),
    `hidden_size` (H), `layer_indices` (decoder-layer index of each MoE layer), and one module per MoE layer
    in `routers`, `experts`, `blocks` (the original modules, below any peft wrapper).
    """

    def __init__(self, model: nn.Module, spec: ArchSpec, layer_indices: list[int], blocks: list[nn.Module],
                 routers: list[nn.Module], experts: list[nn.Module], num_experts: int, top_k: int,
                 hidden_size: int):
        self.model = model
        self.spec = spec
        self.model_type = spec.model_type
        self.layer_indices = layer_indices
        self.blocks = blocks
        self.routers = routers
        self.experts = experts
        self.num_layers = len(layer_indices)
        self.num_experts = num_experts
        self.top_k = top_k
        self.hidden_size = hidden_size
        self._masks: Tensor | MaskFn | None = None
        self._masks_on: dict[torch.device, Tensor] = {}
        self._traces: list[Trace] = []
        self._call_shape: list[tuple[int, int] | None] = [None] * self.num_layers
        self._fired = [False] * self.num_layers
        self._hooks: list[RemovableHandle] = []
        for i, (block, router) in enumerate(zip(blocks, routers)):
            router_hook = functools.partial(self._router_hook, i)
            router_hook.temoe = True  # marks our hook, to refuse wrapping twice
            self._hooks.append(router.register_forward_hook(router_hook, prepend=True))
            self._hooks.append(block.register_forward_pre_hook(functools.partial(self._block_pre_hook, i)))
            self._hooks.append(block.register_forward_hook(functools.partial(self._block_post_hook, i)))

    # -- weights for controller initialisation -------------------------------------------------------------
    def router_weight(self, i: int) -> Tensor:
        """(N, H) float32 copy of MoE layer i's router weight."""
        return self.routers[i].weight.detach().float().clone()

    def router_bias(self, i: int) -> Tensor | None:
        """(N,) float32 copy of MoE layer i's router logit bias, or None if its logits have no bias.

        DeepSeek's `e_score_correction_bias` is not a logit bias (it is added after the sigmoid): None there.
        """
        bias = getattr(self.routers[i], "bias", None) if self.spec.family == "topk_softmax" else None
        return None if bias is None else bias.detach().float().clone()

    def router_logits(self, i: int, hidden: Tensor) -> Tensor:
        """Router logits h W^T + b of MoE layer i from its current (possibly trained) weights, float32.

        hidden (..., H) -> (..., N). Does not call the router module (its hooks belong to this handle), so it
        is safe inside a mask function (the controller's ω_0 = router top-k̂).
        """
        weight = self.routers[i].weight.detach().to(hidden.device, torch.float32)
        bias = self.router_bias(i)
        bias = None if bias is None else bias.to(hidden.device)
        return nn.functional.linear(hidden.float(), weight, bias)

    # -- context managers ---------------------------------------------------------------------------------
    @contextmanager
    def restrict(self, masks: Tensor | MaskFn) -> Iterator[None]:
        """Route only among allowed experts inside the block.

        masks: bool (L, N) one static mask per MoE layer, bool (B, L, N) one per sequence, or a `MaskFn`.
        Every mask row must allow between k and N experts. Disallowed experts are excluded before the router's
        own top-k; the weights follow the router's own rule over the allowed experts (`temoe.moe.routing`).
        """
        self._check_live()
        if self._masks is not None:
            raise RuntimeError("restrict() is already active on this handle; nesting it is unsupported")
        if isinstance(masks, Tensor):
            self._validate_mask_tensor(masks)
        elif not callable(masks):
            raise TypeError(f"masks must be a bool Tensor (L, N) / (B, L, N) or callable, got {type(masks)}")
        self._masks, self._masks_on = masks, {}
        try:
            yield
        finally:
            self._masks, self._masks_on = None, {}

    @contextmanager
    def trace(self, hidden_states: bool = False) -> Iterator[Trace]:
        """Record router logits, routed expert ids and (optionally) pre-MLP hidden states inside the block.

        Can be nested with `restrict()` (the ids are then the masked routing) and with other traces.
        """
        self._check_live()
        record = Trace(self.num_layers, hidden_states)
        self._traces.append(record)
        try:
            yield record
        finally:
            self._traces.remove(record)

    def unwrap(self) -> None:
        """Remove every hook: the model behaves exactly as before `wrap`; the handle is unusable after."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- hooks --------------------------------------------------------------------------------------------
    def _active(self) -> bool:
        return self._masks is not None or bool(self._traces)

    def _block_pre_hook(self, i: int, block: nn.Module, args: tuple) -> None:
        self._call_shape[i] = tuple(args[0].shape[:2])  # block input is (B, S, H)
        self._fired[i] = False

    def _block_post_hook(self, i: int, block: nn.Module, args: tuple, output) -> None:
        if self._active() and not self._fired[i]:
            raise RuntimeError(
                f"the router hook of MoE layer {i} (decoder layer {self.layer_indices[i]}) did not fire: "
                f"{type(block).__name__} bypassed its router module (fused hub kernel via use_kernels=True, "
                f"or native MXFP4). Load it without kernels, dequantised (Mxfp4Config(dequantize=True))."
            )

    def _router_hook(self, i: int, router: nn.Module, args: tuple, output: tuple[Tensor, Tensor, Tensor]):
        self._fired[i] = True
        if not self._active():
            return None
        logits, weights, ids = output  # (T, N), (T, k), (T, k); T = B*S
        hidden = args[0]  # (T, H), or (B, S, H) for deepseek-style routers
        call = self._call_shape[i]
        if self._masks is not None:
            allowed = self._allowed(i, hidden, call, logits)
            weights, ids = reroute(self.spec, router, logits, allowed, weights.dtype)
        for record in self._traces:
            record._record(i, logits, ids, hidden, call)
        return None if self._masks is None else (logits, weights, ids)

    # -- masks --------------------------------------------------------------------------------------------
    def _allowed(self, i: int, hidden: Tensor, call: tuple[int, int], logits: Tensor) -> Tensor:
        """bool (T, N) allowed experts of MoE layer i for this call."""
        batch, seq = call
        if isinstance(self._masks, Tensor):
            masks = self._masks_on.get(logits.device)
            if masks is None:
                masks = self._masks_on[logits.device] = self._masks.to(logits.device)
            if masks.dim() == 2:  # (L, N): the same mask for every token
                return masks[i].expand(batch * seq, self.num_experts)
            if masks.shape[0] != batch:
                raise ValueError(
                    f"per-sequence masks have batch {masks.shape[0]} but the forward call has batch {batch}; "
                    f"expected masks of shape ({batch}, {self.num_layers}, {self.num_experts})"
                )
            # (B, L, N) -> (B, S, N) -> (T, N), rows in (batch, position) order like the router's input.
            return masks[:, i, None, :].expand(batch, seq, self.num_experts).reshape(-1, self.num_experts)
        allowed = self._masks(i, hidden.reshape(batch, seq, -1))
        expected = (batch, seq, self.num_experts)
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool or tuple(allowed.shape) != expected:
            got = f"{tuple(allowed.shape)} {allowed.dtype}" if isinstance(allowed, Tensor) else type(allowed)
            raise ValueError(
                f"mask function returned {got} for MoE layer {i}; expected bool of shape {expected}"
            )
        # `temoe_counts_checked` is set by mask functions that guarantee k̂ allowed experts per row.
        if not getattr(self._masks, "temoe_counts_checked", False):
            self._check_counts(allowed, f"mask function output for MoE layer {i}")
        return allowed.to(logits.device).reshape(-1, self.num_experts)

    def _validate_mask_tensor(self, masks: Tensor) -> None:
        L, N = self.num_layers, self.num_experts
        if masks.dtype != torch.bool:
            raise ValueError(f"masks must have dtype torch.bool, got {masks.dtype}")
        if masks.dim() not in (2, 3) or tuple(masks.shape[-2:]) != (L, N):
            raise ValueError(
                f"masks have shape {tuple(masks.shape)}; expected (L, N) = ({L}, {N}) "
                f"or (B, L, N) = (B, {L}, {N})"
            )
        self._check_counts(masks, "masks")

    def _check_counts(self, masks: Tensor, what: str) -> None:
        counts = masks.sum(dim=-1)
        low = int(counts.min())
        if low < self.top_k:
            raise ValueError(
                f"{what} allow only {low} experts in some row; every row must allow k̂ experts with "
                f"k̃ = {self.top_k} <= k̂ <= N = {self.num_experts}"
            )

    def _check_live(self) -> None:
        if not self._hooks:
            raise RuntimeError("this MoEHandle was unwrapped; call temoe.wrap(model) again")


def _base_module(module: nn.Module) -> nn.Module:
    """The original module under a peft wrapper (peft keeps it as `base_layer`)."""
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _is_instance_by_name(module: nn.Module, class_name: str) -> bool:
    # Through the MRO: peft's parametrize swaps the class at run time to a `Parametrized<Name>` subclass.
    return any(cls.__name__ == class_name for cls in type(module).__mro__)


def wrap(model: nn.Module) -> MoEHandle:
    """Attach masked routing and tracing to a HF MoE causal LM (or a peft model around one), in place.

    Raises ValueError for an unsupported `config.model_type` (listing the supported ones) or a model
    without MoE layers, and RuntimeError if the model is already wrapped.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    spec = arch_spec(base.config.model_type)
    config = base.config
    num_experts, top_k = getattr(config, spec.num_experts_key), getattr(config, spec.top_k_key)
    layer_indices, blocks, routers, experts = [], [], [], []
    for j, layer in enumerate(base.get_decoder().layers):
        block = getattr(layer, spec.block_attr)
        router = getattr(block, spec.router_attr, None)
        if router is None or not _is_instance_by_name(_base_module(router), spec.router_class):
            continue  # a dense layer (DeepSeek first_k_dense_replace, Qwen mlp_only_layers)
        router = _base_module(router)
        if any(getattr(h, "temoe", False) for h in router._forward_hooks.values()):
            raise RuntimeError("this model is already wrapped; call handle.unwrap() before wrapping it again")
        assert router.num_experts == num_experts and router.top_k == top_k, "router disagrees with config"
        layer_indices.append(j)
        blocks.append(block)
        routers.append(router)
        experts.append(_base_module(block.experts))
    if not layer_indices:
        raise ValueError(f"no MoE layer with a {spec.router_class} found in this {spec.model_type} model")
    return MoEHandle(model, spec, layer_indices, blocks, routers, experts, num_experts, top_k,
                     config.hidden_size)
