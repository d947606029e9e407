"""The decode cost model against the serving engine's own CPU runs.

    PYTHONPATH=src python benchmarks/bench_cost_model.py --threads 1 --repeats 9

Each repeat does the same work: it measures the `local` hardware profile (copy probe, the model's
full-residency decode time and the engine's per-layer overhead on the full, cache and option paths with
every expert resident; the first repeat also warms the model up), then runs the serving ladder of `temoe
bench serve --model tiny-random:gpt_oss --device cpu` in-process (`temoe.serve.bench.run_ladder`, the
function that command calls): full residency, an LRU cache, synthetic option policies and the router used
as an option policy.
Each rung's time is compared with the prediction from the same repeat's profile (measured seconds apart, so
both see the same contention on a shared machine); the table gives medians over repeats.

For every rung the cost model predicts decode ms/token from the local profile and the rung's measured
critical and background loads per token and its serving path (full, cache, option): "predicted" includes the
path's measured overhead (error = predicted / measured − 1; target |error| ≤ 25 %); "ideal" leaves it out
(the plain model's decode plus copies). It also compares the model's stall and copy times with the engine's.
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
from temoe.loading import load_model
from temoe.serve.bench import run_ladder
from temoe.serve.local_profile import measure_local_profile

MODEL = "tiny-random:gpt_oss"
PROMPT = "Explain why the sky is blue in two sentences."
TARGET = 0.25
PATH_OF_MODE = {"full": "full", "lru": "cache", "option": "option"}


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
        path=PATH_OF_MODE[row["mode"]],
    )
    measured = 1e3 / row["serve/decode_tokens_per_s"]
    return {
        "rung": row["rung"],
        "measured_ms": measured,
        "predicted_ms": pred.ms_per_token,
        "error": pred.ms_per_token / measured - 1,
        "method_ms": pred.method_ms,
        "ideal_ms": pred.ideal_ms_per_token,
        "error_ideal": pred.ideal_ms_per_token / measured - 1,
        "critical_per_token": pred.critical_per_token,
        "background_per_token": pred.background_per_token,
        "measured_stall_ms": row["serve/stall_ms_per_token"],
        "predicted_stall_ms": pred.stall_ms,
        "measured_copy_ms": row["serve/copy_ms_per_token"],
        "predicted_copy_ms": pred.stall_ms + pred.background_copy_ms,
    }


def _paired(ladders, profiles) -> list[dict]:
    """Per rung: each repeat's ladder row against the prediction from that repeat's profile (both measured
    within seconds of each other), then the median over repeats of every figure and of the per-repeat error,
    and the error's range. Every repeat does the same work, so the loads must agree."""
    rows = []
    for rung in zip(*ladders):
        loads = {(r["serve/loads_critical"], r["serve/loads_background"]) for r in rung}
        assert len(loads) == 1, f"repeats of {rung[0]['rung']!r} moved different loads: {loads}"
        pairs = [_compare(row, profile) for row, profile in zip(rung, profiles)]
        med = {k: statistics.median(p[k] for p in pairs) for k in pairs[0] if k != "rung"}
        med["error_range"] = (min(p["error"] for p in pairs), max(p["error"] for p in pairs))
        rows.append({"rung": rung[0]["rung"], **med})
    return rows


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model, tok = load_model(MODEL)
    handle = temoe.wrap(model)
    N, k = handle.num_experts, handle.top_k
    k_hats = sorted({max(k, N // 4), max(k, N // 2)})  # the ladder's default k̂ values
    profiles, ladders = [], []
    load_before = os.getloadavg()
    for r in range(args.repeats):
        profiles.append(
            measure_local_profile(
                handle, tok, prompt=PROMPT, new_tokens=args.max_new_tokens, repeats=args.profile_repeats
            )
        )
        ladder = run_ladder(
            handle,
            tok,
            k_hats=k_hats,
            max_new_tokens=args.max_new_tokens,
            switch_rate=args.switch_rate,
            device=device,
            seed=args.seed,
        )
        ladders.append(ladder["rows"])
        print(
            f"repeat {r + 1}/{args.repeats}: local decode {profiles[-1].compute_ms:.3f} ms/token", flush=True
        )
    rows = _paired(ladders, profiles)
    return {
        "command": (
            f"temoe bench serve --model {MODEL} --device cpu --max-new-tokens {args.max_new_tokens} "
            f"--k-hat {' '.join(map(str, k_hats))} --switch-rate-target {args.switch_rate:g} "
            f"--seed {args.seed} (in-process run_ladder; {args.repeats} repeats, medians; local profile "
            f"timings median of {args.profile_repeats})"
        ),
        "hardware": (
            f"{_cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{args.threads} thread(s), load average {load_before[0]:.1f} before / "
            f"{os.getloadavg()[0]:.1f} after"
        ),
        "local_profile": {
            "compute_ms": statistics.median(p.compute_ms for p in profiles),
            "compute_ms_repeats": [p.compute_ms for p in profiles],
            "load_ms": statistics.median(p.load_ms for p in profiles),
            "h2d_bandwidth_gbps": statistics.median(p.h2d_bandwidth_gbps for p in profiles),
            "copy_overhead_ms": statistics.median(p.copy_overhead_ms for p in profiles),
            "expert_bytes": profiles[0].expert_bytes,
            "background_overlap": profiles[0].background_overlap,
            "method_overhead_ms": {
                path: statistics.median(p.method_overhead_ms[path] for p in profiles)
                for path in profiles[0].method_overhead_ms
            },
        },
        "rows": rows,
    }


def format_table(result: dict) -> str:
    head = (
        f"{'rung':42s} {'measured ms/tok':>15s} {'predicted':>9s} {'error':>7s} {'range':>15s} "
        f"{'method ms':>9s} {'ideal':>8s} {'error':>7s} {'crit/tok':>8s} {'bg/tok':>6s} "
        f"{'stall meas/pred ms':>19s} {'copy meas/pred ms':>18s}"
    )
    lines = [head]
    for r in result["rows"]:
        miss, miss_ideal = ("!" if abs(r[k]) > TARGET else " " for k in ("error", "error_ideal"))
        lines.append(
            f"{r['rung']:42s} {r['measured_ms']:15.3f} {r['predicted_ms']:9.3f} {r['error']:+6.1%}{miss} "
            f"{r['error_range'][0]:+6.1%}..{r['error_range'][1]:+6.1%} "
            f"{r['method_ms']:9.3f} {r['ideal_ms']:8.3f} {r['error_ideal']:+6.1%}{miss_ideal} "
            f"{r['critical_per_token']:8.2f} {r['background_per_token']:6.2f} "
            f"{r['measured_stall_ms']:9.4f}/{r['predicted_stall_ms']:.4f} "
            f"{r['measured_copy_ms']:9.4f}/{r['predicted_copy_ms']:.4f}"
        )
    lp = result["local_profile"]
    lines += [
        "error: median over repeats of predicted / measured - 1 within each repeat (not the ratio of the "
        f"median times; ! = beyond the {TARGET:.0%} target); range: min..max over repeats",
        f"command: {result['command']}",
        f"hardware: {result['hardware']}",
        f"local profile (median): compute {lp['compute_ms']:.3f} ms/token (repeats: "
        f"{', '.join(f'{x:.2f}' for x in lp['compute_ms_repeats'])}); "
        f"one expert load ({lp['expert_bytes']} B) {lp['load_ms'] * 1e3:.1f} us; "
        f"background overlap {lp['background_overlap']:g}; path overhead ms per layer per token: "
        + ", ".join(f"{k} {v:.3f}" for k, v in lp["method_overhead_ms"].items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--profile-repeats", type=int, default=3, help="runs per timing inside each repeat's local profile"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--switch-rate", type=float, default=0.05, help="the synthetic option policy's rate")
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
