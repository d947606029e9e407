"""The methods a user would pick instead of temporal extension, as `MaskSource`s for the shared evaluator:
expert caches (lru, lfu), cache-conditional routing (cache-prior), REAP pruning (reap) and the demand rule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from temoe.baselines.cache_prior import CachePriorSource
from temoe.baselines.calibration import CalibrationConfig, calibration_key, calibration_sequences
from temoe.baselines.demand import DemandSource
from temoe.baselines.lru import CacheSource
from temoe.baselines.reap import reap_masks
from temoe.eval.masks import MaskSource, StaticMaskSource

__all__ = ["PEER_METHODS", "peer_source"]

PEER_METHODS = ("lru", "lfu", "cache-prior", "reap", "demand")


@contextmanager
def peer_source(name: str, handle, tokenizer, k_hat: int, *, budget: int | None = None,
                strength: float = 0.0, threshold: float = 0.5, decay: float = 0.9,
                calibration: CalibrationConfig | None = None,
                cache_dir: str | Path | None = None) -> Iterator[MaskSource]:
    """Yield the `MaskSource` of peer method `name` at k̂ = `k_hat`.

    budget: cache slots per layer of lru / lfu / cache-prior (default k̂). strength: cache-prior's λ.
    threshold, decay: the demand rule's τ and moving-average decay. reap calibrates on `calibration`, its
    masks cached in `cache_dir` as `reap-k<K>-<calibration key>.json`.
    """
    if name not in PEER_METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(PEER_METHODS)}")
    N = handle.num_experts
    if not handle.top_k <= k_hat <= N:
        raise ValueError(f"k_hat={k_hat} out of range; need k̃ = {handle.top_k} <= k_hat <= N = {N}")
    if name in ("lru", "lfu"):
        yield CacheSource(k_hat, name)
    elif name == "cache-prior":
        yield CachePriorSource(handle, k_hat, budget or k_hat, strength)
    elif name == "demand":
        yield DemandSource(handle, k_hat, threshold, decay)
    else:
        yield StaticMaskSource(_reap(handle, tokenizer, k_hat, calibration or CalibrationConfig(), cache_dir),
                               name="reap")


def _reap(handle, tokenizer, k_hat: int, calibration: CalibrationConfig, cache_dir) -> torch.Tensor:
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"reap-k{k_hat}-{calibration_key(handle, calibration)}.json"
        if cache.exists():
            return torch.tensor(json.loads(cache.read_text())["masks"], dtype=torch.bool)
    sequences = calibration_sequences(handle, tokenizer, calibration, cache_dir)
    masks = reap_masks(handle, sequences, k_hat, calibration.batch_size)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"baseline": "reap", "k_hat": k_hat, "masks": masks.tolist()}))
    return masks
