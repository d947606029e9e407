"""One evaluation run end to end: a method name (base, a pruning baseline, a peer method, a trained
controller) -> its `MaskSource` -> `evaluate` -> summary JSON and records JSONL. Shared by `temoe eval` and
`temoe demo`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from temoe.baselines import baseline_source
from temoe.baselines.peers import PEER_METHODS, peer_source
from temoe.eval.runner import evaluate
from temoe.eval.tasks import Task
from temoe.inference import load_for_inference
from temoe.rollout.masks import BaseSource, ControllerSource, MaskSource
from temoe.rollout.runner import GenerationConfig

__all__ = ["load_controller", "evaluate_method", "method_source", "write_summary"]

METHODS = ("base", "frequency", "reconstruction", "random", "wanda", "controller")


def load_controller(model, checkpoint: str | Path):
    """`temoe.inference.load_for_inference`: (model with LoRA merged, handle, controller)."""
    return load_for_inference(model, checkpoint)


def evaluate_method(handle, tokenizer, task: Task, method: str, k_hat: int, *,
                    generation: GenerationConfig | None = None, records_path: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None, budget: int | None = None,
                    **source_options) -> tuple[dict[str, Any], list[dict]]:
    """Evaluate `method` at k̂ = `k_hat` on `task`; returns (summary, records).

    `budget`: expert slots per layer for `loads_per_token` (default k̂) and for the caches of lru / lfu /
    cache-prior. `source_options` go to `method_source`.
    """
    generation = generation or GenerationConfig()
    with method_source(handle, tokenizer, method, k_hat, seed=generation.seed, budget=budget,
                       **source_options) as source:
        return evaluate(handle, tokenizer, task, source, generation, records_path=records_path,
                        progress=progress, budget=budget)


@contextmanager
def method_source(handle, tokenizer, method: str, k_hat: int, *, seed: int = 42, controller=None,
                  eta: float | None = None, controller_mode: str = "sample",
                  selection_mode: str | None = None, calibration=None, cache_dir: str | Path | None = None,
                  random_variant: str = "per-token", budget: int | None = None,
                  peer_options: dict[str, Any] | None = None) -> Iterator[MaskSource]:
    """Yield the `MaskSource` of `method` at k̂ = `k_hat`.

    method: one of `METHODS` or `temoe.baselines.peers.PEER_METHODS`. `peer_options`: the peer method's
    knobs (`strength` of cache-prior, `threshold` / `decay` of demand, `distill` / `distill_mask` of the
    trained ones; `temoe.baselines.peers.peer_source`), `budget` its cache slots. "controller" needs
    `controller` (from `load_controller`, whose handle must be the `handle` passed here); `selection_mode`
    ("sample"/"greedy", default: as `controller_mode`) is how it picks an option at a termination.
    Baselines calibrate on `calibration` (a `CalibrationConfig`), cached in `cache_dir`. The controller's
    draws and the random baseline use generators seeded with `seed`.
    """
    if method not in METHODS + PEER_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS + PEER_METHODS)}")
    if method in PEER_METHODS:
        with peer_source(method, handle, tokenizer, k_hat, budget=budget, calibration=calibration,
                         cache_dir=cache_dir, **(peer_options or {})) as source:
            yield source
    elif method == "base":
        yield BaseSource(k_hat)
    elif method == "controller":
        if controller is None:
            raise ValueError("method 'controller' needs a trained controller (CLI: --checkpoint DIR)")
        if controller.k_hat != k_hat:
            raise ValueError(f"the checkpoint's controller was trained with k̂ = {controller.k_hat}, "
                             f"but k_hat={k_hat} was requested")
        gen = torch.Generator(device=next(controller.parameters()).device).manual_seed(seed)
        yield ControllerSource(controller, gen, mode=controller_mode, eta=eta, selection_mode=selection_mode)
    else:
        with baseline_source(method, handle, tokenizer, k_hat, calibration=calibration, cache_dir=cache_dir,
                             seed=seed, random_variant=random_variant) as source:
            yield source


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    """Write the summary JSON (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
