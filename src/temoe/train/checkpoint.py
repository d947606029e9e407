"""Training checkpoints: save atomically and resume exactly (reading one is `temoe.inference`'s).

Layout of one checkpoint directory (`RUN/checkpoints/step_000120/`):
    meta.json               step, model facts (model_type, L, N, k, H), ControllerConfig, TrainConfig, the
                            loop's scalars for the next step (`trainer_state`: η; with `eta: auto` also
                            η's integral and the loads' moving average), and the sha256 of every other
                            file (`files`), verified before anything is loaded
    controller.safetensors  the L per-layer controllers (`OptionController.state_dict()`)
    routers.safetensors     trainable router weights, keys `layer{i}.{param}` (i = MoE layer index)
    adapter/                the LoRA adapter in peft format (adapter_config.json + adapter_model.safetensors)
    optimizers.pt           both AdamW states (controller, policy): tensors and numbers only
    rng_rank{r}.pt          per-process RNG states (torch, python, numpy, rollout/controller generators)
`RUN/checkpoints/latest` is a one-line text file naming the newest complete checkpoint. Each checkpoint is
written into a temporary directory and renamed into place, so a killed run never leaves a half-written one.
Nothing here runs code from a file: `.pt` files load with `torch.load(weights_only=True)`, and `latest` may
only name a `step_*` directory next to it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from temoe.inference import (  # reading a checkpoint is shared with inference; the trainer resumes through it
    META,
    CheckpointError,
    _load_safetensors,
    _previous_hint,
    _sha256,
    check_compatible,
    model_facts,
    verify_checkpoint,
)
from temoe.inference import load_routers as _load_routers
from temoe.validation import check_finite_tensors

log = logging.getLogger("temoe.train")


def _router_state(handle) -> dict[str, torch.Tensor]:
    return {
        f"layer{i}.{n}": p.detach().cpu().contiguous()
        for i, r in enumerate(handle.routers)
        for n, p in r.named_parameters()
    }


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def _numpy_state() -> tuple:
    """numpy's RNG state with the key array as a list, so `torch.load(weights_only=True)` can read it."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, keys.tolist(), pos, has_gauss, cached


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    peft_model,
    handle,
    controller: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    train_config,
    controller_config,
    accelerator,
    keep: int = 0,
    trainer_state: dict[str, float] | None = None,
) -> Path:
    """Write `run_dir/checkpoints/step_{step:06d}` atomically (all processes must call this).

    Refuses (ValueError, on every process) a controller holding NaN or infinity: a diverged run must not
    leave a checkpoint that serves garbage. `trainer_state`: scalars the loop carries to the next step
    (η; under `eta: auto` also the PI update's integral and loads average), stored in meta.json as exact
    JSON floats.
    """
    check_finite_tensors(controller.state_dict(), f"the controller at step {step}")
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp_step_{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Every rank writes its own RNG state (sampling differs per process); the rest comes from rank 0.
    torch.save(rng_state(generators), tmp / f"rng_rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        meta = {
            "step": step,
            "model": model_facts(handle),
            "controller_config": asdict(controller_config),
            "train_config": train_config.to_dict(),
            "num_processes": accelerator.num_processes,
            "trainer_state": dict(trainer_state or {}),
        }
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in controller.state_dict().items()},
            str(tmp / "controller.safetensors"),
        )
        save_file(_router_state(handle), str(tmp / "routers.safetensors"))
        peft_model.save_pretrained(str(tmp / "adapter"))
        torch.save({k: o.state_dict() for k, o in optimizers.items()}, tmp / "optimizers.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta["files"] = {name: _sha256(tmp / name) for name in _files(tmp)}  # every rank's files are in
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if final.exists():  # re-saving a step (e.g. after a resume): replace the old copy only once complete
            old = ckpt_root / f".old_step_{step:06d}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        latest_tmp = ckpt_root / ".latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, ckpt_root / "latest")
        if keep:  # prune only older steps: `final` (and any later step of an abandoned branch) stays
            older = [p for p in sorted(ckpt_root.glob("step_*")) if p.name < final.name]
            for old in older[: max(len(older) - (keep - 1), 0)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _files(ckpt: Path) -> list[str]:
    """Relative paths of the regular files under `ckpt`, sorted, meta.json excluded."""
    return sorted(str(f.relative_to(ckpt)) for f in ckpt.rglob("*") if f.is_file() and f.name != META)


def _load_tensors(path: Path, map_location=None):
    """`torch.load(weights_only=True)`: tensors, numbers, strings and containers only, never code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors and numbers; refusing to load it "
                              f"(it could run code): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path} is damaged ({str(err).splitlines()[0]})"
                              + _previous_hint(path.parent)) from None


def load_training_state(
    ckpt: Path,
    *,
    peft_model,
    handle,
    controller: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    process_index: int,
) -> int:
    """Restore everything `save_checkpoint` wrote into a live training setup; returns the saved step."""
    from peft import set_peft_model_state_dict

    meta = verify_checkpoint(ckpt)
    check_compatible(meta, handle, ckpt)
    controller.load_state_dict(_load_safetensors(ckpt / "controller.safetensors"))
    _load_routers(handle, ckpt / "routers.safetensors")
    adapter = _load_safetensors(ckpt / "adapter" / "adapter_model.safetensors")
    result = set_peft_model_state_dict(peft_model, adapter)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {ckpt} adapter has keys this model lacks: {result.unexpected_keys[:5]}")
    states = _load_tensors(ckpt / "optimizers.pt")
    for k, o in optimizers.items():
        o.load_state_dict(states[k])
    rng_file = ckpt / f"rng_rank{process_index}.pt"
    if not rng_file.exists():
        raise ValueError(
            f"checkpoint {ckpt} has no RNG state for process {process_index}: it was written by "
            f"{meta['num_processes']} process(es); resume with the same number"
        )
    set_rng_state(_load_tensors(rng_file), generators)
    return int(meta["step"])

