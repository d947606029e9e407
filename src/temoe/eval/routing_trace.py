"""Routing traces of any method: generate from a prompt file under a `MaskSource` and emit one trace record
per prompt (routed expert ids per MoE layer and generated token, plus the allowed sets of option and static
methods), in the format of `temoe.traces` (docs/traces.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from temoe.eval.runner import routing_record
from temoe.prompts import Prompt
from temoe.rollout.masks import MaskSource
from temoe.rollout.runner import GenerationConfig, generate

__all__ = ["trace_prompts"]


def trace_prompts(handle, tokenizer, prompts: Sequence[Prompt], source: MaskSource, cfg: GenerationConfig,
                  *, chat: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> Iterator[dict]:
    """Yield one trace record per prompt, batches of `cfg.batch_size` in file order, sampling as `evaluate`
    does (one generator seeded with `cfg.seed`, on the model's device)."""
    generator = torch.Generator(device=next(handle.model.parameters()).device).manual_seed(cfg.seed)
    for lo in range(0, len(prompts), cfg.batch_size):
        batch = prompts[lo:lo + cfg.batch_size]
        gens = generate(handle, tokenizer, [p.prompt for p in batch], source, cfg, generator, chat=chat)
        for prompt, g in zip(batch, gens):
            record = routing_record(g, source, prompt.id, handle)
            record.update(category=prompt.category, method=source.name, k_hat=source.k_hat)
            yield record
        if progress is not None:
            progress(min(lo + cfg.batch_size, len(prompts)), len(prompts))
