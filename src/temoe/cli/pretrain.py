"""`temoe pretrain`: regenerate the embedded corpus, tokenizer and gpt-oss MoE, then pretrain (resumable)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

_SIZES = {
    # name -> overrides of PretrainConfig; "ci" is a few-second smoke run on a sliver of the corpus.
    "full": {},
    "ci": {
        "natural_chars": 20_000,
        "require_sources": False,
        "tokenizer_task_docs": 500,
        "vocab_size": 512,
        "batch_size": 2,
        "seq_len": 64,
        "num_layers": 2,
        "hidden_size": 32,
        "intermediate_size": 32,
        "head_dim": 8,
        "warmup_steps": 1,
        "log_every": 1,
        "checkpoint_every": 2,
        "export_every": 1000,
    },
}


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain the embedded MoE from its generated corpus (CPU or GPU)")
    p.add_argument(
        "--out", type=Path, required=True, help="run directory (checkpoint, metrics.jsonl, export/)"
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 2000 for --size full)")
    p.add_argument("--size", choices=sorted(_SIZES), default="full", help="'ci' = tiny smoke-test run")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="wall-clock budget: cosine over min(steps, budget), stop at whichever ends first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--allow-missing-sources", action="store_true",
                   help="build the corpus from the installed Debian text sources only (default: fail and "
                        "print the apt-get line)")
    p.add_argument("--export", type=Path, default=None, help="also write the final HF directory here")
    p.add_argument("--init-from", default=None,
                   help="continued pretraining: start from this HF directory or embedded name (e.g. tiny)")
    p.add_argument("--data-offset", type=int, default=None,
                   help="batch index = step + offset (fresh batches after an earlier run's steps)")
    p.add_argument("--shares", default=None,
                   help="corpus mixture for the whole run, e.g. "
                        "math=0.15,mc=0.33,bio=0.25,natural=0.15,drill=0.12")
    p.add_argument("--router-aux-loss-coef", type=float, default=None)
    p.add_argument("--revive-dead-experts", action="store_true",
                   help="copy each layer's busiest expert into experts that route nothing before training")
    p.add_argument("--revive-min-share", type=float, default=None,
                   help="with --revive-dead-experts: also revive experts below this fraction of the "
                        "uniform share")
    p.add_argument("--context-mask-fraction", type=float, default=None,
                   help="share of steps trained under causal context masks of k̂ experts (docs/embedded.md)")
    p.add_argument("--context-mask-segment-share", type=float, default=None,
                   help="share of masked steps with segment masks (router top-k̂ held for a segment)")
    p.add_argument("--context-mask-segment-sample", type=float, default=None,
                   help="share of segment-masked steps whose sets are Plackett-Luce draws")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from temoe.embedded.pretrain import PretrainConfig, pretrain

    overrides = dict(_SIZES[args.size])
    for key in ("steps", "lr", "batch_size", "seq_len", "init_from", "data_offset", "router_aux_loss_coef",
                "context_mask_fraction", "revive_min_share", "context_mask_segment_share",
                "context_mask_segment_sample"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.revive_dead_experts:
        overrides["revive_dead_experts"] = True
    if args.allow_missing_sources:
        overrides["require_sources"] = False
    if args.shares is not None:
        overrides["shares"] = _parse_shares(args.shares)
    overrides.update(seed=args.seed, device=args.device, threads=args.threads)
    if args.time_budget_min is not None:
        overrides["time_budget_s"] = args.time_budget_min * 60
    valid = {f.name for f in fields(PretrainConfig)}
    cfg = PretrainConfig(**{k: v for k, v in overrides.items() if k in valid})
    last = pretrain(args.out, cfg, resume=args.resume, export_path=args.export)
    print(
        f"[temoe] done: step {last.get('step')} loss/lm {last.get('loss/lm', float('nan')):.4f} -> {args.out}"
    )
    return 0


def _parse_shares(text: str) -> dict[str, float]:
    """`math=0.15,mc=0.33,...` -> dict; keys must be corpus groups and the shares must sum to 1."""
    from temoe.embedded.corpus import DRILL_SHARES

    shares: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in DRILL_SHARES:
            raise SystemExit(f"--shares: bad entry {part!r}; expected KEY=VALUE with KEY in "
                             f"{sorted(DRILL_SHARES)}")
        shares[key.strip()] = float(value)
    for key in DRILL_SHARES:
        shares.setdefault(key, 0.0)
    if abs(sum(shares.values()) - 1.0) > 1e-6:
        raise SystemExit(f"--shares must sum to 1, got {sum(shares.values()):.4f} from {text!r}")
    return shares
