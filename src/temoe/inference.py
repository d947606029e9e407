"""Load a trained checkpoint for inference: the base model with the LoRA adapter merged, the trained router
weights, and the controller; shared by generate, eval, bench and serve (`temoe.train.checkpoint` writes it).

A checkpoint directory holds `meta.json` (step, model facts, ControllerConfig, TrainConfig, and the sha256 of
every other file), `controller.safetensors`, `routers.safetensors` (keys `layer{i}.{param}`) and `adapter/`
(peft format); `RUN/checkpoints/latest` names the newest one of a run. Every file is verified against its
checksum before it is read, and `latest` may only name a `step_*` directory beside it, so opening a run never
runs code or reads outside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

META = "meta.json"
_STEP_NAME = re.compile(r"step_\d{6,}")
log = logging.getLogger("temoe.inference")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, incomplete, or holding something other than tensors."""


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
    state = _load_safetensors(path)
    with torch.no_grad():
        for i, r in enumerate(handle.routers):
            for n, p in r.named_parameters():
                p.copy_(state[f"layer{i}.{n}"].to(p.dtype))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest one of a run directory (`RUN/checkpoints/latest`).

    `latest` must name a `step_*` directory in the same folder: a pointer that leads anywhere else
    (`../..`, an absolute path, a symlink out) is refused, so opening a run never reads outside it.
    """
    p = Path(path)
    if (p / META).is_file():
        return p
    for root in (p / "checkpoints", p):
        latest = root / "latest"
        if latest.is_file():
            name = latest.read_text().strip()
            target = root / name
            if not _STEP_NAME.fullmatch(name) or target.resolve().parent != root.resolve():
                raise CheckpointError(f"{latest} names {name!r}, which is not a step_NNNNNN directory "
                                      f"in {root}")
            if not (target / META).is_file():
                raise CheckpointError(f"{latest} names {name}, which is missing or incomplete"
                                      + _previous_hint(target))
            return target
    raise FileNotFoundError(f"no checkpoint at {p} (expected {META} there or a checkpoints/latest file)")


def read_meta(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / META
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is damaged (not valid JSON: {err})" + _previous_hint(ckpt)) from None


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Check every file of `ckpt` against the sha256 sums in its meta.json; returns the meta.

    Raises CheckpointError naming the damaged, missing or unexpected file and the newest earlier checkpoint
    of the same run that verifies. Checkpoints written before checksums existed load with a warning.
    """
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    sums = meta.get("files")
    if sums is None:
        log.warning("checkpoint %s has no checksums (written by an older temoe): not verified", ckpt)
        return meta
    root = ckpt.resolve()
    for name, want in sums.items():
        path = ckpt / name
        if root not in path.resolve().parents:
            raise CheckpointError(f"checkpoint {ckpt} lists {name!r}, a path outside the checkpoint")
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing" + _previous_hint(ckpt))
        if _sha256(path) != want:
            raise CheckpointError(f"checkpoint file {path} is damaged (its sha256 differs from meta.json)"
                                  + _previous_hint(ckpt))
    return meta


def _verifies(ckpt: Path) -> bool:
    try:
        return "files" in verify_checkpoint(ckpt)
    except (CheckpointError, OSError):
        return False


def _previous_hint(ckpt: Path) -> str:
    """"; the previous good checkpoint is ..." for the newest earlier step of the run that verifies."""
    ckpt = Path(ckpt)
    earlier = [p for p in sorted(ckpt.parent.glob("step_*"), reverse=True)
               if _STEP_NAME.fullmatch(p.name) and p.name < ckpt.name]
    for prev in earlier:
        if _verifies(prev):
            return (f"; the previous good checkpoint is {prev} (pass it as --checkpoint, or write "
                    f"'{prev.name}' into {ckpt.parent / 'latest'} to resume from it)")
    return "; no earlier checkpoint of this run verifies"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is damaged ({err})" + _previous_hint(path.parent)) from None


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
    meta = verify_checkpoint(ckpt)
    if not (ckpt / "adapter" / "adapter_model.safetensors").is_file():  # never peft's pickle fallback
        raise CheckpointError(f"checkpoint {ckpt} has no adapter/adapter_model.safetensors")
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
    controller.load_state_dict(_load_safetensors(ckpt / "controller.safetensors"))
    device = next(model.parameters()).device
    return model, handle, controller.to(device).eval()
