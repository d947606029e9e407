"""Entry point of the `temoe` console script: builds the argument parser from the subcommand modules."""

from __future__ import annotations

import argparse
import sys

from temoe.cli import (
    bench,
    demo,
    eval_cmd,
    generate,
    info,
    plot,
    pretrain,
    report,
    serve,
    simulate,
    switch_rate,
    trace,
    train,
)

# Each module defines `register(subparsers)`, which adds its parser and sets `func=run`.
_COMMANDS = (switch_rate, info, pretrain, train, generate, eval_cmd, report, demo, plot, serve, bench,
             trace, simulate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temoe", description="Temporally extended Mixture-of-Experts.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # User-facing errors: print the message (which names the bad value and the valid ones), no traceback.
        print(f"temoe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
