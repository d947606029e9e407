"""The decode cost model against the serving engine's own CPU runs.

    PYTHONPATH=src python benchmarks/bench_cost_model.py --threads 1 --repeats 3

Each repeat measures the `local` hardware profile (copy probe + the model's full-residency decode time, which
also warms the model up), then runs the serving ladder of `temoe bench serve --model tiny-random:gpt_oss
--device cpu` in-process (`temoe.serve.bench.run_ladder`, the function that command calls): full residency,
an LRU cache, synthetic option policies and the router used as an option policy. For every rung the cost
model predicts decode ms/token from the local profile and the rung's measured critical and background loads
per token; the table compares medians over repeats (error = predicted / measured − 1; target |error| ≤ 25 %)
and also the model's stall and copy times against the engine's measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

import temoe
from temoe.cost import predict
from temoe.cost.local import measure_local_profile
from temoe.serve.bench import run_ladder
from temoe.serve.models import load_for_serving

MODEL = "tiny-random:gpt_oss"
TARGET = 0.25


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compare(row: dict, profile) -> dict:
    """Measured vs predicted for one ladder row (times in ms per decoded token)."""
    tokens = row["serve/decode_tokens"]
    pred = predict(
        profile,
        critical_per_token=row["serve/loads_critical"] / tokens,
        background_per_token=row["serve/loads_background"] / tokens,
    )
    return {
        "rung": row["rung"],
        "measured_ms": 1e3 / row["serve/decode_tokens_per_s"],
        "predicted_ms": pred.ms_per_token,
        "critical_per_token": pred.critical_per_token,
        "background_per_token": pred.background_per_token,
        "measured_stall_ms": row["serve/stall_ms_per_token"],
        "predicted_stall_ms": pred.stall_ms,
        "measured_copy_ms": row["serve/copy_ms_per_token"],
        "predicted_copy_ms": pred.stall_ms + pred.background_copy_ms,
    }


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model, tok = load_for_serving(MODEL, device)
    handle = temoe.wrap(model)
    repeats, profiles = [], []
    load_before = os.getloadavg()
    for r in range(args.repeats):
        profile = measure_local_profile(handle, tok, new_tokens=args.max_new_tokens)
        ladder = run_ladder(
            handle, tok, max_new_tokens=args.max_new_tokens, device=device, seed=args.seed + r
        )
        profiles.append(profile)
        repeats.append([_compare(row, profile) for row in ladder["rows"]])
        print(f"repeat {r + 1}/{args.repeats}: local decode {profile.compute_ms:.3f} ms/token", flush=True)
    rows = []
    for rung in zip(*repeats):
        med = {k: statistics.median(x[k] for x in rung) for k in rung[0] if k != "rung"}
        errors = [x["predicted_ms"] / x["measured_ms"] - 1 for x in rung]
        med["error"] = med["predicted_ms"] / med["measured_ms"] - 1
        rows.append({"rung": rung[0]["rung"], **med, "error_min": min(errors), "error_max": max(errors)})
    return {
        "command": (
            f"temoe bench serve --model {MODEL} --device cpu --max-new-tokens {args.max_new_tokens} "
            f"(in-process run_ladder, {args.repeats} repeats, after measuring the local profile)"
        ),
        "hardware": (
            f"{_cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{args.threads} thread(s), load average {load_before[0]:.1f} before / "
            f"{os.getloadavg()[0]:.1f} after"
        ),
        "local_profile": {
            "compute_ms": [p.compute_ms for p in profiles],
            "load_ms": [p.load_ms for p in profiles],
            "h2d_bandwidth_gbps": [p.h2d_bandwidth_gbps for p in profiles],
            "copy_overhead_ms": [p.copy_overhead_ms for p in profiles],
            "expert_bytes": profiles[0].expert_bytes,
            "background_overlap": profiles[0].background_overlap,
        },
        "rows": rows,
    }


def format_table(result: dict) -> str:
    head = (
        f"{'rung':42s} {'measured ms/tok':>15s} {'predicted':>9s} {'error':>7s} {'range':>15s} "
        f"{'crit/tok':>8s} {'bg/tok':>6s} {'stall meas/pred ms':>19s} {'copy meas/pred ms':>18s}"
    )
    lines = [head]
    for r in result["rows"]:
        ok = "" if abs(r["error"]) <= TARGET else "  MISS"
        lines.append(
            f"{r['rung']:42s} {r['measured_ms']:15.3f} {r['predicted_ms']:9.3f} {r['error']:+7.1%} "
            f"{r['error_min']:+6.1%}..{r['error_max']:+6.1%} {r['critical_per_token']:8.2f} "
            f"{r['background_per_token']:6.2f} {r['measured_stall_ms']:9.4f}/{r['predicted_stall_ms']:.4f} "
            f"{r['measured_copy_ms']:9.4f}/{r['predicted_copy_ms']:.4f}{ok}"
        )
    lp = result["local_profile"]
    lines += [
        f"command: {result['command']}",
        f"hardware: {result['hardware']}",
        f"local profile: compute {', '.join(f'{x:.3f}' for x in lp['compute_ms'])} ms/token; one expert load "
        f"({lp['expert_bytes']} B) {', '.join(f'{x * 1e3:.1f}' for x in lp['load_ms'])} us; "
        f"background overlap {lp['background_overlap']:g}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result to this new JSON file (an existing file is kept)")
    args = parser.parse_args()
    if args.json and Path(args.json).exists():
        parser.error(f"--json {args.json} exists; choose a new path")
    result = run(args)
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
