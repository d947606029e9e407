"""The `local` hardware profile, measured on the running machine: the engine's host -> device bandwidth probe,
the time of one expert-sized copy, the model's own full-residency decode time and the serving engine's
per-layer overhead on each path (needs torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from statistics import median
from typing import Any

import torch
from transformers import DynamicCache

from temoe.cost.profiles import PATHS, HardwareProfile
from temoe.serve.engine import OffloadEngine, make_policy, restore_experts
from temoe.serve.generate import decode_steps
from temoe.serve.store import ExpertLayout, measure_h2d_bandwidth
from temoe.serve.synthetic import SyntheticOptions

_PROMPT = "Explain why the sky is blue in two sentences."


def _cpu_copy_probe(expert_bytes: int, copies: int, repeats: int) -> tuple[float, float]:
    """(GB/s of one 64 MiB host copy, ms per expert-row copy) on CPU, where the engine's device tier is a
    second host tensor and one expert load is one row `copy_` (temoe.serve.store.ExpertMover)."""
    big_src, big_dst = torch.ones(64 << 20, dtype=torch.uint8), torch.empty(64 << 20, dtype=torch.uint8)
    src, dst = (
        torch.ones(copies, expert_bytes, dtype=torch.uint8),
        torch.empty(copies, expert_bytes, dtype=torch.uint8),
    )
    big, rows = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        big_dst.copy_(big_src)
        big.append(time.perf_counter() - t0)
        pairs = list(zip(dst, src))  # row views made outside the timed loop, as the engine does
        t0 = time.perf_counter()
        for d, s in pairs:
            d.copy_(s)
        rows.append((time.perf_counter() - t0) / copies)
    return big_src.numel() / median(big) / 1e9, median(rows) * 1e3


def _cuda_copy_probe(
    device: torch.device, expert_bytes: int, copies: int, repeats: int
) -> tuple[float, float]:
    """(GB/s from the engine's probe, ms per pinned expert-row copy by CUDA events) on a GPU."""
    bandwidth = measure_h2d_bandwidth(device)
    src = torch.ones(copies, expert_bytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(copies, expert_bytes, dtype=torch.uint8, device=device)
    pairs, times = list(zip(dst, src)), []
    for _ in range(repeats + 1):  # the first pass warms up
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for d, s in pairs:
            d.copy_(s, non_blocking=True)
        b.record()
        torch.cuda.synchronize(device)
        times.append(a.elapsed_time(b) / copies)
    return bandwidth, median(times[1:])


def _fit_copy(nbytes: int, bandwidth: float, per_copy_ms: float) -> tuple[float, float, str]:
    """(bandwidth, overhead ms, note) so that one expert load takes exactly the measured `per_copy_ms`.

    A copy slower than bytes / bandwidth leaves a fixed overhead; a faster one (small rows served from CPU
    caches beat a large copy's bandwidth) sets the bandwidth to bytes / per-copy time with no overhead.
    """
    transfer_ms = nbytes / (bandwidth * 1e9) * 1e3
    if per_copy_ms >= transfer_ms:
        return bandwidth, per_copy_ms - transfer_ms, ""
    note = f"; an expert-sized copy was faster: bandwidth = expert_bytes / its time ({per_copy_ms:.4g} ms)"
    return nbytes / (per_copy_ms * 1e-3) / 1e9, 0.0, note


def decode_ms_per_token(
    model, input_ids: torch.Tensor, new_tokens: int, repeats: int, context: Callable[[], Any] | None = None
) -> float:
    """Median over `repeats` of the mean time of one cached greedy decode step (ms), after one warm-up run.

    input_ids (1, S). Every expert resident: the model as loaded, no offloading engine attached. context: a
    fresh context manager per run around all its forward calls (e.g. `lambda: handle.restrict(mask_fn())` to
    time a method's routing masks); None = the plain model.
    """
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    means = []
    for run in range(repeats + 1):
        cache, x = DynamicCache(config=model.config), input_ids.to(device)
        with torch.inference_mode(), context() if context is not None else nullcontext():
            logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1]  # prefill
            x = logits.argmax(-1, keepdim=True)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1]  # (1, V)
                x = logits.argmax(-1, keepdim=True)
            sync(device)
        if run:  # run 0 warms up
            means.append((time.perf_counter() - t0) / new_tokens * 1e3)
    return median(means)


def _engine_decode_ms(engine, input_ids: torch.Tensor, new_tokens: int, masks) -> float:
    """Mean ms of one decode step through `engine` (prefill excluded), minus its exposed copy time."""
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda *_: None)
    times = []
    for _ in decode_steps(engine, input_ids, new_tokens, masks=masks):
        sync(engine.device)
        times.append(time.perf_counter())
    engine.release(0)
    copies = engine.summary()[
        "serve/stall_ms_per_token" if engine.device.type == "cuda" else "serve/copy_ms_per_token"
    ]
    return (times[-1] - times[0]) / (len(times) - 1) * 1e3 - copies


def path_decode_ms(handle, input_ids: torch.Tensor, new_tokens: int, repeats: int) -> dict[str, float]:
    """Serving path (`PATHS`) -> median over `repeats` of the engine's decode ms/token on it with every expert
    resident and no switches, its copy time taken out, after one warm-up run per path.

    input_ids (1, S). full: the engine's full residency; cache: an LRU cache of N slots; option: N slots with
    an option of all N experts that never switches (the option path's masking and bookkeeping, no loads)."""
    L, N = handle.num_layers, handle.num_experts
    device = next(handle.model.parameters()).device
    options = SyntheticOptions(handle, N, rule="random", switch_rate=0.0)
    setups = {
        "full": ("full", lambda: None),
        "cache": ("lru", lambda: None),
        "option": ("option", options.mask_fn),
    }
    out, store = {}, None
    try:
        for path in PATHS:
            mode, masks = setups[path]
            engine = OffloadEngine(
                handle, make_policy(mode, L, N, expert_budget=N), device=device, store=store
            )
            try:
                runs = [_engine_decode_ms(engine, input_ids, new_tokens, masks()) for _ in range(repeats + 1)]
            finally:
                engine.detach(restore_weights=False)
                store = engine.store
            out[path] = median(runs[1:])  # run 0 warms up
    finally:
        if store is not None:
            restore_experts(handle, store, device)
    return out


def measure_local_profile(
    handle, tokenizer, *, prompt: str = _PROMPT, new_tokens: int = 32, repeats: int = 3, copies: int = 32
) -> HardwareProfile:
    """The `local` profile for `handle.model` (a `temoe.wrap` handle) on the device its weights are on.

    Call it before an offloading engine is attached (it decodes with every expert resident, then attaches and
    detaches an engine per serving path). expert_bytes is the engine's packed row (`ExpertLayout.row_bytes`),
    so predictions count the bytes the engine copies.
    """
    model = handle.model
    device = next(model.parameters()).device
    layout = ExpertLayout.of(handle.experts[0], handle.num_experts)
    nbytes = layout.row_bytes
    copies = max(2, min(copies, (512 << 20) // nbytes))  # at most ~512 MiB of probe buffers
    if device.type == "cuda":
        bandwidth, per_copy = _cuda_copy_probe(device, nbytes, copies, repeats)
        where = torch.cuda.get_device_name(device)
        bw_src = "temoe.serve.store.measure_h2d_bandwidth: pinned 256 MiB copies, CUDA events, median of 5"
        overlap, overlap_src = 1.0, "assumed: the engine issues background copies on a side stream"
    else:
        bandwidth, per_copy = _cpu_copy_probe(nbytes, copies, repeats)
        where = "cpu (simulated device tier)"
        bw_src = "one 64 MiB host copy, median of repeats (the engine's probe has no second tier on CPU)"
        overlap, overlap_src = 0.0, "the simulated device tier copies on the compute thread, after the layer"
    bandwidth, overhead, fit = _fit_copy(nbytes, bandwidth, per_copy)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    ms = decode_ms_per_token(model, ids, new_tokens, repeats)
    paths = path_decode_ms(handle, ids, new_tokens, repeats)
    overhead_ms = {p: max(0.0, t - ms) / handle.num_layers for p, t in paths.items()}
    stamp = f"measured on {where}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    return HardwareProfile(
        name="local",
        num_layers=handle.num_layers,
        expert_bytes=nbytes,
        h2d_bandwidth_gbps=bandwidth,
        copy_overhead_ms=overhead,
        decode_tok_s=1e3 / ms,
        background_overlap=overlap,
        method_overhead_ms=overhead_ms,
        dtype=str(layout.dtype).removeprefix("torch."),
        description=f"this machine ({where}) serving {handle.model_type}",
        model=handle.model_type,
        sources={
            "num_layers": f"the model's MoE layers (temoe.wrap): {handle.num_layers}",
            "expert_bytes": "the engine's packed expert row: temoe.serve.store.ExpertLayout.row_bytes",
            "h2d_bandwidth_gbps": f"{stamp}: {bw_src}{fit}",
            "copy_overhead_ms": f"{stamp}: median time of one of {copies} expert-row copies minus "
            "expert_bytes / bandwidth",
            "decode_tok_s": f"{stamp}: greedy cached decode of {new_tokens} tokens, all experts resident, "
            f"median of {repeats} runs after a warm-up",
            "background_overlap": overlap_src,
            "method_overhead_ms": f"{stamp}: per path, (the engine's decode ms/token with every expert "
            f"resident and no switches, its copy time taken out, median of {repeats} runs after a warm-up "
            f"- the plain decode) / {handle.num_layers} layers, floored at 0 "
            "(temoe.serve.local_profile.path_decode_ms)",
        },
    )
