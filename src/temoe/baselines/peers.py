"""The methods a user would pick instead of temporal extension, as `MaskSource`s for the shared evaluator:
expert caches (lru, lfu), cache-conditional routing (cache-prior), REAP pruning (reap), the demand rule, and
two trained ones: router fine-tuning for reuse (recency) and LoRA self-distillation under a fixed mask
(static-distill). The trained ones train in place on entry and restore the model on exit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from temoe.baselines.cache_prior import CachePriorSource
from temoe.baselines.calibration import (
    CalibrationConfig,
    calibration_key,
    calibration_sequences,
    collect_routing,
)
from temoe.baselines.demand import DemandSource
from temoe.baselines.distill import DistillConfig, train_recency, train_static_distill
from temoe.baselines.frequency import expert_counts, frequency_masks
from temoe.baselines.lru import CacheSource
from temoe.baselines.reap import reap_masks
from temoe.moe.lora import snapshot_routers
from temoe.rollout.masks import MaskSource, StaticMaskSource

__all__ = ["PEER_METHODS", "peer_source"]

PEER_METHODS = ("lru", "lfu", "cache-prior", "reap", "demand", "recency", "static-distill")
DISTILL_MASKS = ("frequency", "reap")


@contextmanager
def peer_source(name: str, handle, tokenizer, k_hat: int, *, budget: int | None = None,
                strength: float = 0.0, threshold: float = 0.5, decay: float = 0.9,
                distill: DistillConfig | None = None, distill_mask: str = "frequency",
                calibration: CalibrationConfig | None = None,
                cache_dir: str | Path | None = None) -> Iterator[MaskSource]:
    """Yield the `MaskSource` of peer method `name` at k̂ = `k_hat`.

    budget: cache slots per layer of lru / lfu / cache-prior / recency (default k̂). strength: cache-prior's
    λ. threshold, decay: the demand rule's τ and moving-average decay. distill: the training run of recency
    (its `recency` weight is the reward strength) and static-distill, on the calibration sequences;
    distill_mask: static-distill's fixed mask ("frequency" or "reap"). reap calibrates on `calibration`, its
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
    elif name == "reap":
        yield StaticMaskSource(_reap(handle, tokenizer, k_hat, calibration or CalibrationConfig(), cache_dir),
                               name="reap")
    else:
        calibration = calibration or CalibrationConfig()
        with _trained(name, handle, tokenizer, k_hat, distill or DistillConfig(), distill_mask, calibration,
                      cache_dir) as source:
            yield source


@contextmanager
def _trained(name, handle, tokenizer, k_hat, cfg: DistillConfig, distill_mask: str,
             calibration: CalibrationConfig, cache_dir) -> Iterator[MaskSource]:
    """Train recency / static-distill in place, yield its source, then restore the original weights."""
    if distill_mask not in DISTILL_MASKS:
        raise ValueError(f"unknown distillation mask {distill_mask!r}; valid: {', '.join(DISTILL_MASKS)}")
    sequences = calibration_sequences(handle, tokenizer, calibration, cache_dir)
    original = snapshot_routers(handle)
    flags = [(p, p.requires_grad) for p in handle.model.parameters()]
    if name == "recency":
        history = train_recency(handle, sequences, cfg)
        source = CacheSource(k_hat, "lru", name="recency",
                             extra={"recency": cfg.recency, "train": _last(history)})
        try:
            yield source
        finally:
            _restore(handle, original, flags)
        return
    if distill_mask == "reap":
        masks = _reap(handle, tokenizer, k_hat, calibration, cache_dir)
    else:
        masks = frequency_masks(expert_counts(collect_routing(handle, sequences, calibration.batch_size),
                                              handle.num_experts), k_hat)
    peft_model, history = train_static_distill(handle, sequences, masks, cfg)
    source = StaticMaskSource(masks, name="static-distill",
                              extra={"distill_mask": distill_mask, "train": _last(history)})
    try:
        yield source
    finally:
        peft_model.unload()
        _restore(handle, original, flags)


def _restore(handle, weights, flags) -> None:
    """Put the router parameter values in `weights` and the requires_grad flags back for good."""
    with torch.no_grad():
        for router, values in zip(handle.routers, weights, strict=True):
            for n, p in router.named_parameters():
                p.copy_(values[n])
    for p, flag in flags:
        p.requires_grad_(flag)


def _last(history: list[dict]) -> dict:
    return history[-1] if history else {}


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
