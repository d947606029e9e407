"""Profile the offloading engine's decode path per rung (full residency, LRU, synthetic options) with
torch.profiler: ops per MoE layer per decoded token, CPU and device time per token, and the ops the option
path adds over full residency.

    PYTHONPATH=src python benchmarks/profile_engine.py --model tiny-random:gpt_oss --device cpu --threads 1 \
        --out runs/profile_engine
    PYTHONPATH=src python benchmarks/profile_engine.py --model gpt-oss-20b-random --device cuda --k-hat 16 \
        --out runs/profile_engine --ladder

"Ops" are, on CPU, the dispatched aten ops not nested in another aten op (what would be a launch on a GPU at
batch 1) and, on CUDA, the device kernels and copies. "MoE aten ops" are aten ops issued inside an MoE block
(router, mask function, masked routing, the engine's planning, the expert computation). Wall and process CPU
ms per token are medians over decode steps without the profiler (median of `--repeats` runs); device ms per
token sums device activity in the profiled run. Writes OUT/profile.json and OUT/trace_<rung>.json (chrome
traces); with `--ladder` also runs the serving ladder (`temoe bench serve`) and writes OUT/ladder.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps
from temoe.serve.synthetic import SyntheticOptions

MOE_SCOPE = "temoe::moe_block"
# Aten ops that (usually) only make a view, allocate or read metadata: no kernel on a GPU.
VIEW_OPS = {f"aten::{n}" for n in (
    "view", "reshape", "select", "slice", "expand", "unsqueeze", "squeeze", "transpose", "permute", "t",
    "detach", "alias", "as_strided", "resolve_conj", "resolve_neg", "unbind", "split", "chunk", "narrow",
    "empty", "lift_fresh", "_unsafe_view", "view_as", "expand_as", "flatten", "unflatten", "movedim",
)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-random:gpt_oss")
    p.add_argument("--num-layers", type=int, default=None, help="depth of a random model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--k-hat", type=int, default=None, help="option size and LRU budget (default N/2)")
    p.add_argument("--switch-rate", type=float, default=0.05)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4, help="decode steps before measuring")
    p.add_argument("--tokens", type=int, default=16, help="measured decode steps per run")
    p.add_argument("--repeats", type=int, default=5, help="unprofiled timing runs per rung")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rungs", nargs="+", default=["full", "lru", "option"], choices=["full", "lru", "option"])
    p.add_argument("--ladder", action="store_true", help="also run the serving ladder (k̂ = N/4, N/2)")
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="check the arguments and the output directory only")
    return p.parse_args(argv)


def _moe_scopes(handle) -> list:
    """Forward hooks that open a profiler scope around every MoE block; returns the hook handles."""
    hooks = []
    for block in handle.blocks:
        def pre(module, args):
            module._temoe_scope = record_function(MOE_SCOPE)
            module._temoe_scope.__enter__()

        def post(module, args, output):
            module._temoe_scope.__exit__(None, None, None)

        hooks += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    return hooks


def _masks_factory(handle, rung: str, k_hat: int, switch_rate: float):
    if rung != "option":
        return lambda: None
    syn = SyntheticOptions(handle, k_hat, rule="random", switch_rate=switch_rate, seed=0)
    return syn.mask_fn


def _decode(engine, ids, masks, n_warm: int, n_tokens: int, sync, on_measured=None) -> list[float]:
    """Prefill + `n_warm` decode steps, then `n_tokens` measured steps; returns their (wall, process CPU)
    times (s).
    `on_measured` is a context manager factory entered around the measured steps (the profiler)."""
    steps = decode_steps(engine, ids, 1 + n_warm + n_tokens, masks=masks)
    try:
        for _ in range(1 + n_warm):
            next(steps)
        sync()
        times = []
        ctx = on_measured() if on_measured else None
        if ctx is not None:
            ctx.__enter__()
        try:
            for _ in range(n_tokens):
                t0, c0 = time.perf_counter(), time.process_time()
                next(steps)
                sync()
                times.append((time.perf_counter() - t0, time.process_time() - c0))
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
    finally:
        steps.close()
        engine.release(0)
    return times


def _top_level(events) -> list:
    """Aten ops not nested in another aten op (one dispatch each: a launch at batch 1 on a GPU)."""
    out = []
    for e in events:
        if not e.name.startswith("aten::") or e.device_type != torch.autograd.DeviceType.CPU:
            continue
        parent, nested = e.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("aten::"):
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            out.append(e)
    return out


def _in_moe(e) -> bool:
    parent = e.cpu_parent
    while parent is not None:
        if parent.name == MOE_SCOPE:
            return True
        parent = parent.cpu_parent
    return False


def summarize(events, n_tokens: int, n_layers: int, top: int = 15) -> dict:
    """Per-token op counts and times from profiler events (the profiled run's `n_tokens` decode steps)."""
    ops = _top_level(events)
    device = [e for e in events if e.device_type != torch.autograd.DeviceType.CPU]
    counted = device if device else ops
    moe = [e for e in ops if _in_moe(e)]
    count = Counter(e.name for e in counted)
    time_us = Counter()
    for e in counted:
        time_us[e.name] += e.time_range.elapsed_us() if device else e.cpu_time_total
    return {
        "ops_per_token": len(counted) / n_tokens,
        "ops_per_layer_token": len(counted) / n_tokens / n_layers,
        "aten_ops_per_token": len(ops) / n_tokens,
        "moe_aten_ops_per_layer_token": len(moe) / n_tokens / n_layers,
        "moe_compute_ops_per_layer_token": sum(e.name not in VIEW_OPS for e in moe) / n_tokens / n_layers,
        "device_ms_per_token": (
            sum(e.time_range.elapsed_us() for e in device) / 1e3 / n_tokens if device else None
        ),
        "op_kind": "device kernels and copies" if device else "top-level aten ops",
        "top_by_count": [[n, c / n_tokens] for n, c in count.most_common(top)],
        "top_by_time_us": [[n, t / n_tokens] for n, t in time_us.most_common(top)],
        "count_per_token": {n: c / n_tokens for n, c in count.items()},
        "moe_count_per_layer_token": {
            n: c / n_tokens / n_layers for n, c in Counter(e.name for e in moe).items()
        },
    }


def profile_rung(handle, rung: str, args, store, device, out: Path) -> tuple[dict, object]:
    N = handle.num_experts
    budget = None if rung == "full" else args.k_hat
    policy = make_policy(rung, handle.num_layers, N, expert_budget=budget)
    engine = OffloadEngine(handle, policy, device=device, store=store)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    ids = torch.randint(3, 100, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    factory = _masks_factory(handle, rung, args.k_hat, args.switch_rate)
    try:
        medians, cpu_medians = [], []
        for _ in range(args.repeats):
            wall, cpu = zip(*_decode(engine, ids, factory(), args.warmup, args.tokens, sync))
            medians.append(statistics.median(wall))
            cpu_medians.append(statistics.median(cpu))
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        holder = {}

        def profiler():
            holder["prof"] = profile(activities=activities)
            return holder["prof"]

        hooks = _moe_scopes(handle)
        try:
            _decode(engine, ids, factory(), args.warmup, args.tokens, sync, profiler)
        finally:
            for h in hooks:
                h.remove()
        prof = holder["prof"]
        prof.export_chrome_trace(str(out / f"trace_{rung}.json"))
        row = summarize(prof.events(), args.tokens, handle.num_layers)
        row["wall_ms_per_token_median"] = statistics.median(medians) * 1e3
        row["wall_ms_per_token_runs"] = [m * 1e3 for m in medians]
        row["process_cpu_ms_per_token_median"] = statistics.median(cpu_medians) * 1e3
        row["tokens_per_s"] = 1.0 / statistics.median(medians)
        row["engine"] = {k: v for k, v in engine.summary().items() if isinstance(v, (int, float))}
    finally:
        engine.detach(restore_weights=False)
    return row, engine.store


def _table(rows: dict, n_layers: int) -> str:
    lines = ["| rung | ops / layer / token | MoE aten ops / layer / token | MoE non-view aten ops | "
             "wall ms / token | process CPU ms / token | device ms / token | tok/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rung, r in rows.items():
        dev = "–" if r["device_ms_per_token"] is None else f"{r['device_ms_per_token']:.2f}"
        cells = [f"{r['ops_per_layer_token']:.1f}", f"{r['moe_aten_ops_per_layer_token']:.1f}",
                 f"{r['moe_compute_ops_per_layer_token']:.1f}",
                 f"{r['wall_ms_per_token_median']:.2f}", f"{r['process_cpu_ms_per_token_median']:.2f}", dev,
                 f"{r['tokens_per_s']:.1f}"]
        lines.append(f"| {rung} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _diff(rows: dict, rung: str, top: int = 15) -> str:
    """The ops `rung` issues per token beyond full residency, most first."""
    base = rows["full"]["count_per_token"]
    extra = {n: c - base.get(n, 0.0) for n, c in rows[rung]["count_per_token"].items()}
    ranked = sorted(extra.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"  {c:+8.2f}  {n}" for n, c in ranked if c > 0)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"output directory {out} is not empty; pass a new --out", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"dry run: would profile {args.rungs} of {args.model} into {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_device = device if args.model.startswith("gpt-oss-20b-random") else None
    model, tokenizer = temoe.load_model(args.model, device=on_device, num_layers=args.num_layers)
    handle = temoe.wrap(model)
    args.k_hat = args.k_hat or max(handle.top_k, handle.num_experts // 2)
    rows, store = {}, None
    for rung in args.rungs:
        rows[rung], store = profile_rung(handle, rung, args, store, device, out)
    env = {"model": args.model, "device": str(device), "torch": torch.__version__, "threads":
           torch.get_num_threads(), "num_layers": handle.num_layers, "num_experts": handle.num_experts,
           "k_hat": args.k_hat, "switch_rate": args.switch_rate, "tokens": args.tokens,
           "repeats": args.repeats,
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    print(json.dumps(env))
    print(_table(rows, handle.num_layers))
    for rung in rows:
        print(f"\n{rung}: top ops per token by count ({rows[rung]['op_kind']})")
        print("\n".join(f"  {c:8.2f}  {n}" for n, c in rows[rung]["top_by_count"]))
        print(f"{rung}: top ops per token by time (us)")
        print("\n".join(f"  {t:8.1f}  {n}" for n, t in rows[rung]["top_by_time_us"]))
        if rung != "full" and "full" in rows:
            print(f"{rung}: ops per token beyond full residency\n{_diff(rows, rung)}")
    result = {"environment": env, "rows": rows}
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'profile.json'}")
    if args.ladder:
        from temoe.serve.bench import format_table, run_ladder
        from temoe.serve.engine import restore_experts

        restore_experts(handle, store, device)
        del store  # the ladder packs its own host store: free this one first (38 GB for gpt-oss-20b)
        gc.collect()
        ks = sorted({max(handle.top_k, handle.num_experts // 4), args.k_hat})
        ladder = run_ladder(handle, tokenizer, k_hats=ks, max_new_tokens=32, switch_rate=args.switch_rate,
                            device=device)
        (out / "ladder.json").write_text(json.dumps(ladder, indent=1, default=str))
        print(format_table(ladder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
