"""`temoe train`: option-critic controller training with on-policy self-distillation (Alg. 2).

Flags are shorthands for config keys; any other key is set with `key=value`, the controller's as
`controller.KEY=VALUE` (e.g. `controller.eta=0.03`). Precedence: defaults < --config YAML < flags < key=value.
Multi-process: `accelerate launch -m temoe.cli.main train ...`.
"""

from __future__ import annotations

import argparse

#: flag -> config key
_SHORTHANDS = {
    "model": "model",
    "k_hat": "controller.k_hat",
    "eta": "controller.eta",
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
    p.add_argument("--k-hat", type=int, help="allowed experts per option k̂ [controller.k_hat]")
    p.add_argument("--eta", type=float, help="deliberation cost η [controller.eta]")
    p.add_argument("--steps", type=int, help="optimisation steps [steps]")
    p.add_argument("--out", help="run directory [out_dir]")
    p.add_argument("--seed", type=int, help="seed [seed]")
    p.add_argument("--config", help="YAML file, or a shipped config name (tiny, gpt-oss-20b)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="any TrainConfig field; controller.KEY for ControllerConfig's")
    p.set_defaults(func=run)


def run(args) -> int:
    from temoe.train.config import load_config, parse_overrides
    from temoe.train.trainer import train

    overrides = {
        key: getattr(args, flag) for flag, key in _SHORTHANDS.items() if getattr(args, flag) is not None
    }
    overrides.update(parse_overrides(args.overrides))
    # The process count is checked inside train(), once accelerate's state exists (creating a PartialState
    # here would fix the distributed type before the Accelerator reads ACCELERATE_USE_CPU).
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume)
    if result.metrics:
        last = result.metrics[-1]
        print(
            f"step {last['step']}: reward {last['rollout/reward']:.4f}, switch rate "
            f"{last['rollout/switch_rate']:.4f}; run dir {result.run_dir}"
        )
    return 0
