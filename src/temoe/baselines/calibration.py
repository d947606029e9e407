"""Calibration data for the pruning baselines (paper §5): prompts of the training distribution with
base-model responses, cached to disk, and the routing statistics gathered on them with padding excluded.

Defaults follow the paper: 128 prompts, one sampled base-model response each (temperature 0.5, top-p 0.95),
prompt + response ≤ 2048 tokens. Pad tokens never enter any statistic:
sequences are right-padded per batch and only rows with attention mask 1 are kept.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from temoe.embedded import data_path
from temoe.prompts import load_prompts
from temoe.rollout.masks import BaseSource
from temoe.rollout.runner import GenerationConfig, generate
from temoe.rollout.text import encode_prompt

__all__ = ["CalibrationConfig", "calibration_prompts", "calibration_sequences", "model_fingerprint",
           "calibration_key", "padded_batches", "RoutingStats", "collect_routing"]


@dataclass(frozen=True)
class CalibrationConfig:
    """How the calibration set is built."""

    num_prompts: int = 128
    """Prompts in the calibration set (§5: 128)."""
    max_total_tokens: int = 2048
    """Prompt + response tokens at most (§5: 2048); the response gets what the prompt leaves."""
    max_new_tokens: int | None = None
    """Optional extra cap on response tokens (None: only `max_total_tokens` limits it)."""
    temperature: float = 0.5
    """Sampling temperature of the base-model responses (§5: 0.5)."""
    top_p: float = 0.95
    """Nucleus mass of the responses (§5: 0.95)."""
    seed: int = 42
    """Seeds the prompt shuffle and the response sampling (§5: 42)."""
    batch_size: int = 8
    """Sequences per forward/generation batch."""
    prompts_file: str | None = None
    """JSONL with a `prompt` field per line; None = the embedded `calibration.jsonl` (128 prompts drawn
    from the training prompts `prompts.jsonl`)."""
    chat: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one (the paper's reference code skips it)."""

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.max_total_tokens < 2:
            raise ValueError(f"max_total_tokens must be >= 2, got {self.max_total_tokens}")


def calibration_prompts(cfg: CalibrationConfig) -> list[str]:
    """`cfg.num_prompts` prompts: the file's prompts shuffled with `cfg.seed`, first ones kept."""
    if cfg.prompts_file is None:
        path = Path(data_path("calibration.jsonl"))
    else:
        path = Path(cfg.prompts_file)
        if not path.exists():
            raise FileNotFoundError(f"calibration prompts file {str(path)!r} does not exist")
    prompts = [p.prompt for p in load_prompts(path)]  # file:line errors; an empty file is refused
    random.Random(cfg.seed).shuffle(prompts)
    return prompts[:cfg.num_prompts]


def model_fingerprint(handle) -> str:
    """Short hash identifying the model: its config plus the bytes of every router weight."""
    h = hashlib.sha256(handle.model.config.to_json_string(use_diff=False).encode())
    for i in range(handle.num_layers):
        h.update(handle.router_weight(i).numpy().tobytes())
    return h.hexdigest()[:16]


def calibration_key(handle, cfg: CalibrationConfig, prompts: Sequence[str] | None = None) -> str:
    """Hash of the model (`model_fingerprint`), the settings and the prompts: the calibration cache key."""
    prompts = calibration_prompts(cfg) if prompts is None else prompts
    h = hashlib.sha256(model_fingerprint(handle).encode())
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size",)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(list(prompts)).encode())
    return h.hexdigest()[:16]


def calibration_sequences(handle, tokenizer, cfg: CalibrationConfig | None = None,
                          cache_dir: str | Path | None = None,
                          progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Token ids (prompt + sampled base-model response, no padding) of every calibration sequence.

    With `cache_dir`, the result is stored as `calibration-<key>.json`, the key hashing the model
    (`model_fingerprint`), the settings and the prompts; a later call with the same key reads it back.
    """
    cfg = cfg or CalibrationConfig()
    prompts = calibration_prompts(cfg)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"calibration-{calibration_key(handle, cfg, prompts)}.json"
        if cache.exists():
            return json.loads(cache.read_text())["sequences"]
    generator = torch.Generator(device=next(handle.model.parameters()).device).manual_seed(cfg.seed)
    encoded = [encode_prompt(tokenizer, p, cfg.chat, cfg.max_total_tokens - 1) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda j: len(encoded[j]))  # similar lengths batch together
    sequences: list[list[int] | None] = [None] * len(prompts)
    source = BaseSource(k_hat=handle.num_experts, name="calibration")
    for lo in range(0, len(order), cfg.batch_size):
        idx = order[lo:lo + cfg.batch_size]
        budget = cfg.max_total_tokens - max(len(encoded[j]) for j in idx)
        if cfg.max_new_tokens is not None:
            budget = min(budget, cfg.max_new_tokens)
        gen_cfg = GenerationConfig(max_new_tokens=max(budget, 1), temperature=cfg.temperature,
                                   top_p=cfg.top_p, batch_size=len(idx), seed=cfg.seed,
                                   max_prompt_tokens=cfg.max_total_tokens - 1)
        outs = generate(handle, tokenizer, [prompts[j] for j in idx], source, gen_cfg, generator,
                        chat=cfg.chat)
        for j, g in zip(idx, outs):
            sequences[j] = (encoded[j] + g.token_ids)[:cfg.max_total_tokens]
        if progress is not None:
            progress(min(lo + cfg.batch_size, len(order)), len(order))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"config": asdict(cfg), "model": model_fingerprint(handle),
                                     "sequences": sequences}))
    return sequences  # type: ignore[return-value]


def padded_batches(sequences: Sequence[Sequence[int]], batch_size: int,
                   pad_id: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Right-padded (B, S) input ids and (B, S) attention masks (1 = real token), in order."""
    for lo in range(0, len(sequences), batch_size):
        chunk = sequences[lo:lo + batch_size]
        S = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), S), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), S), dtype=torch.long)
        for b, s in enumerate(chunk):
            ids[b, :len(s)] = torch.tensor(list(s), dtype=torch.long)
            attn[b, :len(s)] = 1
        yield ids, attn


@dataclass
class RoutingStats:
    """Routing of the base model on the calibration tokens (padding excluded), per MoE layer.

    expert_ids[i]: (T, k) routed ids; router_logits[i]: (T, N) float32; hidden[i]: (T, H) MoE block inputs
    (only when collected with `hidden_states=True`). T counts real tokens only.
    """

    expert_ids: list[Tensor]
    router_logits: list[Tensor]
    hidden: list[Tensor] | None


@torch.no_grad()
def collect_routing(handle, sequences: Sequence[Sequence[int]], batch_size: int = 8,
                    hidden_states: bool = False, layers: Sequence[int] | None = None) -> RoutingStats:
    """Run the (unrestricted) model over the sequences and keep the routing of real tokens only."""
    device = next(handle.model.parameters()).device
    L = handle.num_layers
    layers = list(range(L)) if layers is None else list(layers)
    ids: list[list[Tensor]] = [[] for _ in range(L)]
    logits: list[list[Tensor]] = [[] for _ in range(L)]
    hidden: list[list[Tensor]] = [[] for _ in range(L)]
    for input_ids, attn in padded_batches(sequences, batch_size):
        valid = attn.flatten().bool()  # (B*S,): the trace's row order within a call is (batch, position)
        with handle.trace(hidden_states=hidden_states) as trace:
            handle.model(input_ids=input_ids.to(device), attention_mask=attn.to(device), use_cache=False)
        for i in layers:
            ids[i].append(trace.expert_ids(i)[valid])
            logits[i].append(trace.router_logits(i)[valid])
            if hidden_states:
                hidden[i].append(trace.hidden_states(i)[valid])
    def cat(chunks: list[list[Tensor]]) -> list[Tensor]:
        return [torch.cat(x) if x else torch.empty(0) for x in chunks]

    return RoutingStats(expert_ids=cat(ids), router_logits=cat(logits),
                        hidden=cat(hidden) if hidden_states else None)
