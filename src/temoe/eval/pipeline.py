"""One evaluation run end to end: a method name (base, a pruning baseline, a trained controller) -> its
`MaskSource` -> `evaluate` -> summary JSON and records JSONL. Shared by `temoe eval` and `temoe demo`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from temoe.baselines import baseline_source
from temoe.eval.runner import evaluate
from temoe.eval.tasks import Task
from temoe.inference import load_for_inference
from temoe.rollout.masks import BaseSource, ControllerSource
from temoe.rollout.runner import GenerationConfig

__all__ = ["load_controller", "evaluate_method", "write_summary"]

METHODS = ("base", "frequency", "reconstruction", "random", "wanda", "controller")


def load_controller(model, checkpoint: str | Path):
    """`temoe.inference.load_for_inference`: (model with LoRA merged, handle, controller)."""
    return load_for_inference(model, checkpoint)


def evaluate_method(handle, tokenizer, task: Task, method: str, k_hat: int, *,
                    generation: GenerationConfig | None = None, controller=None, eta: float | None = None,
                    controller_mode: str = "sample", selection_mode: str | None = None, calibration=None,
                    cache_dir: str | Path | None = None,
                    random_variant: str = "per-token", records_path: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Evaluate `method` at k̂ = `k_hat` on `task`; returns (summary, records).

    method: one of `METHODS`. "controller" needs `controller` (from `load_controller`, whose handle must be
    the `handle` passed here); `selection_mode` ("sample"/"greedy", default: as `controller_mode`) is how it
    picks an option at a termination. Baselines calibrate on `calibration` (a `CalibrationConfig`), cached in
    `cache_dir`. The controller's draws use a generator seeded with the generation seed.
    """
    generation = generation or GenerationConfig()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method == "base":
        return evaluate(handle, tokenizer, task, BaseSource(k_hat), generation, records_path=records_path,
                        progress=progress)
    if method == "controller":
        if controller is None:
            raise ValueError("method 'controller' needs a trained controller (CLI: --checkpoint DIR)")
        if controller.k_hat != k_hat:
            raise ValueError(f"the checkpoint's controller was trained with k̂ = {controller.k_hat}, "
                             f"but k_hat={k_hat} was requested")
        gen = torch.Generator(device=next(controller.parameters()).device).manual_seed(generation.seed)
        source = ControllerSource(controller, gen, mode=controller_mode, eta=eta,
                                  selection_mode=selection_mode)
        return evaluate(handle, tokenizer, task, source, generation, records_path=records_path,
                        progress=progress)
    with baseline_source(method, handle, tokenizer, k_hat, calibration=calibration, cache_dir=cache_dir,
                         seed=generation.seed, random_variant=random_variant) as source:
        return evaluate(handle, tokenizer, task, source, generation, records_path=records_path,
                        progress=progress)


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    """Write the summary JSON (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
