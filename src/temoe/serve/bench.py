"""The serving ladder (`temoe bench serve`): full residency, an LRU cache at the k̂_max budget, and the
temporally extended engine at each k̂, on the same model, prompts and device; one row of `serve/*` metrics per
rung with the PCIe lower bound (decode bytes moved / H2D bandwidth) beside the measured copy time.
"""

from __future__ import annotations

import gc
import time

import torch

from temoe.serve.engine import OffloadEngine, make_policy, restore_experts
from temoe.serve.generate import decode_steps
from temoe.serve.stats import _percentile
from temoe.serve.store import measure_h2d_bandwidth

DEFAULT_PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short Python function that reverses a string.",
    "What is 17 times 23? Show your steps.",
    "List three uses of a binary search tree.",
]


def _run_rung(
    handle,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    *,
    mode: str,
    budget: int | None,
    masks_factory,
    device,
    sim_bw: float | None,
    measured_bw: float | None,
    store=None,
) -> tuple[dict, object]:
    policy = make_policy(mode, handle.num_layers, handle.num_experts, expert_budget=budget)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    engine = OffloadEngine(handle, policy, device=device, sim_bandwidth_gbps=sim_bw, store=store)
    gaps, ttfts, decode_time, decode_tokens = [], [], 0.0, 0
    try:
        for n, prompt in enumerate(prompts):
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            masks, begin = masks_factory() if masks_factory else (None, None)
            start = time.perf_counter()
            times = []
            for _ in decode_steps(engine, ids, max_new_tokens, masks=masks, stream=n, on_prefill_done=begin):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter())
            engine.release(n)
            ttfts.append(times[0] - start)
            gaps += [b - a for a, b in zip(times, times[1:])]
            decode_time += times[-1] - times[0]
            decode_tokens += len(times) - 1
        row = {
            "serve/decode_tokens_per_s": decode_tokens / decode_time if decode_time > 0 else None,
            "serve/tpot_ms_p50": _percentile(gaps, 50) * 1e3,
            "serve/tpot_ms_p90": _percentile(gaps, 90) * 1e3,
            "serve/tpot_ms_p99": _percentile(gaps, 99) * 1e3,
            "serve/ttft_ms_mean": sum(ttfts) / len(ttfts) * 1e3,
            "serve/decode_tokens": decode_tokens,
        }
        row.update(engine.summary(measured_bw))
        row.update(engine.memory_report(engine.last_cache))
    finally:
        engine.detach(restore_weights=False)
    store = engine.store
    del engine  # free this rung's slot banks before the next rung allocates its own
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return row, store


def run_ladder(
    handle,
    tokenizer,
    *,
    prompts: list[str] | None = None,
    k_hats: list[int] | None = None,
    max_new_tokens: int = 32,
    switch_rate: float = 0.05,
    controller=None,
    device=None,
    sim_bandwidth_gbps: float = 54.0,
    seed: int = 0,
) -> dict:
    """Run the ladder and return {"environment": ..., "rows": [...]}.

    k_hats default to N/4 and N/2 (8 and 16 for gpt-oss-20b). Without a `controller` the option rungs use a
    synthetic option policy at `switch_rate` (labelled as such), plus the router-as-option-policy rung at the
    largest k̂. On CPU the device tier is simulated and the PCIe bound uses `sim_bandwidth_gbps` (a pinned
    host -> device bandwidth, GB/s); on CUDA the bandwidth is measured first.
    """
    from temoe.serve.synthetic import SyntheticOptions

    N = handle.num_experts
    k_hats = sorted(k_hats or [max(handle.top_k, N // 4), max(handle.top_k, N // 2)])
    for k in k_hats:
        if not handle.top_k <= k <= N:
            raise ValueError(f"k̂={k} must be in [top_k={handle.top_k}, N={N}]")
    if controller is not None and len(k_hats) != 1:
        k_hats = [controller.k_hat]
    device = torch.device(device) if device is not None else next(handle.model.parameters()).device
    prompts = prompts or DEFAULT_PROMPTS
    measured = measure_h2d_bandwidth(device)
    sim = None if measured else sim_bandwidth_gbps
    common = dict(device=device, sim_bw=sim, measured_bw=measured)
    rows = []
    store = None

    def add(label: str, mode: str, budget: int | None, factory, k_hat=None):
        nonlocal store
        row, store = _run_rung(
            handle,
            tokenizer,
            prompts,
            max_new_tokens,
            mode=mode,
            budget=budget,
            masks_factory=factory,
            store=store,
            **common,
        )
        rows.append({"rung": label, "mode": mode, "k_hat": k_hat, **row})

    add("full residency", "full", None, None)
    add(f"LRU cache, budget {max(k_hats)}", "lru", max(k_hats), None)
    for k in k_hats:
        if controller is not None:

            def factory(k=k):
                state = controller.new_state(1, mode="greedy")
                return controller.mask_fn(state), state.begin_generation

            add(f"trained controller k̂={k}", "option", k, factory, k)
        else:
            syn = SyntheticOptions(handle, k, rule="random", switch_rate=switch_rate, seed=seed)
            add(syn.label, "option", k, lambda syn=syn: (syn.mask_fn(), None), k)
    if controller is None:
        syn = SyntheticOptions(handle, max(k_hats), rule="router", seed=seed)
        add(syn.label, "option", max(k_hats), lambda: (syn.mask_fn(), None), max(k_hats))
    restore_experts(handle, store, device)
    full_tps = rows[0]["serve/decode_tokens_per_s"]
    full_vram = rows[0]["serve/vram_resident_expert_bytes"]
    for row in rows:
        tps = row["serve/decode_tokens_per_s"]
        row["serve/speed_vs_full"] = tps / full_tps if tps and full_tps else None
        row["serve/expert_vram_vs_full"] = row["serve/vram_resident_expert_bytes"] / full_vram
    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu (simulated device tier)",
        "torch": torch.__version__,
        "model_type": handle.model_type,
        "num_layers": handle.num_layers,
        "num_experts": N,
        "top_k": handle.top_k,
        "dtype": str(next(handle.model.parameters()).dtype),
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "h2d_bandwidth_gbps": measured or sim,
        "h2d_bandwidth_source": "measured (pinned, 256 MiB copies)"
        if measured
        else "simulated (no second memory tier on CPU)",
        "option_source": "trained controller"
        if controller is not None
        else f"synthetic (switch rate target {switch_rate:g}; no checkpoint given)",
    }
    return {"environment": env, "rows": rows}


def format_table(result: dict) -> str:
    """A plain-text table of the ladder."""
    cols = [
        ("rung", "rung", "{}"),
        ("tok/s", "serve/decode_tokens_per_s", "{:.1f}"),
        ("x full", "serve/speed_vs_full", "{:.2f}"),
        ("TPOT p50 ms", "serve/tpot_ms_p50", "{:.2f}"),
        ("p99 ms", "serve/tpot_ms_p99", "{:.2f}"),
        ("TTFT ms", "serve/ttft_ms_mean", "{:.1f}"),
        ("expert VRAM", "serve/expert_vram_vs_full", "{:.0%}"),
        ("loads/tok", "serve/loads_per_token", "{:.2f}"),
        ("MB/tok", "serve/bytes_per_token", "{:.3f}"),
        ("stall ms/tok", "serve/stall_ms_per_token", "{:.3f}"),
        ("copy ms/tok", "serve/copy_ms_per_token", "{:.3f}"),
        ("PCIe bound ms/tok", "serve/pcie_bound_ms_per_token", "{:.3f}"),
        ("hit rate", "serve/lru_hit_rate", "{:.2f}"),
        ("switch rate", "serve/switch_rate", "{:.3f}"),
    ]
    lines = []
    for row in result["rows"]:
        cells = []
        for _, key, fmt in cols:
            v = row.get(key)
            if key == "serve/bytes_per_token" and v is not None:
                v = v / 1e6
            cells.append("-" if v is None else fmt.format(v))
        lines.append(cells)
    widths = [max(len(h), *(len(r[j]) for r in lines)) for j, (h, _, _) in enumerate(cols)]
    out = ["  ".join(h.ljust(w) for (h, _, _), w in zip(cols, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
    env = result["environment"]
    out.append(
        f"device: {env['device_name']}; H2D bandwidth {env['h2d_bandwidth_gbps']:.1f} GB/s "
        f"({env['h2d_bandwidth_source']}); options: {env['option_source']}"
    )
    return "\n".join(out)
