"""`temoe eval`: accuracy, switch rate and expert loads per token of the base model, a pruning baseline, a
method users would pick instead (expert caches, cache-conditional routing, REAP, the demand rule) or a
trained controller on a task (the paper's §5 protocol), written as a summary JSON and optionally one record
per question."""

from __future__ import annotations

import json
import sys

from temoe.validation import (
    NON_NEGATIVE,
    POSITIVE_INT,
    SEED,
    TEMPERATURE,
    TOP_P,
    Range,
    check_output_file,
)

_OPEN_UNIT = Range(0, 1, lo_open=True, hi_open=True)
_UNIT = Range(0, 1, hi_open=True)

METHOD_CHOICES = ("base", "frequency", "reconstruction", "random", "wanda", "lru", "lfu", "cache-prior",
                  "reap", "demand", "recency", "static-distill", "controller")


def add_method_arguments(p) -> None:
    """The options that pick a method and its knobs (shared by `temoe eval` and `temoe trace`)."""
    p.add_argument("--model", default="tiny",
                   help='"tiny" (embedded model), a local HF directory, or testing:<model_type>')
    p.add_argument("--checkpoint", help="trained controller checkpoint directory (run dir or step dir); "
                                        "implies --method controller")
    method = p.add_mutually_exclusive_group()
    method.add_argument("--method", choices=METHOD_CHOICES,
                        help="what decides the experts (default: base, or controller with --checkpoint)")
    method.add_argument("--baseline", choices=("frequency", "reconstruction", "random", "wanda"),
                        help="alias of --method for the pruning baselines")
    p.add_argument("--budget", type=POSITIVE_INT.arg, default=None,
                   help="expert slots per layer B for loads_per_token and the caches of lru / lfu / "
                        "cache-prior (default: k̂)")
    p.add_argument("--strength", type=NON_NEGATIVE.arg, default=0.5,
                   help="cache-prior: bonus λ >= 0 of resident experts, in units of the token's router-logit "
                        "range (0 = the base model)")
    p.add_argument("--threshold", type=_OPEN_UNIT.arg, default=0.5,
                   help="demand: switch when the router's mass outside the option exceeds τ in (0, 1)")
    p.add_argument("--decay", type=_UNIT.arg, default=0.9,
                   help="demand: decay of the moving average of router probabilities the option is chosen "
                        "from")
    p.add_argument("--recency", type=NON_NEGATIVE.arg, default=1.0,
                   help="recency: weight of the reward for reusing the previous token's experts (router-only "
                        "fine-tuning against the original model)")
    p.add_argument("--distill-mask", choices=("frequency", "reap"), default="frequency",
                   help="static-distill: the fixed mask LoRA self-distillation trains under")
    p.add_argument("--train-steps", type=POSITIVE_INT.arg, default=40,
                   help="recency / static-distill: optimizer steps on the calibration sequences")
    p.add_argument("--train-batch-size", type=POSITIVE_INT.arg, default=8,
                   help="recency / static-distill: sequences per step")
    p.add_argument("--lr", type=NON_NEGATIVE.arg, default=1e-3,
                   help="recency / static-distill: Adam learning rate")
    p.add_argument("--seed", type=SEED.arg, default=42, help="question sample and sampling seed (§5: 42)")
    p.add_argument("--random-fixed", action="store_true",
                   help="random baseline: one fixed random subset per layer instead of a fresh set per token")
    p.add_argument("--controller-mode", choices=("sample", "greedy"), default="sample",
                   help="sample: d_t ~ Bernoulli(β_t) and Plackett–Luce selection (the paper); greedy: "
                        "d_t = [β_t >= 0.5] and the top-k̂ selection")
    p.add_argument("--selection-mode", choices=("sample", "greedy"), default=None,
                   help="override only how an option is chosen at a termination (greedy: top-k̂ of the "
                        "selection logits; default: as --controller-mode)")
    p.add_argument("--calibration-prompts", help="JSONL with `prompt` per line (default: embedded prompts)")
    p.add_argument("--calibration-size", type=POSITIVE_INT.arg, default=128,
                   help="calibration prompts (§5: 128)")
    p.add_argument("--calibration-tokens", type=POSITIVE_INT.arg, default=2048,
                   help="prompt + response tokens (§5: 2048)")
    p.add_argument("--cache-dir", default=".temoe-cache", help="calibration and baseline-mask cache")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=POSITIVE_INT.arg, help="torch CPU threads (default: torch's choice)")


def register(sub) -> None:
    from temoe.eval.tasks import TASKS

    p = sub.add_parser("eval", help="Evaluate the base model, a baseline or a controller on a task.",
                       description=__doc__)
    add_method_arguments(p)
    p.add_argument("--k-hat", type=POSITIVE_INT.arg, default=None,
                   help="allowed experts per layer k̂ (k̃ <= k̂ <= N); required for methods other than base and "
                        "controller; default: the checkpoint's k̂ with --checkpoint, k̃ for the base model")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", help="local file or directory of the task (hendrycks-math, mmlu, mmmlu)")
    p.add_argument("--grader", choices=("official", "lenient"), default=None,
                   help="MATH answer comparison: official (Hendrycks et al.'s normalisation) or lenient "
                        "(plus trailing periods, units, \\text{}, thousands separators, numeric equality); "
                        "default: official for hendrycks-math, lenient for the embedded math")
    p.add_argument("--limit", type=POSITIVE_INT.arg, default=200,
                   help="questions drawn with --seed (§5: 200)")
    p.add_argument("--json", required=True, help="summary JSON output path")
    p.add_argument("--records", help="per-question JSONL output path")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT.arg, default=2048, help="§5: 2048")
    p.add_argument("--temperature", type=TEMPERATURE.arg, default=0.5, help="§5: 0.5")
    p.add_argument("--top-p", type=TOP_P.arg, default=0.95, help="§5: 0.95")
    p.add_argument("--batch-size", type=POSITIVE_INT.arg, default=8)
    p.set_defaults(func=run)


def load_method(args) -> tuple[str, object, object, dict]:
    """(method, handle, tokenizer, keyword arguments of `temoe.eval.pipeline.method_source`) from the
    options of `add_method_arguments`; loads the model (and the controller checkpoint) on the device."""
    import torch

    import temoe
    from temoe.baselines import CalibrationConfig
    from temoe.baselines.distill import DistillConfig
    from temoe.eval.pipeline import load_controller
    from temoe.loading import load_model

    method = args.method or args.baseline or ("controller" if args.checkpoint else "base")
    if (method == "controller") != bool(args.checkpoint):
        need = "needs" if method == "controller" else "takes no"
        raise ValueError(f"--method {method} {need} --checkpoint")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model)
    model = model.to(device).eval()
    options = dict(controller_mode=args.controller_mode, selection_mode=args.selection_mode,
                   cache_dir=args.cache_dir, random_variant="fixed" if args.random_fixed else "per-token",
                   calibration=CalibrationConfig(num_prompts=args.calibration_size,
                                                 max_total_tokens=args.calibration_tokens,
                                                 prompts_file=args.calibration_prompts, seed=args.seed),
                   peer_options=_peer_options(args, method, DistillConfig))
    if args.checkpoint:
        from temoe.inference import read_meta, resolve_checkpoint

        model, handle, controller = load_controller(model, args.checkpoint)
        eta = read_meta(resolve_checkpoint(args.checkpoint))["controller_config"].get("eta")  # the η column
        options.update(controller=controller, eta=eta)
    else:
        handle = temoe.wrap(model)
    return method, handle, tokenizer, options


def resolve_k_hat(args, method: str, handle, options: dict) -> int:
    """`--k-hat`, or the default of methods that have one: the controller's k̂, k̃ for the base model."""
    if args.k_hat is not None:
        return args.k_hat
    if method == "controller":
        return options["controller"].k_hat
    if method == "base":
        return handle.top_k
    flag = "--baseline" if args.baseline else "--method"
    raise ValueError(f"{flag} {method} needs --k-hat K (k̃ = {handle.top_k} <= K <= "
                     f"N = {handle.num_experts})")


def _peer_options(args, method: str, distill_config) -> dict | None:
    """The knobs of `method` for `temoe.baselines.peers.peer_source` (None for methods without one)."""
    if method in ("recency", "static-distill"):
        distill = distill_config(steps=args.train_steps, batch_size=args.train_batch_size, lr=args.lr,
                                 recency=args.recency if method == "recency" else 0.0, seed=args.seed)
        return {"distill": distill, "distill_mask": args.distill_mask}
    return {"cache-prior": {"strength": args.strength},
            "demand": {"threshold": args.threshold, "decay": args.decay}}.get(method)


def run(args) -> int:
    from temoe.eval.pipeline import evaluate_method, write_summary
    from temoe.eval.tasks import load_task
    from temoe.rollout.runner import GenerationConfig

    check_output_file(args.json, "--json")  # before the evaluation, not after it
    if args.records:
        check_output_file(args.records, "--records")
    task = load_task(args.task, args.data, limit=args.limit, seed=args.seed, grader=args.grader)
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, batch_size=args.batch_size, seed=args.seed)
    method, handle, tokenizer, options = load_method(args)
    k_hat = resolve_k_hat(args, method, handle, options)

    def progress(done: int, total: int) -> None:
        print(f"\r{method} {args.task}: {done}/{total}", end="", file=sys.stderr, flush=True)

    summary, _ = evaluate_method(handle, tokenizer, task, method, k_hat, generation=generation,
                                 records_path=args.records, progress=progress, budget=args.budget, **options)
    print(file=sys.stderr)
    summary.update(model=args.model, checkpoint=args.checkpoint)
    if task.kind == "math":
        summary["grader"] = task.grader
    write_summary(args.json, summary)
    keys = ("method", "task", "grader", "k_hat", "budget", "n", "accuracy", "accuracy_ci", "switch_rate",
            "switch_rate_ci", "loads_per_token")
    print(json.dumps({k: summary.get(k) for k in keys}))
    return 0
