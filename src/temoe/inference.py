"""Load a trained checkpoint for inference: the base model with the LoRA adapter merged, the trained router
weights, and the controller; shared by generate, eval, bench and serve (`temoe.train.checkpoint` writes it).

A checkpoint directory holds `meta.json` (step, model facts, ControllerConfig, TrainConfig),
`controller.safetensors`, `routers.safetensors` (keys `layer{i}.{param}`) and `adapter/` (peft format);
`RUN/checkpoints/latest` names the newest one of a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

META = "meta.json"


def model_facts(handle) -> dict[str, Any]:
    """The shape facts a checkpoint must match: model_type, L, N, k, H."""
    return {
        "model_type": handle.model_type,
        "num_layers": handle.num_layers,
        "num_experts": handle.num_experts,
        "top_k": handle.top_k,
        "hidden_size": handle.hidden_size,
    }


def check_compatible(meta: dict[str, Any], handle, where: Path) -> None:
    """Raise ValueError naming every model fact that differs between the checkpoint and `handle`."""
    have = model_facts(handle)
    diffs = [
        f"{k}: checkpoint {meta['model'][k]!r} vs model {have[k]!r}"
        for k in have
        if meta["model"].get(k) != have[k]
    ]
    if diffs:
        raise ValueError(f"checkpoint {where} was trained on a different model; " + "; ".join(diffs))


def load_routers(handle, path: Path) -> None:
    state = load_file(str(path))
    with torch.no_grad():
        for i, r in enumerate(handle.routers):
            for n, p in r.named_parameters():
                p.copy_(state[f"layer{i}.{n}"].to(p.dtype))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest one of a run directory (`RUN/checkpoints/latest`)."""
    p = Path(path)
    if (p / META).is_file():
        return p
    for root in (p / "checkpoints", p):
        latest = root / "latest"
        if latest.is_file():
            return root / latest.read_text().strip()
    raise FileNotFoundError(f"no checkpoint at {p} (expected {META} there or a checkpoints/latest file)")


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / META).read_text())


def load_for_inference(model: nn.Module, checkpoint: str | Path):
    """Base model + checkpoint -> `(model, handle, controller)` for generate / eval / serve.

    The LoRA adapter is merged into the weights (`merge_and_unload`), the trained router weights are copied
    in, the model is wrapped with `temoe.wrap` and the controller is rebuilt from the saved ControllerConfig.
    Fails
    with a message naming what differs when the checkpoint belongs to another architecture or shape.
    """
    from peft import PeftModel

    import temoe
    from temoe.controller import ControllerConfig, OptionController

    ckpt = resolve_checkpoint(checkpoint)
    meta = read_meta(ckpt)
    if meta["model"]["model_type"] != model.config.model_type:
        raise ValueError(
            f"checkpoint {ckpt} was trained on model_type {meta['model']['model_type']!r}, "
            f"got a {model.config.model_type!r} model"
        )
    probe = temoe.wrap(model)
    check_compatible(meta, probe, ckpt)
    probe.unwrap()
    model = PeftModel.from_pretrained(model, str(ckpt / "adapter")).merge_and_unload()
    handle = temoe.wrap(model)
    load_routers(handle, ckpt / "routers.safetensors")
    controller = OptionController.from_handle(handle, ControllerConfig(**meta["controller_config"]))
    controller.load_state_dict(load_file(str(ckpt / "controller.safetensors")))
    device = next(model.parameters()).device
    return model, handle, controller.to(device).eval()
