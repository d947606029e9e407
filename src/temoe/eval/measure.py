"""Measure a checkpoint against the embedded bars: accuracy, base switch rates and expert usage.

`python -m temoe.eval.measure [--model tiny] [--out runs/measure]` writes `summary.json` and one JSONL
record per test item / prompt. Accuracy is greedy (temperature 0) on the full held-out sets; switch rates
follow §2 over generated tokens (temperature 0.5, seed 42); usage counts the routed experts per category.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import temoe
from temoe.embedded import load_jsonl
from temoe.embedded.tasks import TASKS, format_prompt
from temoe.eval import tasks
from temoe.loading import load_model


def generate_greedy(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy completions (special tokens removed), batched with left padding."""
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, padding_side="left"
        ).to(model.device)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def grade(task: str, completion: str, answer: str) -> bool:
    """Whether a completion of an embedded task's prompt (`temoe.embedded.tasks.format_prompt`) is right, by
    the library's one grader (`temoe.eval.tasks.grade`); MC prompts end in the answer cue "Answer:"."""
    if task == "math":
        return tasks.grade("math", completion, str(answer))[1]
    return tasks.grade("mc", "Answer:" + completion, str(answer))[1]


def accuracy(model, tokenizer, task: str, limit: int | None = None) -> tuple[float, list[dict]]:
    """Greedy accuracy on a shipped test file; returns (accuracy, per-item records)."""
    name = {"math": "math_test", "mc": "mc_test", "mc_multilingual": "mc_multilingual_test"}[task]
    items = load_jsonl(name)[:limit]
    prompts = [format_prompt(item, task) for item in items]
    completions = generate_greedy(model, tokenizer, prompts, max_new_tokens=64 if task == "math" else 48)
    records = [
        {
            "id": it["id"],
            "task": task,
            "lang": it.get("lang", "en"),
            "completion": c,
            "answer": it["answer"],
            "correct": grade(task, c, it["answer"]),
        }
        for it, c in zip(items, completions)
    ]
    return sum(r["correct"] for r in records) / len(records), records


def expert_usage(model, tokenizer, prompts: list[dict], batch_size: int = 16) -> dict:
    """Routed-expert counts (L, N) per category over the prompt tokens (one forward pass per batch)."""
    handle = temoe.wrap(model)
    counts: dict[str, torch.Tensor] = {}
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            enc = tokenizer([p["prompt"] for p in batch], return_tensors="pt", padding=True).to(model.device)
            with torch.no_grad(), handle.trace() as trace:
                model(**enc)
            keep = enc["attention_mask"].bool().view(-1).cpu()  # rows are (batch, position)
            for i in range(handle.num_layers):
                ids = trace.expert_ids(i)  # (B*S, k)
                cats = [p["category"] for p in batch for _ in range(enc["input_ids"].shape[1])]
                for row in keep.nonzero().view(-1).tolist():
                    c = counts.setdefault(cats[row], torch.zeros(handle.num_layers, handle.num_experts))
                    c[i, ids[row]] += 1
    finally:
        handle.unwrap()
    total = sum(counts.values())
    dist = {c: v / v.sum(-1, keepdim=True) for c, v in counts.items()}
    overall = total / total.sum(-1, keepdim=True)
    return {
        "dead_experts": int((total == 0).sum()),
        "min_share_of_uniform": float((overall * total.shape[1]).min()),
        "max_share_of_uniform": float((overall * total.shape[1]).max()),
        # Total-variation distance of each category's usage from the overall usage, mean over layers.
        "tv_from_overall": {
            c: float(0.5 * (d - overall).abs().sum(-1).mean()) for c, d in sorted(dist.items())
        },
        "counts": {c: v.long().tolist() for c, v in sorted(counts.items())},
    }


def switch_rates(model, tokenizer, per_category: int, max_new_tokens: int, k_hat: int) -> tuple[dict, list]:
    """§2 base-model switch rates at k̂ = k̃ and at k̂ over generated tokens (temperature 0.5, seed 42)."""
    from temoe.analysis.switch_survey import generate_traced, prompt_record, summarize
    from temoe.embedded import data_path
    from temoe.prompts import load_prompts

    prompts = load_prompts(data_path("prompts.jsonl"), per_category=per_category)
    handle = temoe.wrap(model)
    try:
        records = [
            prompt_record(g, handle.top_k, k_hat)
            for g in generate_traced(
                handle,
                tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                temperature=0.5,
                batch_size=16,
                seed=42,
                progress=False,
            )
        ]
    finally:
        handle.unwrap()
    for r in records:
        r.pop("active_experts")
    return summarize(records), records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/measure"))
    parser.add_argument(
        "--limit", type=int, default=None, help="first n items of each test set (default all)"
    )
    parser.add_argument("--per-category", type=int, default=20, help="prompts per category for switch rates")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generated tokens per survey prompt")
    parser.add_argument("--skip-switch", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model, tokenizer = load_model(args.model)
    summary: dict = {"model": args.model, "settings": vars(args) | {"out": str(args.out)}}
    for task in TASKS:
        t0 = time.time()
        acc, records = accuracy(model, tokenizer, task, args.limit)
        summary[f"accuracy/{task}"] = acc
        summary[f"n/{task}"] = len(records)
        if task == "mc_multilingual":
            by_lang: dict[str, list[bool]] = {}
            for r in records:
                by_lang.setdefault(r["lang"], []).append(r["correct"])
            summary["accuracy/mc_multilingual_by_lang"] = {
                k: sum(v) / len(v) for k, v in sorted(by_lang.items())
            }
        with (args.out / f"{task}.jsonl").open("w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        print(
            f"[temoe] {task}: accuracy {acc:.3f} on {len(records)} items ({time.time() - t0:.0f}s)",
            flush=True,
        )
    usage = expert_usage(model, tokenizer, load_jsonl("prompts"))
    summary["usage"] = {k: v for k, v in usage.items() if k != "counts"}
    (args.out / "usage_counts.json").write_text(json.dumps(usage["counts"]))
    print(f"[temoe] usage: {json.dumps(summary['usage'])}", flush=True)
    if not args.skip_switch:
        n = model.config.num_local_experts
        sw, records = switch_rates(model, tokenizer, args.per_category, args.max_new_tokens, n // 2)
        summary["switch"] = {
            c: {k: v for k, v in e.items() if not k.startswith("per_layer")} for c, e in sw.items()
        }
        summary["switch_per_layer_all"] = {k: v for k, v in sw["all"].items() if k.startswith("per_layer")}
        with (args.out / "switch.jsonl").open("w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        print(f"[temoe] switch (all): {json.dumps(sw['all'])}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
