"""`temoe bench serve`: the serving ladder on one device and prompt set: full residency, an LRU cache at the
largest k̂'s budget, and the temporally extended engine at each k̂, with the PCIe lower bound beside each row.

Without --checkpoint the option rows use a synthetic option policy with --switch-rate-target (labelled so)
plus the router-as-option-policy row, so the engine is measured independently of controller quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (`temoe bench serve`)")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    s = bench_sub.add_parser(
        "serve",
        help="offloaded serving ladder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "--model",
        required=True,
        help="gpt-oss-20b-random, tiny-random:<model_type>, `tiny`, or a local HF directory",
    )
    s.add_argument(
        "--num-layers", type=int, help="shrink gpt-oss-20b-random / tiny-random to N layers (CPU smoke)"
    )
    s.add_argument(
        "--k-hat", type=int, nargs="+", help="k̂ values (default N/4 and N/2: 8 16 for gpt-oss-20b)"
    )
    s.add_argument(
        "--prompts", help="JSONL with a 'prompt' field per line, or a text file with one prompt per line"
    )
    s.add_argument("--max-prompts", type=int, default=4)
    s.add_argument("--max-new-tokens", type=int, default=32)
    group = s.add_mutually_exclusive_group()
    group.add_argument(
        "--switch-rate-target",
        type=float,
        default=0.05,
        help="per-layer switch probability of the synthetic option policy (default 0.05)",
    )
    group.add_argument("--checkpoint", help="trained controller checkpoint: option rows use it")
    s.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    s.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="weights dtype (default: the model's own; tiny-random:* is float32, which transformers' "
        "grouped_mm experts kernel does not take on CUDA: pass bfloat16 there)",
    )
    s.add_argument(
        "--sim-bandwidth-gbps",
        type=float,
        default=54.0,
        help="CPU only: H2D bandwidth for the PCIe bound (default 54, measured pinned H2D on an H100)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="write the ladder (environment + rows) to this JSON file")
    s.set_defaults(func=run)


def _read_prompts(path: str | None, limit: int) -> list[str] | None:
    if path is None:
        return None
    text = Path(path).read_text()
    if path.endswith(".jsonl"):
        from temoe.prompts import load_prompts

        prompts = [p.prompt for p in load_prompts(path)]
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts[:limit]


def run(args) -> int:
    import torch

    import temoe
    from temoe.loading import GPT_OSS_20B_RANDOM
    from temoe.serve.bench import format_table, run_ladder

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prompts = _read_prompts(args.prompts, args.max_prompts)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    # The offloading engine places the weights itself; only the random gpt-oss-20b is built on the device.
    on_device = device if args.model.startswith(GPT_OSS_20B_RANDOM) else None
    model, tokenizer = temoe.load_model(args.model, device=on_device, num_layers=args.num_layers,
                                         dtype=dtype)
    controller = None
    if args.checkpoint:
        from temoe.inference import load_for_inference

        model, handle, controller = load_for_inference(model, args.checkpoint)
        controller.to(device)
    else:
        handle = temoe.wrap(model)
    result = run_ladder(
        handle,
        tokenizer,
        prompts=prompts,
        k_hats=args.k_hat,
        max_new_tokens=args.max_new_tokens,
        switch_rate=args.switch_rate_target,
        controller=controller,
        device=device,
        sim_bandwidth_gbps=args.sim_bandwidth_gbps,
        seed=args.seed,
    )
    result["environment"]["model"] = args.model
    shown = ("model", "num_layers", "dtype", "k_hat", "max_new_tokens", "switch_rate_target", "checkpoint")
    result["environment"]["command"] = "temoe bench serve " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in shown and v is not None
    )
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0
