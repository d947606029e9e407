"""The batched generation runner: sample completions for left-padded prompts with a KV cache under the masks
of a `MaskSource`, recording the routing of every generated position (evaluation, calibration, lm-eval).

Every method runs through the same path: `handle.restrict(masks)` around a left-padded prompt forward and one
cached decode forward per generated token, with `handle.trace()` recording the routing. A method differs only
in its `MaskSource` (`temoe.rollout.masks`). Defaults follow the paper's evaluation (§5): temperature 0.5,
top-p 0.95, seed 42.

Generated position t of a sequence is the forward position whose logits give its t-th generated token
(t = 0 is the last prompt position), the convention of `temoe.controller` and `temoe.metrics`.
Shapes: B prompts, S prompt tokens, T generated tokens, L MoE layers, N experts, k routed experts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from temoe.rollout.masks import MaskSource
from temoe.rollout.sampling import sample_next
from temoe.rollout.text import encode_prompt, eos_token_ids, left_pad

__all__ = ["GenerationConfig", "Generation", "generate", "generate_from_ids"]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings of a batched generation run (defaults: the paper's evaluation, §5)."""

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


@torch.no_grad()
def generate(handle, tokenizer, prompts: Sequence[str], source: MaskSource, cfg: GenerationConfig,
             generator: torch.Generator, *, chat: bool = False, stop: Sequence[str] = (),
             eos_ids: Collection[int] | None = None) -> list[Generation]:
    """Sample one completion per prompt in a single left-padded batch with a KV cache.

    A sequence ends at an EOS id, at a stop string (the completion is cut before it) or after
    `cfg.max_new_tokens` tokens. Finished rows keep feeding padding so the batch keeps its shape; their
    routing after the end is not used.
    """
    seqs = [encode_prompt(tokenizer, p, chat, cfg.max_prompt_tokens) for p in prompts]
    input_ids, attn = left_pad(seqs, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return generate_from_ids(handle, tokenizer, input_ids, attn, source, cfg, generator, stop=stop,
                             eos_ids=eos_ids)


@torch.no_grad()
def generate_from_ids(handle, tokenizer, input_ids: Tensor, attn: Tensor, source: MaskSource,
                      cfg: GenerationConfig, generator: torch.Generator, *, stop: Sequence[str] = (),
                      eos_ids: Collection[int] | None = None) -> list[Generation]:
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
            nxt = sample_next(logits, cfg.temperature, cfg.top_p, generator).cpu()
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
