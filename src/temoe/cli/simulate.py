"""`temoe simulate`: replay a routing trace (`temoe trace`) against an expert cache with B slots per MoE layer
and report loads, loads per token, hits and hit rate (docs/traces.md). Needs only the trace file."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    from temoe.traces.residency import POLICIES

    p = sub.add_parser("simulate", help="Replay a routing trace against an expert cache policy.",
                       description=__doc__)
    p.add_argument("--trace", type=Path, required=True, help="trace JSONL written by `temoe trace`")
    p.add_argument("--policy", required=True, choices=POLICIES,
                   help="lru / lfu: cache of the routed experts; option: the recorded allowed set stays "
                        "resident; static: one fixed set per layer, loaded once")
    p.add_argument("--budget", type=int, required=True, help="expert slots B per MoE layer (k̃ <= B <= N)")
    p.add_argument("--consistency", action="store_true",
                   help="add SRP and SCH (cache size B) for segment lengths 8, 16, 32 (arXiv 2505.16056)")
    p.add_argument("--json", type=Path, help="write the result here")
    p.set_defaults(func=run)


def run(args) -> int:
    from temoe.traces import read_trace, sch, simulate, srp
    from temoe.traces.consistency import SEGMENT_LENGTHS

    result = {"trace": str(args.trace), **simulate(read_trace(args.trace), args.policy, args.budget)}
    if args.consistency:
        records = list(read_trace(args.trace))
        n, k = records[0]["num_experts"], records[0]["k_tilde"]
        layers = [r["layers"] for r in records]
        result["srp"] = {str(m): srp(layers, m, n, k) for m in SEGMENT_LENGTHS}
        result["sch"] = {str(m): sch(layers, m, args.budget) for m in SEGMENT_LENGTHS}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_layer"}))
    return 0
