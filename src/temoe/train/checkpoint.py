"""Training checkpoints: save atomically and resume exactly (`temoe.inference` loads one for inference).

Layout of one checkpoint directory (`RUN/checkpoints/step_000120/`):
    meta.json               step, model facts (model_type, L, N, k, H), ControllerConfig, TrainConfig
    controller.safetensors  the L per-layer controllers (`OptionController.state_dict()`)
    routers.safetensors     trainable router weights, keys `layer{i}.{param}` (i = MoE layer index)
    adapter/                the LoRA adapter in peft format (adapter_config.json + adapter_model.safetensors)
    optimizers.pt           both AdamW states (controller, policy)
    rng_rank{r}.pt          per-process RNG states (torch, python, numpy, rollout/controller generators)
`RUN/checkpoints/latest` is a one-line text file naming the newest complete checkpoint. Each checkpoint is
written into a temporary directory and renamed into place, so a killed run never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from temoe.inference import META, check_compatible, model_facts, read_meta
from temoe.inference import load_routers as _load_routers
from temoe.inference import resolve_checkpoint as resolve_checkpoint  # the trainer resumes through it


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
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


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
) -> Path:
    """Write `run_dir/checkpoints/step_{step:06d}` atomically (all processes must call this)."""
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
        }
        (tmp / META).write_text(json.dumps(meta, indent=2))
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in controller.state_dict().items()},
            str(tmp / "controller.safetensors"),
        )
        save_file(_router_state(handle), str(tmp / "routers.safetensors"))
        peft_model.save_pretrained(str(tmp / "adapter"))
        torch.save({k: o.state_dict() for k, o in optimizers.items()}, tmp / "optimizers.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
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
        if keep:
            for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


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

    meta = read_meta(ckpt)
    check_compatible(meta, handle, ckpt)
    controller.load_state_dict(load_file(str(ckpt / "controller.safetensors")))
    _load_routers(handle, ckpt / "routers.safetensors")
    adapter = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, adapter)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {ckpt} adapter has keys this model lacks: {result.unexpected_keys[:5]}")
    states = torch.load(ckpt / "optimizers.pt", weights_only=False)
    for k, o in optimizers.items():
        o.load_state_dict(states[k])
    rng_file = ckpt / f"rng_rank{process_index}.pt"
    if not rng_file.exists():
        raise ValueError(
            f"checkpoint {ckpt} has no RNG state for process {process_index}: it was written by "
            f"{meta['num_processes']} process(es); resume with the same number"
        )
    set_rng_state(torch.load(rng_file, weights_only=False), generators)
    return int(meta["step"])
