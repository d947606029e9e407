"""`temoe demo`: the whole paper on the embedded model in one command, resumable stage by stage.

Stages, each caching its output under `--out DIR` (a rerun skips what is already there):
1. survey   `DIR/survey.json`: base-model switch rate on the embedded prompts (Table 1, k̂ = k̃ and k̂).
2. train    `DIR/train/eta<η>/`: controller + LoRA training (`temoe.train.train`) at each η, and
            `DIR/train/budget<X>/`: one controller whose η meets a budget of X expert loads per token.
3. eval     `DIR/eval/<method>[_eta<η>]-<task>.json` + `.jsonl`: base, the four baselines and each
            controller on the embedded math / mc / mc-multilingual sets at the same k̂ (Table 2 layout).
4. budget   `DIR/budget/`: the memory-budget benchmark (`temoe.eval.budget`) of the methods that need no
            training at B = 16 and 8 (`budget.json`, `budget.md`, Pareto plots), run in a second process
            (one torch thread) while the controllers train and the evaluations run.
5. report   `DIR/report.md`, `DIR/figures/*.png`, `DIR/summary.json` (one row per method × η × task).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

#: The paper's methods in table order, the demo's default; "controller" is evaluated once per η.
PAPER_METHODS = ("base", "frequency", "reconstruction", "random", "wanda", "controller")
#: Every method the demo can evaluate: the paper's and those users would pick instead (default knobs).
DEMO_METHODS = PAPER_METHODS + ("lru", "lfu", "cache-prior", "reap", "demand", "recency", "static-distill")

#: Trainer overrides used when no `tiny` trainer config is shipped: CPU-sized rollouts and controllers for
#: the embedded model (H = 64), instead of the paper's gpt-oss-20b sizes (16 × 512 tokens, MLP width 1024).
FALLBACK_TRAIN = {"prompts_per_step": 8, "max_new_tokens": 48, "controller.hidden": 256,
                  "controller.expert_embed_dim": 64, "checkpoint_every": 0, "steps": 40}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run; `quick()` and `full()` are the two presets."""

    out: str
    """Run directory: every stage writes (and on rerun reads) its outputs here."""
    model: str = "tiny"
    """`temoe.load_model` name ("tiny" = the embedded model, or a local HF dir) or `testing:<model_type>`."""
    k_hat: int = 16
    """k̂ for every method (16 = N/2 for the embedded model, as the paper's headline k̂ = 16 of 32)."""
    etas: tuple[float, ...] = (0.02, 0.04)
    """Deliberation costs η of the trained controllers (paper: 0.02 is the headline, 0.03/0.04 ablations)."""
    load_budget: float | None = 1.0
    """Also train one controller with `eta: auto` and `switch_cost: loads` to this budget of expert loads
    per generated token (summed over layers); None = none."""
    tasks: tuple[str, ...] = ("math", "mc", "mc-multilingual")
    """Evaluation tasks (`temoe.eval.tasks.TASKS`)."""
    data: dict[str, str] = field(default_factory=dict)
    """Data paths of local-file tasks (hendrycks-math, mmlu, mmmlu), by task name."""
    methods: tuple[str, ...] = PAPER_METHODS
    """Methods to evaluate (subset of DEMO_METHODS)."""
    limit: int = 200
    """Questions per task (§5: 200, seed 42)."""
    max_new_tokens: int = 64
    """Generated tokens per question (an embedded worked solution takes up to 53 tokens with its EOS, an
    embedded multiple-choice answer up to 14; §5: 2048 on real models)."""
    batch_size: int = 32
    """Questions per generation batch."""
    train_steps: int | None = None
    """Controller training steps per η; None = the trainer config's (`tiny`: 80; §5: 120 on gpt-oss-20b)."""
    train_config: str | None = None
    """Shipped trainer config name or YAML path (default: `tiny` when shipped, else the trainer defaults)."""
    train_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra `temoe.train.load_config` overrides (`controller.KEY` for the controller's keys)."""
    controller_mode: str = "sample"
    """How the evaluated controllers act: "sample" (d_t ~ Bernoulli(β_t), Plackett–Luce selection; the paper's
    likely mode) or "greedy" (d_t = [β_t >= 0.5], top-k̂; the authors' code's default)."""
    selection_mode: str | None = None
    """Override only how an option is chosen at a termination ("greedy": top-k̂ of the selection logits);
    None: as `controller_mode`."""
    checkpoints: dict[float, str] = field(default_factory=dict)
    """Use these existing checkpoints (η -> dir) instead of training."""
    survey_per_category: int = 20
    """Survey prompts per category (Table 1 uses 100)."""
    survey_tokens: int = 64
    """Generated tokens per survey prompt (Table 1: 256)."""
    calibration_prompts: int = 128
    """Calibration prompts of the baselines (§5: 128)."""
    calibration_tokens: int = 256
    """Prompt + response tokens per calibration sequence (§5: 2048; the embedded prompts are short)."""
    prompts: str | None = None
    """Prompt JSONL for the survey and calibration (default: the embedded `prompts.jsonl`)."""
    seed: int = 42
    """Seed of question sampling, generation and calibration (§5: 42)."""
    progress: bool = True
    """Show progress bars."""
    budgets: tuple[int, ...] = (16, 8)
    """Expert slots per layer of the budget stage (`temoe bench budget`); () = no budget stage."""
    budget_methods: tuple[str, ...] = ("lru", "lfu", "cache-prior=0.5", "demand=0.5,0.7", "reap", "frequency")
    """Methods (and knob values, `temoe bench budget --methods` syntax) of the budget stage."""
    budget_hardware: str = "h100-gpt-oss-20b"
    """Cost-model profile of the budget stage's predicted speeds."""

    def __post_init__(self) -> None:
        if self.load_budget is not None and not (math.isfinite(self.load_budget) and self.load_budget > 0):
            raise ValueError(f"DemoConfig.load_budget={self.load_budget!r}: must be a finite number > 0 "
                             "(expert loads per generated token) or None")
        if self.controller_mode not in ("sample", "greedy"):
            raise ValueError("DemoConfig.controller_mode must be 'sample' or 'greedy', "
                             f"got {self.controller_mode!r}")
        from temoe.eval.budget import parse_methods

        parse_methods(self.budget_methods)  # ValueError naming the valid methods and knob values
        if self.selection_mode not in (None, "sample", "greedy"):
            raise ValueError("DemoConfig.selection_mode must be None, 'sample' or 'greedy', "
                             f"got {self.selection_mode!r}")

    @classmethod
    def quick(cls, out: str, **kw) -> DemoConfig:
        """CI preset: a small run of every stage, in a couple of minutes on 2 CPU cores."""
        base = dict(out=out, etas=(0.02,), load_budget=None, limit=24, max_new_tokens=64, train_steps=4,
                    budgets=(16,), budget_methods=("lru", "demand=0.5", "frequency"),
                    survey_per_category=3, survey_tokens=32, calibration_prompts=16, calibration_tokens=128,
                    train_overrides={"prompts_per_step": 4, "max_new_tokens": 32, "checkpoint_every": 0,
                                     "eval_prompts": 4})
        return cls(**{**base, **kw})

    @classmethod
    def full(cls, out: str, **kw) -> DemoConfig:
        """README preset: the run behind the README table (command and run time in BENCHMARKS.md)."""
        return cls(out=out, **kw)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _prompts_path(cfg: DemoConfig) -> Path:
    if cfg.prompts is not None:
        return Path(cfg.prompts)
    from temoe.embedded import data_path

    return Path(data_path("prompts.jsonl"))


def _load(cfg: DemoConfig):
    import temoe
    from temoe.loading import load_model

    model, tokenizer = load_model(cfg.model)
    return temoe.wrap(model.eval()), tokenizer


def stage_survey(cfg: DemoConfig, handle, tokenizer) -> dict:
    """Base-model switch rates on the survey prompts (§3.1), cached in DIR/survey.json."""
    from temoe.analysis.switch_survey import generate_traced, prompt_record, summarize
    from temoe.prompts import load_prompts

    path = Path(cfg.out) / "survey.json"
    if path.exists():
        return json.loads(path.read_text())
    prompts = load_prompts(_prompts_path(cfg), per_category=cfg.survey_per_category)
    records = [prompt_record(g, handle.top_k, cfg.k_hat) for g in generate_traced(
        handle, tokenizer, prompts, max_new_tokens=cfg.survey_tokens, temperature=0.5, seed=cfg.seed,
        progress=cfg.progress)]
    out = {"k_tilde": handle.top_k, "k_hat": cfg.k_hat, "summary": summarize(records)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def budget_label(load_budget: float) -> str:
    """The η entry of a budgeted controller's rows: "auto, 1 load/token"."""
    return f"auto, {load_budget:g} load{'' if load_budget == 1 else 's'}/token"


def _train_dir(cfg: DemoConfig, eta: float | str) -> Path:
    name = f"budget{cfg.load_budget:g}" if isinstance(eta, str) else f"eta{eta:g}"
    return Path(cfg.out) / "train" / name


def stage_train(cfg: DemoConfig, eta: float | str) -> Path:
    """A trained controller checkpoint for η, or for `budget_label(cfg.load_budget)` (existing one, cached
    run, or a new `temoe.train.train` run)."""
    if eta in cfg.checkpoints:
        return Path(cfg.checkpoints[eta])
    from temoe.inference import resolve_checkpoint
    from temoe.train.config import load_config, shipped_configs
    from temoe.train.trainer import train

    run_dir = _train_dir(cfg, eta)
    done = run_dir / "DONE"
    if done.exists():
        return Path(done.read_text().strip())
    config_name = cfg.train_config or ("tiny" if "tiny" in shipped_configs() else None)
    overrides = {**(FALLBACK_TRAIN if config_name is None else {}), "model": cfg.model,
                 "controller.k_hat": cfg.k_hat, "controller.eta": eta, "out_dir": str(run_dir),
                 **({"controller.eta": "auto", "controller.switch_cost": "loads",
                     "controller.load_budget": cfg.load_budget} if isinstance(eta, str) else {}),
                 "seed": cfg.seed, "progress": cfg.progress,
                 **({} if cfg.train_steps is None else {"steps": cfg.train_steps}), **cfg.train_overrides}
    if cfg.prompts is not None:
        overrides.setdefault("prompts", cfg.prompts)
    resume = (run_dir / "checkpoints" / "latest").exists()
    result = train(load_config(config_name, overrides), resume=resume)
    ckpt = resolve_checkpoint(result.checkpoint or run_dir)
    done.write_text(str(ckpt) + "\n")
    return ckpt


def _eval_name(method: str, eta: float | str | None, task: str) -> str:
    if isinstance(eta, str):
        return f"{method}_budget{eta.removeprefix('auto, ').split(' ')[0]}-{task}"  # budget_label's X
    return f"{method}{'' if eta is None else f'_eta{eta:g}'}-{task}"


def stage_eval(cfg: DemoConfig, handle, tokenizer, checkpoints: dict[float, Path]) -> list[dict]:
    """Evaluate every (method, η, task); each summary is cached in DIR/eval/<name>.json."""
    from temoe.baselines import CalibrationConfig
    from temoe.eval.pipeline import evaluate_method, load_controller, write_summary
    from temoe.eval.tasks import load_task
    from temoe.loading import load_model
    from temoe.rollout.runner import GenerationConfig

    eval_dir = Path(cfg.out) / "eval"
    generation = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)
    calibration = CalibrationConfig(num_prompts=cfg.calibration_prompts,
                                    max_total_tokens=cfg.calibration_tokens, seed=cfg.seed,
                                    prompts_file=cfg.prompts)  # None: the embedded calibration.jsonl
    tasks = {t: load_task(t, cfg.data.get(t), limit=cfg.limit, seed=cfg.seed) for t in cfg.tasks}
    jobs = [(m, None) for m in cfg.methods if m != "controller"]
    if "controller" in cfg.methods:
        jobs += [("controller", eta) for eta in checkpoints]
    summaries = []
    bar = _bar(len(jobs) * len(tasks), "eval", cfg.progress)
    for method, eta in jobs:
        ctrl_handle, controller = handle, None
        for name, task in tasks.items():
            stem = _eval_name(method, eta, name)
            path = eval_dir / f"{stem}.json"
            if path.exists():
                summaries.append(json.loads(path.read_text()))
                bar.update(1)
                continue
            if method == "controller" and controller is None:
                model, _ = load_model(cfg.model)
                _, ctrl_handle, controller = load_controller(model.eval(), checkpoints[eta])
            bar.set_description(f"eval {stem}")
            summary, _ = evaluate_method(ctrl_handle, tokenizer, task, method, cfg.k_hat,
                                         generation=generation, controller=controller, eta=eta,
                                         controller_mode=cfg.controller_mode,
                                         selection_mode=cfg.selection_mode,
                                         calibration=calibration, cache_dir=Path(cfg.out) / "cache",
                                         records_path=eval_dir / f"{stem}.jsonl",
                                         progress=lambda done, total: bar.set_postfix_str(f"{done}/{total}"))
            summary["eta"] = eta
            write_summary(path, summary)
            summaries.append(summary)
            bar.update(1)
        if controller is not None:
            ctrl_handle.unwrap()
    bar.close()
    return summaries


def _budget_settings(cfg: DemoConfig):
    from temoe.eval.budget import EvalSettings

    return EvalSettings(model=cfg.model, limit=cfg.limit, max_new_tokens=cfg.max_new_tokens,
                        batch_size=cfg.batch_size, seed=cfg.seed, calibration_size=cfg.calibration_prompts,
                        calibration_tokens=cfg.calibration_tokens,
                        cache_dir=str(Path(cfg.out) / "budget" / "cache"))


def _budget_cells(cfg: DemoConfig):
    from temoe.eval import budget as bud

    return bud.plan_cells(cfg.budgets, bud.parse_methods(cfg.budget_methods), cfg.tasks)


def _budget_work(cfg: DemoConfig) -> None:
    """The budget stage's evaluations (in a worker process with one torch thread)."""
    import torch

    from temoe.eval import budget as bud

    torch.set_num_threads(1)
    bud.run_cells(_budget_cells(cfg), Path(cfg.out) / "budget", _budget_settings(cfg))


def start_budget_stage(cfg: DemoConfig):
    """Start the budget stage's evaluations in a second process; None when the stage is off or the local
    tasks need data files (the budget benchmark reads embedded tasks only)."""
    if not cfg.budgets or not cfg.budget_methods or cfg.data:
        return None
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    future = pool.submit(_budget_work, cfg)
    pool.shutdown(wait=False)
    return future


def finish_budget_stage(cfg: DemoConfig, future, handle) -> list[Path]:
    """Wait for the budget stage, then write DIR/budget/budget.json, budget.md and the Pareto plots."""
    if future is None:
        return []
    future.result()
    from temoe.cost import load_profile
    from temoe.eval import budget as bud

    out = Path(cfg.out) / "budget"
    results = bud.run_cells(_budget_cells(cfg), out, _budget_settings(cfg))  # all cached: reads them back
    profile = load_profile(cfg.budget_hardware)
    rows = bud.build_rows(results, profile, handle.num_layers)
    notes = [f"model {cfg.model}: {handle.num_layers} MoE layers, N = {handle.num_experts}, "
             f"k̃ = {handle.top_k}",
             f"eval: limit {cfg.limit}, max new tokens {cfg.max_new_tokens}, seed {cfg.seed}",
             bud.provenance_note(results)]
    command = (f"temoe bench budget --model {cfg.model} --budgets {' '.join(map(str, cfg.budgets))} "
               f"--methods {' '.join(cfg.budget_methods)} --tasks {' '.join(cfg.tasks)} --limit {cfg.limit} "
               f"--max-new-tokens {cfg.max_new_tokens} --calibration-size {cfg.calibration_prompts} "
               f"--calibration-tokens {cfg.calibration_tokens} --hardware {cfg.budget_hardware} --out {out}")
    return bud.write_outputs(out, rows, profile, command, notes, handle.num_layers)


def _budget_section(out: Path, paths: list[Path], report: Path) -> None:
    plots = [p for p in paths if p.suffix == ".png"]
    lines = ["", "## Accuracy against predicted speed at a fixed expert memory", "",
             "The methods that need no training, at B expert slots per layer (k̂ = B), priced by the cost "
             "model: every row in [budget/budget.md](budget/budget.md) (`temoe bench budget`, "
             "docs/budget.md).", ""]
    lines += [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    with report.open("a") as f:
        f.write("\n".join(lines) + "\n")


def summary_rows(summaries: list[dict]) -> list[dict]:
    """The `summary.json` rows: method, eta, k_hat, task, n, accuracy(+CI), switch_rate(+CI)."""
    keys = ("method", "eta", "k_hat", "task", "n", "accuracy", "accuracy_ci", "switch_rate", "switch_rate_ci",
            "loads_per_token")
    return [{k: s.get(k) for k in keys} for s in summaries]


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or resume) every stage; returns a dict with `report` (path), `summary` (rows), `survey`,
    `seconds`."""
    from temoe.analysis.report import build_report

    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
    handle, tokenizer = _load(cfg)
    survey = stage_survey(cfg, handle, tokenizer)
    budget_stage = start_budget_stage(cfg)
    checkpoints = {}
    if "controller" in cfg.methods:
        for eta in sorted(cfg.etas):
            checkpoints[eta] = stage_train(cfg, eta)
        if cfg.load_budget and not cfg.checkpoints:
            checkpoints[budget_label(cfg.load_budget)] = stage_train(cfg, budget_label(cfg.load_budget))
    summaries = stage_eval(cfg, handle, tokenizer, checkpoints)
    rows = summary_rows(summaries)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    overall = survey["summary"].get("all", {})
    pre = []
    if "k_tilde" in overall:
        pre.append(f"Base-model switch rate on the survey prompts (n = {overall['n']}): "
                   f"{100 * overall['k_tilde']['mean']:.1f}% at k̂ = k̃ = {survey['k_tilde']}, "
                   f"{100 * overall['k_hat']['mean']:.1f}% at k̂ = {survey['k_hat']}.")
    if checkpoints:
        selection = cfg.selection_mode or cfg.controller_mode
        terminations = ("sampled, d_t ~ Bernoulli(β_t)" if cfg.controller_mode == "sample"
                        else "d_t = [β_t >= 0.5]")
        options = ("sampled from the Plackett–Luce policy" if selection == "sample"
                   else "the top-k̂ of the selection logits")
        pre.append(f"Controllers evaluated in {cfg.controller_mode} mode (terminations {terminations}; "
                   f"options at a termination {options}).")
    runs = {(f"η {eta}" if isinstance(eta, str) else f"η = {eta:g}"): _train_dir(cfg, eta)
            for eta in checkpoints}
    report = build_report([out / "eval"], out, title=f"temoe demo ({cfg.model}, k̂ = {cfg.k_hat})",
                          tasks=list(cfg.tasks), runs=runs, preamble="\n\n".join(pre))
    if checkpoints and not cfg.checkpoints:
        _probe_section(out, runs, report)
    budget_paths = finish_budget_stage(cfg, budget_stage, handle)
    if budget_paths:
        _budget_section(out, budget_paths, report)
    return {"report": report, "summary": rows, "survey": survey, "seconds": time.perf_counter() - start}


def _probe_section(out: Path, runs: dict[str, Path], report: Path) -> None:
    """probes.json + figures/probe_reward.png + a report section from the runs' probes (eval.jsonl)."""
    from temoe.analysis.training_curves import plot_probes, probe_gain

    gains = {label: probe_gain(d) for label, d in runs.items()}
    gains = {label: g for label, g in gains.items() if g}
    if not gains:
        return
    (out / "probes.json").write_text(json.dumps(gains, indent=2, ensure_ascii=False) + "\n")
    figure = plot_probes([runs[label] for label in gains], out / "figures")
    first = next(iter(gains.values()))
    lines = ["", "## Held-out probes during training", "",
             f"Every probe rolls out the controller on the same {first[0]['prompts']} held-out prompts with "
             "the same sampling seeds, without updating anything (`eval_every`). Reward = neg. KL per token "
             "(sampled-token estimate) and KL = exact KL(student ‖ teacher) per token, both on the student's "
             "own samples; KL on fixed text = exact KL per token on the teacher's own continuations of the "
             "same prompts (made once), the same states at every probe, so its per-prompt reduction from the "
             "first probe measures what training changed without sampling noise. Bootstrap 95% intervals "
             "over prompts.", "",
             "| run | step | reward | KL | its reduction vs step 0 | KL on fixed text "
             "| its reduction vs step 0 | switch rate |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(g: dict, key: str) -> str:
        return f"{g[key]:.3f}" if key in g else "–"

    def reduction(g: dict, key: str) -> str:
        if f"{key}_reduction" not in g:
            return "–"
        lo, hi = g[f"{key}_reduction_ci"]
        return f"{g[f'{key}_reduction']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    for label, rows in gains.items():
        for g in rows:
            lines.append(f"| {label} | {g['step']} | {g['reward']:+.3f} [{g['reward_ci'][0]:+.3f}, "
                         f"{g['reward_ci'][1]:+.3f}] | {cell(g, 'kl')} | {reduction(g, 'kl')} | "
                         f"{cell(g, 'fixed_kl')} | {reduction(g, 'fixed_kl')} | "
                         f"{100 * g['switch_rate']:.2f}% |")
    if figure is not None:
        lines += ["", f"![probes]({figure.relative_to(out)})", ""]
    with report.open("a") as f:
        f.write("\n".join(lines))


def register(sub) -> None:
    p = sub.add_parser("demo", help="Survey, train, evaluate and report on the embedded model (resumable).",
                       description=__doc__)
    p.add_argument("--out", required=True, help="run directory (rerunning resumes)")
    p.add_argument("--quick", action="store_true", help="CI-sized run (fewer questions, tokens and steps)")
    p.add_argument("--model", default="tiny", help='"tiny", a local HF directory, or testing:<model_type>')
    p.add_argument("--k-hat", type=int, help="allowed experts per layer (default 16)")
    p.add_argument("--eta", type=float, action="append", help="deliberation cost η (repeatable)")
    p.add_argument("--load-budget", type=float, metavar="X",
                   help="also train a controller to X expert loads per token (eta: auto; 0 = none; "
                   "default 1, none with --quick)")
    p.add_argument("--task", action="append", help="task (repeatable; default math, mc, mc-multilingual)")
    p.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                   help="data of a local-file task")
    p.add_argument("--checkpoint", action="append", default=[], metavar="ETA=DIR",
                   help="use an existing controller checkpoint for η instead of training")
    p.add_argument("--limit", type=int, help="questions per task")
    p.add_argument("--controller-mode", choices=["sample", "greedy"],
                   help="how the controllers act in evaluation (default: the demo config's)")
    p.add_argument("--selection-mode", choices=["sample", "greedy"],
                   help="override only how an option is chosen at a termination (default: the demo config's)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--train-steps", type=int)
    p.add_argument("--method", action="append", choices=DEMO_METHODS,
                   help="method to evaluate (repeatable; default: the paper's base model, four baselines and "
                        "controller)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice; 1 is far faster on a machine shared "
                        "with other jobs, where spinning OpenMP threads oversubscribe the cores)")
    p.set_defaults(func=run)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def run(args) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    cfg = (DemoConfig.quick if args.quick else DemoConfig.full)(args.out, model=args.model,
                                                                 progress=not args.no_progress)
    updates: dict[str, Any] = {}
    for key, value in (("k_hat", args.k_hat), ("limit", args.limit), ("max_new_tokens", args.max_new_tokens),
                       ("train_steps", args.train_steps), ("controller_mode", args.controller_mode),
                       ("selection_mode", args.selection_mode)):
        if value is not None:
            updates[key] = value
    if args.eta:
        updates["etas"] = tuple(args.eta)
    if args.load_budget is not None:
        updates["load_budget"] = args.load_budget or None
    if args.task:
        updates["tasks"] = tuple(args.task)
    if args.method:
        updates["methods"] = tuple(args.method)
    if args.data:
        updates["data"] = _pairs(args.data, "--data")
    if args.checkpoint:
        updates["checkpoints"] = {float(k): v for k, v in _pairs(args.checkpoint, "--checkpoint").items()}
    cfg = replace(cfg, **updates)
    result = run_demo(cfg)
    print(Path(result["report"]).read_text())
    print(f"demo finished in {result['seconds']:.0f} s; wrote {result['report']} and "
          f"{Path(cfg.out) / 'summary.json'}", file=sys.stderr)
    return 0
