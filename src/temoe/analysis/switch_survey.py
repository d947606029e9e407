"""The paper's Table 1 survey (§3.1): generate, trace the routers, rate the base model's switches.

Rated positions are the generated tokens only: each generated token as it is fed back through the model
(one cached decode step). The final token is never fed back, so n generated tokens give n − 1 rated positions
(the reference implementation's convention); a sequence stops at its first EOS.
Shapes: T rated positions, L MoE layers, N experts, k = k̃ routed, k̂ allowed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from temoe.metrics import router_switch_rate
from temoe.moe.wrap import MoEHandle
from temoe.prompts import Prompt
from temoe.rollout.text import encode_prompt, eos_token_ids, left_pad

RATED_POSITIONS = (
    "generated tokens only: each generated token as it is fed back (cached decode steps); "
    "n generated tokens give n - 1 rated positions; prompt tokens are not rated"
)


@dataclass
class TracedGeneration:
    """One prompt's completion and the routing at its rated positions."""

    prompt: Prompt
    completion: str
    token_ids: list[int]
    """The generated token ids, up to and including the first EOS."""
    num_generated: int
    """len(token_ids)."""
    router_logits: Tensor
    """(T, L, N) float32 raw router logits, T = num_generated - 1."""
    expert_ids: Tensor
    """(T, L, k) routed expert ids."""


def generate_traced(
    handle: MoEHandle,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.5,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 42,
    chat_template: bool = True,
    progress: bool = True,
) -> Iterator[TracedGeneration]:
    """Generate for every prompt (batched, left-padded, KV cache) and yield its traced generated positions.

    §3.1 settings by default: 256 new tokens, temperature 0.5 (top-p off). temperature 0 means greedy.
    Seeds torch's global RNG with `seed` once (HF `generate` samples from it). `chat_template` applies the
    tokenizer's chat template when it has one.
    """
    model = handle.model
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=top_p)
        if temperature > 0
        else dict(do_sample=False)
    )
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="switch-rate", unit="batch", disable=not progress):
        batch = prompts[start : start + batch_size]
        seqs = [encode_prompt(tokenizer, p.prompt, chat_template) for p in batch]
        input_ids, attn = left_pad(seqs, tokenizer.pad_token_id)
        with torch.no_grad(), handle.trace() as trace:
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attn.to(device), max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, **sampling
            )
        yield from _split(handle, tokenizer, batch, input_ids.shape[1], out, trace)


def _split(
    handle: MoEHandle,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[Prompt],
    prompt_len: int,
    out: Tensor,
    trace,
) -> Iterator[TracedGeneration]:
    """Cut the batch trace into per-sequence (T, L, N) / (T, L, k) tensors at the rated positions."""
    B = len(batch)
    new = out[:, prompt_len:].cpu()  # (B, n_new)
    n_new = new.shape[1]
    # one prefill call of (B, prompt_len), then one cached decode call of (B, 1) per fed-back token
    assert trace.calls == [(B, prompt_len)] + [(B, 1)] * (n_new - 1), trace.calls
    L = handle.num_layers
    # decode rows start after the B * prompt_len prefill rows; decode step j holds rows (j, b) -> (n_new-1, B)
    logits = torch.stack([trace.router_logits(i)[B * prompt_len :] for i in range(L)], dim=1)  # (rows, L, N)
    ids = torch.stack([trace.expert_ids(i)[B * prompt_len :] for i in range(L)], dim=1)  # (rows, L, k)
    logits = logits.view(n_new - 1, B, L, handle.num_experts)
    ids = ids.view(n_new - 1, B, L, handle.top_k)
    eos = eos_token_ids(handle.model, tokenizer)
    for b, prompt in enumerate(batch):
        tokens = new[b].tolist()
        n = next((j + 1 for j, t in enumerate(tokens) if t in eos), n_new)
        yield TracedGeneration(
            prompt=prompt,
            completion=tokenizer.decode(tokens[:n], skip_special_tokens=True),
            token_ids=tokens[:n],
            num_generated=n,
            router_logits=logits[: n - 1, b],
            expert_ids=ids[: n - 1, b],
        )


def prompt_record(gen: TracedGeneration, k_tilde: int, k_hat: int) -> dict:
    """The JSONL record of one prompt: rates at k̂ = k̃ and at k̂ (None with fewer than 2 rated positions),
    per-layer rates, and `active_experts` (rated position -> MoE layer -> sorted routed expert ids)."""
    rated = gen.router_logits.shape[0]
    rates: dict[str, list[float] | None] = {"k_tilde": None, "k_hat": None}
    if rated >= 2:
        for key, k in (("k_tilde", k_tilde), ("k_hat", k_hat)):
            rates[key] = router_switch_rate(gen.router_logits, gen.expert_ids, k, per_layer=True).tolist()
    return {
        "id": gen.prompt.id,
        "category": gen.prompt.category,
        "prompt": gen.prompt.prompt,
        "completion": gen.completion,
        "num_generated": gen.num_generated,
        "num_rated": rated,
        "switch_rate_k_tilde": None if rates["k_tilde"] is None else statistics.fmean(rates["k_tilde"]),
        "switch_rate_k_hat": None if rates["k_hat"] is None else statistics.fmean(rates["k_hat"]),
        "per_layer": rates,
        "active_experts": gen.expert_ids.sort(dim=-1).values.tolist(),
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


def summarize(records: list[dict]) -> dict:
    """Table 1 numbers from prompt records: per category and over all prompts, the switch rate mean ± std
    (population std over prompts) at k̂ = k̃ and at k̂, and the per-layer means. Prompts with fewer than
    2 rated positions have no rate and are only counted under `unrated`."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["category"], []).append(record)
    summary = {}
    for name, group in [*sorted(groups.items()), ("all", records)]:
        rated = [r for r in group if r["switch_rate_k_tilde"] is not None]
        entry: dict = {"n": len(rated), "unrated": len(group) - len(rated)}
        if rated:
            for key in ("k_tilde", "k_hat"):
                entry[key] = _stats([r[f"switch_rate_{key}"] for r in rated])
                layers = zip(*(r["per_layer"][key] for r in rated))
                entry[f"per_layer_{key}"] = [statistics.fmean(column) for column in layers]
        summary[name] = entry
    return summary
