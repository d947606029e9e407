"""LoRA on the intra-option policy θ through peft, and the teacher inside the same weights (§4, §5).

θ = LoRA (rank 16, α 16) on the fused expert weights (peft `target_parameters`, one rank-r pair per expert)
and on the attention projections (`target_modules`), plus the router weights (§5: "Router weights are also
trainable"). The teacher (Alg. 2 l. 10) is the original model: `teacher_mode` disables the adapters
(`PeftModel.disable_adapter()`) and swaps the router weights back to a frozen copy taken before training.
Routing under the teacher is unmasked as long as the caller does not install a mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from temoe.moe.arch import ARCHITECTURES


def add_lora(
    model: nn.Module,
    handle,
    rank: int = 16,
    alpha: float = 16.0,
    *,
    attention: bool = True,
    attention_modules: Sequence[str] | None = None,
    train_routers: bool = True,
) -> PeftModel:
    """Wrap `model` in a `PeftModel` with LoRA on experts (+ attention) and trainable routers.

    `handle` is the `temoe.wrap(model)` handle (its routers stay the same modules: peft does not touch them,
    so the mask hooks keep firing). lora_dropout is 0 (peft's ParamWrapper forbids dropout). Attention modules
    default to the architecture's `ArchSpec.attention_modules` that exist in the model (an explicit list:
    `"all-linear"` would also put LoRA on Mixtral's router). Everything else is frozen.
    """
    spec = ARCHITECTURES[model.config.model_type]
    targets: list[str] = []
    if attention:
        wanted = set(attention_modules if attention_modules is not None else spec.attention_modules)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = sorted(wanted & present)
        if not targets:
            raise ValueError(
                f"none of the attention modules {sorted(wanted)} exist in this "
                f"{model.config.model_type} model"
            )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=targets or None,
        target_parameters=list(spec.expert_parameters),
    )
    peft_model = get_peft_model(model, config)
    for router in handle.routers:
        for p in router.parameters():
            p.requires_grad_(train_routers)
    return peft_model


def snapshot_routers(handle) -> list[dict[str, torch.Tensor]]:
    """Frozen copies of every router's parameters (the teacher's routing), one dict per MoE layer."""
    return [{name: p.detach().clone() for name, p in router.named_parameters()} for router in handle.routers]


@contextmanager
def swap_routers(handle, weights: list[dict[str, torch.Tensor]]) -> Iterator[None]:
    """Temporarily give every router the parameter values in `weights` (in place, same Parameter objects,
    so optimiser references stay valid); restored on exit. For no-grad forwards only."""
    saved = []
    with torch.no_grad():
        for router, values in zip(handle.routers, weights, strict=True):
            params = dict(router.named_parameters())
            saved.append({n: params[n].data for n in values})
            for n, v in values.items():
                params[n].data = v.to(device=params[n].device, dtype=params[n].dtype)
    try:
        yield
    finally:
        for router, old in zip(handle.routers, saved, strict=True):
            params = dict(router.named_parameters())
            for n, v in old.items():
                params[n].data = v


@contextmanager
def teacher_mode(
    peft_model: PeftModel, handle, original_routers: list[dict[str, torch.Tensor]]
) -> Iterator[None]:
    """The frozen teacher inside the student's weights: adapters off and the original router weights.

    Use under `torch.no_grad()` and without `handle.restrict(...)` (the teacher routes unmasked).
    Same effect as `peft_model.disable_adapter()` for our single, always-enabled adapter, without its
    model-status scan over every module, which would be paid on every decode step of a rollout.
    """
    lora = peft_model.base_model
    lora.disable_adapter_layers()
    try:
        with swap_routers(handle, original_routers):
            yield
    finally:
        lora.enable_adapter_layers()


def trainable_router_parameters(handle) -> list[nn.Parameter]:
    """The router parameters that are part of θ (those with requires_grad)."""
    return [p for router in handle.routers for p in router.parameters() if p.requires_grad]
