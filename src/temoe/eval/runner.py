"""Batched evaluation: sample completions with a KV cache under masks from a `MaskSource`,
grade them, write records.

Every method runs through the same path: `handle.restrict(masks)` around a left-padded prompt forward and one
cached decode forward per generated token, with `handle.trace()` recording the routing. A method differs only
in its `MaskSource` (`temoe.eval.masks`). Sampling follows METHOD §5: temperature 0.5, top-p 0.95, seed 42.

Generated position t of a sequence is the forward position whose logits give its t-th generated token
(t = 0 is the last prompt position), the convention of `temoe.controller` and `temoe.metrics`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from temoe.eval.masks import MaskSource
from temoe.eval.stats import summarise
from temoe.eval.tasks import Task
from temoe.rollout.sampling import nucleus
from temoe.traces.residency import check_budget, simulate_sequence

__all__ = ["GenerationConfig", "Generation", "generate", "evaluate", "write_records", "eos_token_ids",
           "encode_prompt", "generate_from_ids", "routing_record", "option_changes"]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings of an evaluation run (defaults: METHOD §5)."""

    max_new_tokens: int = 2048
    """Generated tokens per question at most (§5: 2048; the embedded tasks need far fewer)."""
    temperature: float = 0.5
    """Softmax temperature (§5: 0.5). 0 means greedy decoding."""
    top_p: float = 0.95
    """Nucleus mass (§5: 0.95)."""
    batch_size: int = 8
    """Questions per batched generation call (left padding)."""
    seed: int = 42
    """Seed of the sampling generator (§5: 42); one generator drives all batches in order."""
    max_prompt_tokens: int = 2048
    """Prompts longer than this keep their last tokens (the reference eval truncates inputs to 2048)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Generation:
    """One sequence's output: the decoded completion and the routing at its generated positions."""

    completion: str
    token_ids: list[int]
    router_logits: Tensor
    """(T, L, N) float32 raw router logits at generated positions t = 0..T-1."""
    expert_ids: Tensor
    """(T, L, k) routed expert ids (after the mask) at generated positions."""
    switch_rate: float | None
    """Switch rate of this sequence under the source's definition (None when T < 2)."""
    experts_loaded: int | None
    """Σ_ℓ Σ_{t≥1} |ω_t \\ ω_{t-1}|: experts that had to be brought in after t = 0 (None when T < 2)."""
    options: Tensor | None = None
    """(T, L, N) bool masks installed at the generated positions (random per token, controller), else None."""


def eos_token_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids: the generation config's (possibly several) plus the tokenizer's."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def encode_prompt(tokenizer, prompt: str, chat: bool, max_len: int) -> list[int]:
    """Token ids of one prompt (chat template with generation prompt if `chat` and the tokenizer has one),
    keeping the last `max_len` tokens."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return list(ids)[-max_len:]


def _encode(tokenizer, prompts: Sequence[str], chat: bool, max_len: int) -> tuple[Tensor, Tensor]:
    """Left-padded (B, S) input ids and attention mask."""
    seqs = [encode_prompt(tokenizer, p, chat, max_len) for p in prompts]
    S = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), S), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), S), dtype=torch.long)
    for b, s in enumerate(seqs):
        input_ids[b, S - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[b, S - len(s):] = 1
    return input_ids, attn


def _sample(logits: Tensor, cfg: GenerationConfig, generator: torch.Generator) -> Tensor:
    """(B, V) logits -> (B,) token ids: greedy at temperature 0, else tempered nucleus sampling.

    `generator` must live on the logits' device.
    """
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = nucleus(torch.softmax(logits.float() / cfg.temperature, dim=-1), cfg.top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(handle, tokenizer, prompts: Sequence[str], source: MaskSource, cfg: GenerationConfig,
             generator: torch.Generator, *, chat: bool = False, stop: Sequence[str] = (),
             eos_ids: set[int] | None = None) -> list[Generation]:
    """Sample one completion per prompt in a single left-padded batch with a KV cache.

    A sequence ends at an EOS id, at a stop string (the completion is cut before it) or after
    `cfg.max_new_tokens` tokens. Finished rows keep feeding padding so the batch keeps its shape; their
    routing after the end is not used.
    """
    input_ids, attn = _encode(tokenizer, prompts, chat, cfg.max_prompt_tokens)
    return generate_from_ids(handle, tokenizer, input_ids, attn, source, cfg, generator, stop=stop,
                             eos_ids=eos_ids)


@torch.no_grad()
def generate_from_ids(handle, tokenizer, input_ids: Tensor, attn: Tensor, source: MaskSource,
                      cfg: GenerationConfig, generator: torch.Generator, *, stop: Sequence[str] = (),
                      eos_ids: set[int] | None = None) -> list[Generation]:
    """`generate` from left-padded (B, S) input ids and attention mask (used by the lm-eval adapter)."""
    model = handle.model
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer) if eos_ids is None else eos_ids
    input_ids, attn = input_ids.to(device), attn.to(device)
    B, S = input_ids.shape
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    source.set_prompt_mask(attn)
    masks = source.start(B)
    with handle.trace() as trace, (handle.restrict(masks) if masks is not None else nullcontext()):
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=True)
        source.after_prefill()
        past = out.past_key_values
        logits = out.logits[:, -1]
        next_pos = position_ids[:, -1] + 1
        for step in range(cfg.max_new_tokens):
            nxt = _sample(logits, cfg, generator).cpu()
            for b in range(B):
                if done[b]:
                    continue
                t = int(nxt[b])
                if t in eos_ids:
                    done[b] = True
                    continue
                tokens[b].append(t)
                if stop and _hit_stop(tokenizer, tokens[b], stop):
                    done[b] = True
            source.mark_done(done)
            if bool(done.all()) or step == cfg.max_new_tokens - 1:
                break
            feed = torch.where(done, torch.full_like(nxt, pad), nxt).to(device)
            attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype, device=device)], dim=1)
            out = model(input_ids=feed[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                        past_key_values=past, use_cache=True)
            past, logits, next_pos = out.past_key_values, out.logits[:, -1], next_pos + 1
    results = []
    L = handle.num_layers
    logits_all = torch.stack([trace.router_logits(i) for i in range(L)], dim=1)  # (T_total, L, N)
    ids_all = torch.stack([trace.expert_ids(i) for i in range(L)], dim=1)  # (T_total, L, k)
    for b in range(B):
        text = tokenizer.decode(tokens[b], skip_special_tokens=True)
        for s in stop:
            j = text.find(s)
            if j >= 0:
                text = text[:j]
        # Generated positions of row b: the last prompt position, then one row per decode call.
        # A stop-string or EOS ending keeps T = the kept tokens; an empty completion has no positions.
        T = len(tokens[b])
        rows = [b * S + S - 1] + [B * S + t * B + b for t in range(T - 1)]
        rows = torch.tensor(rows[:T], dtype=torch.long)
        rl, ei = logits_all[rows], ids_all[rows]
        rate, loaded = source.sequence_switches(b, rows, rl, ei)
        results.append(Generation(text, tokens[b], rl, ei, rate, loaded, source.options(b, rows)))
    return results


def _hit_stop(tokenizer, toks: list[int], stop: Sequence[str]) -> bool:
    tail = tokenizer.decode(toks[-16:], skip_special_tokens=True)
    return any(s in tail for s in stop)


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
    tokens) to `temoe.eval.stats.summarise`.
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
