"""Evaluation: generate completions of a task's prompts with the batched runner (`temoe.rollout.runner`) under
a `MaskSource`, grade them, and write one JSON record per question.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from temoe.analysis.stats import summarise
from temoe.eval.tasks import Task
from temoe.rollout.masks import MaskSource
from temoe.rollout.runner import Generation, GenerationConfig, generate
from temoe.traces.residency import check_budget, simulate_sequence

__all__ = ["evaluate", "write_records", "routing_record", "option_changes"]


def evaluate(handle, tokenizer, task: Task, source: MaskSource, cfg: GenerationConfig | None = None,
             *, records_path: str | Path | None = None,
             progress: Callable[[int, int], None] | None = None,
             budget: int | None = None) -> tuple[dict, list[dict]]:
    """Evaluate `task` with masks from `source`; returns (summary, records).

    One record per question: `id, prompt, completion, prediction, answer, correct, switch_rate,
    experts_loaded, loads, n_generated, active_experts, num_experts` and `top_k` or `k_hat` +
    `routed_experts` (`active_experts`: per generated position, per MoE layer, the routed expert ids, or the
    option's members for per-token mask sources; see `_active`). `loads` replays the routing against the
    source's residency (`MaskSource.residency`) with `budget` slots per layer (default k̂, else N;
    `temoe.traces.residency`). The summary adds the run's settings and `loads_per_token` (Σ loads / Σ decode
    tokens) to `temoe.analysis.stats.summarise`.
    """
    cfg = cfg or GenerationConfig()
    budget = budget or source.k_hat or handle.num_experts
    caches = source.residency in ("lru", "lfu")  # caches need k̃ slots, options and static sets k̂
    check_budget(budget, handle.top_k if caches else source.k_hat, handle.num_experts)
    # On the model's device: torch.multinomial needs a generator on the device of the probabilities.
    generator = torch.Generator(device=next(handle.model.parameters()).device).manual_seed(cfg.seed)
    records: list[dict] = []
    start = time.perf_counter()
    items = task.items
    for lo in range(0, len(items), cfg.batch_size):
        batch = items[lo:lo + cfg.batch_size]
        prompts = [task.prompt(it) for it in batch]
        gens = generate(handle, tokenizer, prompts, source, cfg, generator, chat=task.chat, stop=task.stop)
        for item, prompt, g in zip(batch, prompts, gens):
            completion = task.truncate(g.completion)
            pred, correct = task.grade(completion, item)
            loads = simulate_sequence(routing_record(g, source, item["id"], handle), source.residency, budget)
            records.append({
                "id": str(item["id"]), "prompt": prompt, "completion": completion, "prediction": pred,
                "answer": item["answer"], "correct": bool(correct), "switch_rate": g.switch_rate,
                "experts_loaded": g.experts_loaded, "loads": sum(loads.loads),
                "decode_tokens": loads.decode_tokens, "n_generated": len(g.token_ids),
                "num_experts": handle.num_experts, **_active(g, handle.top_k, source.k_hat),
            })
        if progress is not None:
            progress(len(records), len(items))
    summary = summarise(records)
    decode_tokens = sum(r["decode_tokens"] for r in records)
    loads = sum(r["loads"] for r in records)
    summary.update(loads_per_token=loads / decode_tokens if decode_tokens else None, budget=budget,
                   residency=source.residency)
    summary.update(task=task.name, method=source.name, k_hat=source.k_hat,
                   seconds=time.perf_counter() - start,
                   switch_rate_definition=source.switch_definition, generation=asdict(cfg),
                   pool_size=task.meta.get("pool_size"), **source.describe())
    if records_path is not None:
        write_records(records_path, records)
        summary["records"] = str(records_path)
    return summary, records


def option_changes(options: Tensor) -> list[list]:
    """Options (T, L, N) bool -> the trace format's `allowed`: per layer `[[t, ids], ...]` at each change."""
    out = []
    for i in range(options.shape[1]):
        layer, prev = [], None
        for t, mask in enumerate(options[:, i]):
            ids = torch.nonzero(mask).flatten().tolist()
            if ids != prev:
                layer.append([t, ids])
                prev = ids
        out.append(layer)
    return out


def routing_record(g: Generation, source: MaskSource, prompt_id, handle) -> dict:
    """One generation as a routing-trace record (docs/traces.md): routed ids per layer and token, and the
    allowed sets of option (`g.options`) or static (`source.masks`) sources."""
    record = {"id": prompt_id, "k_tilde": handle.top_k, "num_experts": handle.num_experts,
              "layers": g.expert_ids.permute(1, 0, 2).tolist()}  # (T, L, k) -> (L, T, k)
    if source.residency == "option" and g.options is not None:
        record["allowed"] = option_changes(g.options)
    elif source.residency == "static":
        record["allowed"] = [[[0, torch.nonzero(m).flatten().tolist()]] for m in source.masks]
    return record


def _active(g: Generation, top_k: int, k_hat: int | None) -> dict:
    """Record fields for the activation heatmaps (`temoe.analysis.activations`): `active_experts` holds,
    per generated position and MoE layer, the option's k̂ members where the source installs per-token masks
    (controller, random), else the k̃ routed experts (with `top_k`). `routed_experts` is always the routing."""
    routed = g.expert_ids.tolist()
    if g.options is None:
        return {"active_experts": routed, "top_k": top_k}
    members = [[torch.nonzero(m).flatten().tolist() for m in pos] for pos in g.options]
    return {"active_experts": members, "k_hat": k_hat, "routed_experts": routed}


def write_records(path: str | Path, records: Sequence[dict]) -> None:
    """One JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
