"""`temoe switch-rate`: the paper's Table 1 (§3.1): base-model switch rates per prompt category."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from temoe.validation import POSITIVE_INT, SEED, TEMPERATURE, TOP_P, check_output_file


def register(sub) -> None:
    p = sub.add_parser(
        "switch-rate",
        help="measure the base model's expert switch rate (paper Table 1)",
        description="Generate from a prompt file, trace every MoE router, and print the switch rate "
        "mean ± std per category at k̂ = k̃ and at --k-hat, plus per-layer rates. "
        "Only generated tokens are rated.",
    )
    p.add_argument(
        "model",
        help="a local Hugging Face model directory, 'tiny' (the embedded model), or "
        "'tiny-random:<model_type>' (a random from-config test model)",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="JSONL with 'prompt' and optional 'category', 'id' (default: the shipped prompts.jsonl, "
        "100 prompts in each of Table 1's 10 categories)",
    )
    p.add_argument(
        "--k-hat",
        required=True,
        type=POSITIVE_INT.arg,
        help="allowed experts k̂ of the base-model option (k̃ <= k̂ <= N)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=POSITIVE_INT.arg,
        default=256,
        help="tokens to generate per prompt (§3.1: 256)",
    )
    p.add_argument(
        "--temperature",
        type=TEMPERATURE.arg,
        default=0.5,
        help="sampling temperature (§3.1: 0.5); 0 = greedy",
    )
    p.add_argument(
        "--top-p", type=TOP_P.arg, default=1.0, help="nucleus sampling (Table 1 states none: 1.0 = off)"
    )
    p.add_argument("--seed", type=SEED.arg, default=42, help="torch RNG seed for sampling (§5: 42)")
    p.add_argument(
        "--batch-size", type=POSITIVE_INT.arg, default=8, help="prompts per generate call (left padding)"
    )
    p.add_argument(
        "--per-category",
        type=POSITIVE_INT.arg,
        default=None,
        help="keep the first n prompts of each category (§3.1: 100)",
    )
    p.add_argument(
        "--no-chat-template",
        action="store_true",
        help="feed raw prompts even if the tokenizer has a chat template",
    )
    p.add_argument("--device", default=None, help="torch device (default: the loader's choice)")
    p.add_argument("--json", type=Path, default=None, help="write the table's numbers here")
    p.add_argument("--records", type=Path, default=None, help="write one JSON record per prompt here (JSONL)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    import temoe
    from temoe.analysis.switch_survey import RATED_POSITIONS, generate_traced, prompt_record, summarize
    from temoe.prompts import keep_fitting, load_prompts
    from temoe.rollout.inference import encode_prompt

    if args.prompts is None:
        from temoe.embedded import data_path

        args.prompts = data_path("prompts.jsonl")
    for path, flag in ((args.json, "--json"), (args.records, "--records")):
        if path is not None:
            check_output_file(path, flag)
    prompts = load_prompts(args.prompts, per_category=args.per_category)
    if args.max_new_tokens < 3:
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens} is too small: a switch rate needs at least "
            "2 rated positions, i.e. 3 generated tokens"
        )
    model, tokenizer = temoe.load_model(args.model, device=args.device)
    handle = temoe.wrap(model)
    k_tilde, n = handle.top_k, handle.num_experts
    if not k_tilde <= args.k_hat <= n:
        raise ValueError(
            f"--k-hat {args.k_hat} is out of range for this model: need k̃ = {k_tilde} <= k̂ <= N = {n}"
        )
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None:  # prompt + response must fit: a 1 MB line is skipped, never allocated
        chat = not args.no_chat_template
        limit, what = positions - args.max_new_tokens, f"{positions} positions - --max-new-tokens"
        prompts = keep_fitting(prompts, lambda text: len(encode_prompt(tokenizer, text, chat)), limit, what)
    if tokenizer.pad_token is None:  # left padding needs a pad token; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    records = []
    out = args.records.open("w", encoding="utf-8") if args.records else None
    try:
        for gen in generate_traced(
            handle,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            batch_size=args.batch_size,
            seed=args.seed,
            chat_template=not args.no_chat_template,
        ):
            record = prompt_record(gen, k_tilde, args.k_hat)
            record.update(
                model=args.model,
                num_experts=n,
                top_k=k_tilde,
                k_hat=args.k_hat,
                layer_indices=handle.layer_indices,
            )
            records.append(record)
            if out:
                out.write(json.dumps(record) + "\n")
    finally:
        if out:
            out.close()
    result = {
        "model": args.model,
        "model_type": handle.model_type,
        "num_layers": handle.num_layers,
        "layer_indices": handle.layer_indices,
        "num_experts": n,
        "k_tilde": k_tilde,
        "k_hat": args.k_hat,
        "rated_positions": RATED_POSITIONS,
        "settings": {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "prompts": str(args.prompts),
            "num_prompts": len(prompts),
        },
        "categories": summarize(records),
        "consistency": _consistency(records, n, k_tilde, args.k_hat),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Console().print(_table(result))
    return 0


def _consistency(records: list[dict], num_experts: int, k_tilde: int, k_hat: int) -> dict:
    """SRP and SCH (cache of k̂ experts per layer) for segment lengths 8, 16, 32 over all prompts and per
    category (Liang et al., arXiv 2505.16056; docs/traces.md)."""
    from temoe.traces import sch, srp
    from temoe.traces.consistency import SEGMENT_LENGTHS

    groups: dict[str, list] = {"all": []}
    for r in records:
        layers = [list(tokens) for tokens in zip(*r["active_experts"])]  # (T, L, k) -> (L, T, k)
        groups["all"].append(layers)
        groups.setdefault(r["category"], []).append(layers)
    def metrics(seqs: list) -> dict:
        return {"srp": {str(m): srp(seqs, m, num_experts, k_tilde) for m in SEGMENT_LENGTHS},
                "sch": {str(m): sch(seqs, m, k_hat) for m in SEGMENT_LENGTHS}}

    return {"sch_cache_size": k_hat, "segment_lengths": list(SEGMENT_LENGTHS),
            "categories": {name: metrics(seqs) for name, seqs in groups.items()}}


def _table(result: dict):
    """Rich tables: per category (rows) the switch rate mean ± std at k̂ = k̃ and at k̂; then per-layer means."""
    from rich.console import Group
    from rich.table import Table

    cats = result["categories"]
    k_tilde, k_hat = result["k_tilde"], result["k_hat"]
    main = Table(
        title=f"Switch rate of {result['model']} (N={result['num_experts']}, k̃={k_tilde}), "
        "mean ± std over prompts",
        caption=f"Rated: {result['rated_positions']}",
    )
    main.add_column("category")
    main.add_column("prompts", justify="right")
    main.add_column(f"k̂ = k̃ = {k_tilde}", justify="right")
    main.add_column(f"k̂ = {k_hat}", justify="right")
    for name, entry in cats.items():
        cells = [
            f"{entry[key]['mean']:.2f} ± {entry[key]['std']:.2f}" if key in entry else "n/a"
            for key in ("k_tilde", "k_hat")
        ]
        unrated = f" (+{entry['unrated']} unrated)" if entry["unrated"] else ""
        main.add_row(name, f"{entry['n']}{unrated}", *cells, end_section=name == list(cats)[-2])
    layers = Table(title="Per-layer switch rate over all prompts (mean)")
    layers.add_column("MoE layer (decoder layer)")
    layers.add_column(f"k̂ = k̃ = {k_tilde}", justify="right")
    layers.add_column(f"k̂ = {k_hat}", justify="right")
    everything = cats["all"]
    if "per_layer_k_tilde" in everything:
        for i, (a, b) in enumerate(zip(everything["per_layer_k_tilde"], everything["per_layer_k_hat"])):
            layers.add_row(f"{i} ({result['layer_indices'][i]})", f"{a:.3f}", f"{b:.3f}")
    lrc = result["consistency"]
    local = Table(title="Local routing consistency (arXiv 2505.16056): SRP and SCH with "
                        f"{lrc['sch_cache_size']} cached experts per layer, by segment length m")
    local.add_column("category")
    for m in lrc["segment_lengths"]:
        local.add_column(f"SRP m={m}", justify="right")
    for m in lrc["segment_lengths"]:
        local.add_column(f"SCH m={m}", justify="right")
    for name, entry in lrc["categories"].items():
        values = [entry[key][str(m)] for key in ("srp", "sch") for m in lrc["segment_lengths"]]
        local.add_row(name, *("–" if v is None else f"{v:.3f}" for v in values))
    return Group(main, layers, local)
