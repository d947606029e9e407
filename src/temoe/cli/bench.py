"""`temoe bench serve` and `temoe bench budget` (`temoe.eval.budget`).

`temoe bench serve`: the serving ladder on one device and prompt set: full residency, an LRU cache at the
largest k̂'s budget, and the temporally extended engine at each k̂, with the PCIe lower bound beside each row.

Without --checkpoint the option rows use a synthetic option policy with --switch-rate-target (labelled so)
plus the router-as-option-policy row, so the engine is measured independently of controller quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (`temoe bench serve`, `temoe bench budget`)")
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
    _register_budget(bench_sub)


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


_BUDGET_DOC = """Accuracy against predicted decode speed at B expert slots per layer, for every method and
knob value: evaluations cached in OUT/k{B}/ (a rerun skips finished cells), controllers trained into
OUT/train/ unless --checkpoint ETA=DIR is given, OUT/budget.json, OUT/budget.md and
OUT/pareto_<task>_B<budget>.png.
Methods: NAME or NAME=v1,v2 (knob values); docs/budget.md explains the columns and the assumptions."""


def _register_budget(bench_sub) -> None:
    from temoe.validation import POSITIVE_INT

    b = bench_sub.add_parser("budget", help="accuracy vs predicted tok/s at a fixed expert memory",
                             description=_BUDGET_DOC)
    b.add_argument("--model", default="tiny", help='"tiny" (embedded model) or a local HF directory')
    b.add_argument("--budgets", type=POSITIVE_INT.arg, nargs="+", default=[8, 16],
                   help="expert slots per layer B (k̂ = B), k̃ <= B <= N")
    b.add_argument("--methods", nargs="+", help="methods (default: lru lfu cache-prior demand reap frequency "
                   "static-distill recency controller; --quick: lru demand=0.5 frequency)")
    b.add_argument("--tasks", nargs="+", help="tasks (default: math mc mc-multilingual; --quick: mc)")
    b.add_argument("--hardware", default="h100-gpt-oss-20b", help="cost-model profile name, or local")
    b.add_argument("--dtype", help="expert storage format of the profile (e.g. bf16, mxfp4)")
    b.add_argument("--checkpoint", action="append", default=[], metavar="ETA=DIR",
                   help="controller run for η = ETA (its k̂ is the budget); repeatable")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--quick", action="store_true", help="CI size: a few questions and methods")
    b.add_argument("--limit", type=POSITIVE_INT.arg, help="questions per task (default 200, --quick 8)")
    b.add_argument("--max-new-tokens", type=POSITIVE_INT.arg, help="default 64, --quick 12")
    b.add_argument("--batch-size", type=POSITIVE_INT.arg, default=32)
    b.add_argument("--calibration-size", type=POSITIVE_INT.arg, help="default 128, --quick 8")
    b.add_argument("--calibration-tokens", type=POSITIVE_INT.arg, help="default 256, --quick 64")
    b.add_argument("--train-steps", type=POSITIVE_INT.arg,
                   help="controller training steps (default: the tiny config's) and recency / "
                        "static-distill steps (default 40)")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--threads", type=POSITIVE_INT.arg,
                   help="torch CPU threads (of each worker process with --jobs > 1, default 1 there)")
    b.add_argument("--jobs", type=POSITIVE_INT.arg,
                   help="worker processes for the controller trainings and evaluations (default: 2 when the "
                        "machine has 2 or more CPUs and no CUDA device, else 1); results do not depend on it")
    b.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    b.set_defaults(func=run_budget)


def _budget_settings(args):
    from temoe.eval.budget import EvalSettings

    q = args.quick

    def pick(value, full, quick):
        return value if value is not None else (quick if q else full)

    return EvalSettings(model=args.model, limit=pick(args.limit, 200, 8),
                        max_new_tokens=pick(args.max_new_tokens, 64, 12), batch_size=args.batch_size,
                        seed=args.seed, calibration_size=pick(args.calibration_size, 128, 8),
                        calibration_tokens=pick(args.calibration_tokens, 256, 64),
                        train_steps=pick(args.train_steps, 40, 2), device=args.device,
                        controller_steps=args.train_steps or (2 if q else None),
                        cache_dir=str(Path(args.out) / "cache"))


def _given_checkpoints(items: list[str]) -> dict:
    """`ETA=DIR` items -> {(k̂, η): DIR}, k̂ from each checkpoint's metadata."""
    from temoe.inference import read_meta, resolve_checkpoint

    out = {}
    for item in items:
        eta, sep, path = item.partition("=")
        try:
            eta_value = float(eta)
        except ValueError:
            eta_value = None
        if not sep or eta_value is None:
            raise ValueError(f"--checkpoint {item!r}: expected ETA=DIR, e.g. 0.02=runs/tiny_k16_eta0.02")
        k_hat = read_meta(resolve_checkpoint(path))["controller_config"]["k_hat"]
        out[(int(k_hat), eta_value)] = path
    return out


def train_controller(settings, k_hat: int, eta: float) -> None:
    """Train the shipped `tiny` config at (k̂, η) into `settings.checkpoints[(k̂, η)]`, resuming an
    interrupted run; a `budget-done` marker makes a finished run reusable (`temoe.eval.budget.run_cells`)."""
    from temoe.eval.budget import train_done
    from temoe.train.config import load_config
    from temoe.train.trainer import train

    run_dir = Path(settings.checkpoints[(k_hat, eta)])
    if train_done(str(run_dir)):
        return
    overrides = {"controller.eta": eta, "controller.k_hat": k_hat, "out_dir": str(run_dir),
                 "model": settings.model, "seed": settings.seed, "progress": False}
    if settings.controller_steps is not None:
        overrides["steps"] = settings.controller_steps
    resume = (run_dir / "checkpoints" / "latest").is_file()
    train(load_config("tiny", overrides), resume=resume, overwrite=not resume)
    (run_dir / "budget-done").write_text("finished\n")


def _profile(hardware: str, dtype: str | None, handle, tokenizer):
    """A named cost-model profile, or `local` measured on this machine with the loaded model."""
    from temoe.cost import load_profile

    if hardware == "local":
        from temoe.serve.local_profile import measure_local_profile

        return measure_local_profile(handle, tokenizer)
    return load_profile(hardware, dtype=dtype)


def run_budget(args) -> int:
    import os
    import sys

    import torch
    from tqdm import tqdm

    from temoe.eval import budget as bud
    from temoe.eval.tasks import TASKS
    from temoe.loading import load_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    methods = bud.parse_methods(args.methods or (bud.QUICK_METHODS if args.quick else bud.DEFAULT_METHODS))
    tasks = args.tasks or (["mc"] if args.quick else ["math", "mc", "mc-multilingual"])
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; valid: {', '.join(TASKS)}")
    model, tokenizer = load_model(args.model)
    import temoe

    handle = temoe.wrap(model)
    bud.check_inputs(args.budgets, handle.top_k, handle.num_experts, args.hardware)
    settings = _budget_settings(args)
    settings.checkpoints = _given_checkpoints(args.checkpoint)
    etas = sorted({k for m, k in methods if m == "controller"})
    needed = [(b, e) for b in args.budgets for e in etas if (b, e) not in settings.checkpoints]
    for b, e in needed:
        settings.checkpoints[(b, e)] = str(out / "train" / f"k{b}-eta{e:g}")
    cells = bud.plan_cells(args.budgets, methods, tasks)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    jobs = args.jobs or (1 if cuda else min(2, os.cpu_count() or 1))
    train_bar = tqdm(total=len(needed), desc="train controllers", unit="run", position=1) if needed else None
    bar = tqdm(total=len(cells), desc="budget cells", unit="cell", position=0)

    def progress(cell, cached: bool) -> None:
        bar.set_postfix_str(f"{cell.name} B{cell.budget}{' (cached)' if cached else ''}")
        bar.update()

    results = bud.run_cells(cells, out, settings, progress, jobs=jobs, trainings=needed, threads=args.threads,
                            trained=lambda _t: train_bar.update() if train_bar else None,
                            train=train_controller)
    bar.close()
    if train_bar:
        train_bar.close()
    profile = _profile(args.hardware, args.dtype, handle, tokenizer)
    rows = bud.build_rows(results, profile, handle.num_layers)
    notes = [f"model {args.model}: {handle.num_layers} MoE layers, N = {handle.num_experts}, "
             f"k̃ = {handle.top_k}; loads per token per layer carried over to the profile's "
             f"{profile.num_layers} layers",
             f"eval: limit {settings.limit}, max new tokens {settings.max_new_tokens}, batch "
             f"{settings.batch_size}, calibration {settings.calibration_size} x "
             f"{settings.calibration_tokens} tokens, seed {settings.seed}", bud.provenance_note(results)]
    command = "temoe " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "temoe bench budget"
    paths = bud.write_outputs(out, rows, profile, command, notes, handle.num_layers)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0
