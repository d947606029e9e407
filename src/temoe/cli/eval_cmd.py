"""`temoe eval`: accuracy and switch rate of the base model, a pruning baseline or a trained controller on
a task (the paper's §5 protocol), written as a summary JSON and optionally one JSON record per question."""

from __future__ import annotations

import json
import sys

from temoe.validation import POSITIVE_INT, SEED, TEMPERATURE, TOP_P, check_output_file


def register(sub) -> None:
    from temoe.eval.tasks import TASKS

    p = sub.add_parser("eval", help="Evaluate the base model, a baseline or a controller on a task.",
                       description=__doc__)
    p.add_argument("--model", default="tiny",
                   help='"tiny" (embedded model), a local HF directory, or testing:<model_type>')
    method = p.add_mutually_exclusive_group()
    method.add_argument("--checkpoint", help="trained controller checkpoint directory (run dir or step dir)")
    method.add_argument("--baseline", choices=("frequency", "reconstruction", "random", "wanda"),
                        help="pruning baseline at the same k̂ (default: the base model)")
    p.add_argument("--k-hat", type=POSITIVE_INT.arg, default=None,
                   help="allowed experts per layer k̂ (k̃ <= k̂ <= N); required with --baseline; default: the "
                        "checkpoint's k̂ with --checkpoint, k̃ for the base model (its switch rate at k̂ = k̃)")
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
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    import temoe
    from temoe.baselines import CalibrationConfig
    from temoe.eval.pipeline import evaluate_method, load_controller, write_summary
    from temoe.eval.tasks import load_task
    from temoe.loading import load_model
    from temoe.rollout.runner import GenerationConfig

    check_output_file(args.json, "--json")  # before the evaluation, not after it
    if args.records:
        check_output_file(args.records, "--records")
    task = load_task(args.task, args.data, limit=args.limit, seed=args.seed, grader=args.grader)
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, batch_size=args.batch_size, seed=args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model)
    model = model.to(device).eval()
    controller, eta = None, None
    if args.checkpoint:
        from temoe.inference import read_meta, resolve_checkpoint

        model, handle, controller = load_controller(model, args.checkpoint)
        method = "controller"
        eta = read_meta(resolve_checkpoint(args.checkpoint))["controller_config"].get("eta")  # the η column
    else:
        handle = temoe.wrap(model)
        method = args.baseline or "base"
    k_hat = args.k_hat
    if k_hat is None:
        if args.baseline:
            raise ValueError(f"--baseline {args.baseline} needs --k-hat K (k̃ = {handle.top_k} <= K <= "
                             f"N = {handle.num_experts})")
        k_hat = controller.k_hat if controller is not None else handle.top_k
    calibration = CalibrationConfig(num_prompts=args.calibration_size,
                                    max_total_tokens=args.calibration_tokens,
                                    prompts_file=args.calibration_prompts, seed=args.seed)

    def progress(done: int, total: int) -> None:
        print(f"\r{method} {args.task}: {done}/{total}", end="", file=sys.stderr, flush=True)

    summary, _ = evaluate_method(handle, tokenizer, task, method, k_hat, generation=generation,
                                 controller=controller, eta=eta, controller_mode=args.controller_mode,
                                 selection_mode=args.selection_mode, calibration=calibration,
                                 cache_dir=args.cache_dir,
                                 random_variant="fixed" if args.random_fixed else "per-token",
                                 records_path=args.records, progress=progress)
    print(file=sys.stderr)
    summary.update(model=args.model, checkpoint=args.checkpoint)
    if task.kind == "math":
        summary["grader"] = task.grader
    write_summary(args.json, summary)
    keys = ("method", "task", "grader", "k_hat", "n", "accuracy", "accuracy_ci", "switch_rate",
            "switch_rate_ci")
    print(json.dumps({k: summary.get(k) for k in keys}))
    return 0
