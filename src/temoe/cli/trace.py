"""`temoe trace`: generate from a prompt file under any method and write its routing trace, one JSON line per
prompt with the routed expert ids of every generated token in every MoE layer (docs/traces.md)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    from temoe.cli.eval_cmd import add_method_arguments

    p = sub.add_parser("trace", help="Write the routing trace of a method on a prompt file.",
                       description=__doc__)
    add_method_arguments(p)
    p.add_argument("--prompts", type=Path, required=True,
                   help="JSONL with 'prompt' and optional 'category', 'id' per line")
    p.add_argument("--k-hat", type=int, default=None,
                   help="allowed experts per layer k̂ of the method (default: N/2)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.5, help="§5: 0.5; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="§5: 0.95")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-chat-template", action="store_true", help="feed raw prompts")
    p.add_argument("--out", type=Path, required=True, help="trace JSONL (an existing file is refused)")
    p.set_defaults(func=run)


def run(args) -> int:
    from temoe.cli.eval_cmd import load_method
    from temoe.eval.pipeline import method_source
    from temoe.eval.routing_trace import trace_prompts
    from temoe.prompts import load_prompts
    from temoe.rollout.runner import GenerationConfig
    from temoe.traces import write_trace

    if args.out.exists():
        raise ValueError(f"{str(args.out)!r} exists; choose another --out or remove it first")
    prompts = load_prompts(args.prompts)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, batch_size=args.batch_size, seed=args.seed)
    method, handle, tokenizer, options = load_method(args)
    k_hat = args.k_hat or handle.num_experts // 2

    def progress(done: int, total: int) -> None:
        print(f"\r{method}: {done}/{total} prompts", end="", file=sys.stderr, flush=True)

    with method_source(handle, tokenizer, method, k_hat, seed=args.seed, budget=args.budget,
                       **options) as source:
        count = write_trace(args.out, trace_prompts(handle, tokenizer, prompts, source, cfg,
                                                    chat=not args.no_chat_template, progress=progress))
    print(f"\nwrote {count} trace records to {args.out}", file=sys.stderr)
    return 0
