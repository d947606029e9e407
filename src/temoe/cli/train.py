"""`temoe train`: option-critic controller training with on-policy self-distillation (Alg. 2).

Flags are shorthands for config keys; any other key is set with `key=value`, the controller's as
`controller.KEY=VALUE` (e.g. `controller.eta=0.03`). Precedence: defaults < --config YAML < flags < key=value
(flags and key=value may come in any order). A run directory that holds an earlier run is refused unless
--resume or --overwrite. Multi-process: `accelerate launch -m temoe.cli.main train ...`.
"""

from __future__ import annotations

import argparse

from temoe.validation import ETA, POSITIVE, POSITIVE_INT, SEED


def _eta(text: str) -> float | str:
    """argparse `type=` of --eta: a number >= 0 or "auto"."""
    return "auto" if text.strip().lower() == "auto" else ETA.arg(text)

#: flag -> config key
_SHORTHANDS = {
    "model": "model",
    "k_hat": "controller.k_hat",
    "eta": "controller.eta",
    "switch_cost": "controller.switch_cost",
    "load_budget": "controller.load_budget",
    "stall_budget_ms": "controller.stall_budget_ms",
    "hardware": "controller.hardware",
    "steps": "steps",
    "out": "out_dir",
    "seed": "seed",
}


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train option controllers + LoRA (paper Alg. 2)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model name (`tiny`) or local HF directory [config key model]")
    p.add_argument("--k-hat", type=POSITIVE_INT.arg, help="allowed experts per option k̂ [controller.k_hat]")
    p.add_argument("--eta", type=_eta, help="deliberation cost η, or `auto` to meet --load-budget or "
                   "--stall-budget-ms by dual ascent [controller.eta]")
    p.add_argument("--switch-cost", choices=("flat", "loads"),
                   help="charge η per switch (flat, the paper) or per expert loaded [controller.switch_cost]")
    p.add_argument("--load-budget", type=POSITIVE.arg,
                   help="with --eta auto: expert loads per generated token, summed over layers "
                   "[controller.load_budget]")
    p.add_argument("--stall-budget-ms", type=POSITIVE.arg,
                   help="with --eta auto and --hardware: transfer stall per generated token in ms "
                   "[controller.stall_budget_ms]")
    p.add_argument("--hardware", help="hardware profile converting ms to expert loads (temoe.cost; e.g. "
                   "h100-gpt-oss-20b) [controller.hardware]")
    p.add_argument("--steps", type=POSITIVE_INT.arg, help="optimisation steps [steps]")
    p.add_argument("--out", help="run directory [out_dir]")
    p.add_argument("--seed", type=SEED.arg, help="seed [seed]")
    p.add_argument("--config", help="YAML file, or a shipped config name (tiny, gpt-oss-20b)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier run in OUT (its config, metrics and checkpoints)")
    # REMAINDER keeps flags that follow a key=value; run() parses them (argparse cannot intermix positionals)
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                   help="any TrainConfig field; controller.KEY for ControllerConfig's")
    p.set_defaults(func=run, parser=p)


def run(args) -> int:
    from temoe.train.config import load_config, parse_overrides
    from temoe.train.trainer import train

    flags = [item for item in args.overrides if "=" not in item or item.startswith("-")]
    items = [item for item in args.overrides if item not in flags]
    if flags:
        args.parser.parse_args(flags, namespace=args)
    overrides = {
        key: getattr(args, flag) for flag, key in _SHORTHANDS.items() if getattr(args, flag) is not None
    }
    overrides.update(parse_overrides(items))
    # The process count is checked inside train(), once accelerate's state exists (creating a PartialState
    # here would fix the distributed type before the Accelerator reads ACCELERATE_USE_CPU).
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if result.metrics:
        last = result.metrics[-1]
        print(
            f"step {last['step']}: reward {last['rollout/reward']:.4f}, switch rate "
            f"{last['rollout/switch_rate']:.4f}; run dir {result.run_dir}"
        )
    return 0
