"""`temoe plot`: figures from saved records: `activations` (paper Fig. 2) and `training` (curves of a run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("plot", help="make figures from saved records")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    act = kinds.add_parser("activations", help="expert × generated-position heatmaps (paper Figure 2)")
    act.add_argument("records", type=Path, help="a records JSONL with an 'active_experts' field per line")
    act.add_argument(
        "--layers", type=int, nargs="+", default=[0, 1, 2], help="MoE layers to plot (layer-local)"
    )
    act.add_argument("--index", type=int, default=0, help="which record (0-based line among records)")
    act.add_argument("--out", type=Path, required=True, help="output directory for the PNG files")
    act.set_defaults(func=run_activations)
    train = kinds.add_parser("training", help="training curves of a run directory (paper Fig. 5)")
    train.add_argument("run_dirs", type=Path, nargs="+", help="`temoe train` run dirs, one colour each")
    train.add_argument("--window", type=int, default=20, help="running-mean window in steps")
    train.add_argument("--out", type=Path, required=True, help="output directory for the PNG files")
    train.add_argument("--baseline", type=Path, default=None,
                       help="a frozen same-seed run (lr_controller=0 lr_policy=0): also draw each run's "
                            "reward minus its reward (reward_gain.png) and print windowed means with "
                            "95%% CIs")
    train.set_defaults(func=run_training)


def run_activations(args: argparse.Namespace) -> int:
    from temoe.analysis.activations import plot_activations

    if not args.records.is_file():
        raise FileNotFoundError(f"records file {str(args.records)!r} does not exist")
    lines = [line for line in args.records.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not 0 <= args.index < len(lines):
        raise ValueError(f"--index {args.index} is out of range: {args.records} has {len(lines)} records")
    record = json.loads(lines[args.index])
    stem = f"activations_{args.index}"
    for path in plot_activations(record, args.layers, args.out, stem=stem):
        print(path)
    return 0


def run_training(args: argparse.Namespace) -> int:
    try:
        from temoe.analysis.training_curves import plot_training
    except ImportError as err:
        raise ValueError(
            f"training plots are unavailable: temoe.analysis.training_curves is missing ({err})"
        ) from None
    for path in plot_training(args.run_dirs, args.out, window=args.window):
        print(path)
    from temoe.analysis.training_curves import probe_gain

    for d in args.run_dirs:
        for g in probe_gain(d):
            (lo, hi), (glo, ghi) = g["reward_ci"], g["gain_ci"]
            print(f"{d}: probe at step {g['step']}: reward {g['reward']:+.4f} [{lo:+.4f}, {hi:+.4f}], "
                  f"gain over the first probe {g['gain']:+.4f} [{glo:+.4f}, {ghi:+.4f}], "
                  f"switch rate {g['switch_rate']:.4f}"
                  + "".join(f", {label} {g[k]:.4f} (reduction {g[k + '_reduction']:+.4f} "
                            f"[{g[k + '_reduction_ci'][0]:+.4f}, {g[k + '_reduction_ci'][1]:+.4f}])"
                            for k, label in (("kl", "exact KL"), ("fixed_kl", "KL on fixed text")) if k in g))
    if args.baseline is not None:
        from temoe.analysis.training_curves import paired_gain, plot_paired_gain

        print(plot_paired_gain(args.run_dirs, args.baseline, args.out, window=args.window))
        for d in args.run_dirs:
            for w in paired_gain(d, args.baseline)["windows"]:
                lo, hi = w["ci"]
                print(f"{d}: steps {w['steps'][0]}-{w['steps'][1]}: reward gain {w['mean']:+.4f} "
                      f"[{lo:+.4f}, {hi:+.4f}]")
    return 0
