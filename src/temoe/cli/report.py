"""`temoe report`: the paper's Table 2/3 layout (Markdown) and figures (PNG) from saved evaluation
summaries."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="Build report.md (tables) and figures from saved eval summaries.",
                       description=__doc__)
    p.add_argument("inputs", nargs="+", help="summary JSON files or directories (searched recursively)")
    p.add_argument("--out", required=True, help="output directory (report.md, figures/)")
    p.add_argument("--title", default="temoe evaluation")
    p.add_argument("--tasks", nargs="*", help="column order of tasks (default: every task found)")
    p.add_argument("--run", action="append", default=[], metavar="LABEL=DIR",
                   help="training run directory for the training-curve figure (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from temoe.analysis.report import build_report

    runs = {}
    for item in args.run:
        if "=" not in item:
            raise ValueError(f"--run expects LABEL=DIR, got {item!r}")
        label, path = item.split("=", 1)
        runs[label] = path
    path = build_report(args.inputs, args.out, title=args.title, tasks=args.tasks, runs=runs)
    print(path.read_text())
    return 0
