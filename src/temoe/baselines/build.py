"""Build a pruning baseline's `MaskSource` (and Wanda's weight pruning) from calibration data,
with disk caches."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from temoe.baselines.calibration import (
    CalibrationConfig,
    calibration_key,
    calibration_sequences,
    collect_routing,
)
from temoe.baselines.frequency import expert_counts, frequency_masks
from temoe.baselines.random import RandomPerTokenMasks, random_static_masks
from temoe.baselines.reconstruction import reconstruction_masks
from temoe.baselines.wanda import wanda_pruned
from temoe.rollout.masks import BaseSource, MaskFnSource, MaskSource, StaticMaskSource

__all__ = ["BASELINES", "baseline_source"]

BASELINES = ("frequency", "reconstruction", "random", "wanda")
RANDOM_VARIANTS = ("per-token", "fixed")


@contextmanager
def baseline_source(name: str, handle, tokenizer, k_hat: int, *, calibration: CalibrationConfig | None = None,
                    cache_dir: str | Path | None = None, seed: int = 42, random_variant: str = "per-token",
                    reconstruction_tokens: int | None = 4096,
                    progress: Callable[[str, int, int], None] | None = None) -> Iterator[MaskSource]:
    """Yield the `MaskSource` of baseline `name` at k̂ = `k_hat` (Wanda: with the experts pruned
inside the block).

    frequency / reconstruction masks are cached in `cache_dir` as JSON keyed by baseline, k̂ and the
    calibration key (model + settings + prompts); the calibration sequences themselves are cached there too.
    random: `random_variant` "per-token" (the paper) or "fixed" (one random subset per layer),
    seeded by `seed`.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    L, N = handle.num_layers, handle.num_experts
    if not handle.top_k <= k_hat <= N:
        raise ValueError(f"k_hat={k_hat} out of range; need k̃ = {handle.top_k} <= k_hat <= N = {N}")
    if name == "random":
        if random_variant not in RANDOM_VARIANTS:
            raise ValueError(f"unknown random variant {random_variant!r}; "
                             f"valid: {', '.join(RANDOM_VARIANTS)}")
        gen = torch.Generator().manual_seed(seed)
        if random_variant == "fixed":
            yield StaticMaskSource(random_static_masks(L, N, k_hat, gen), name="random-fixed")
        else:
            yield MaskFnSource(RandomPerTokenMasks(L, N, k_hat, gen), name="random", k_hat=k_hat)
        return
    calibration = calibration or CalibrationConfig()
    report = (lambda done, total: progress("calibration", done, total)) if progress else None
    sequences = calibration_sequences(handle, tokenizer, calibration, cache_dir, progress=report)
    if name == "wanda":
        with wanda_pruned(handle, sequences, k_hat, calibration.batch_size) as info:
            yield BaseSource(k_hat=k_hat, name="wanda", extra={"wanda": info})
        return
    cache = None
    if cache_dir is not None:
        key = calibration_key(handle, calibration)
        extra = f"-t{reconstruction_tokens}" if name == "reconstruction" else ""
        cache = Path(cache_dir) / f"{name}-k{k_hat}{extra}-{key}.json"
    if cache is not None and cache.exists():
        masks = torch.tensor(json.loads(cache.read_text())["masks"], dtype=torch.bool)
    else:
        stats = collect_routing(handle, sequences, calibration.batch_size,
                                hidden_states=name == "reconstruction")
        if name == "frequency":
            masks = frequency_masks(expert_counts(stats, N), k_hat)
        else:
            gen = torch.Generator().manual_seed(seed)
            masks = reconstruction_masks(handle, stats.hidden, k_hat, reconstruction_tokens, gen)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"baseline": name, "k_hat": k_hat, "masks": masks.tolist()}))
    yield StaticMaskSource(masks, name=name)
