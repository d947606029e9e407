"""Text into and out of generation: prompt encoding (chat template, truncation, left padding) and the
end-of-sequence rule, shared by rollouts, evaluation, calibration, surveys and serving.

Shapes: B prompts, S tokens of the longest prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def encode_prompt(tokenizer, prompt: str, chat: bool, max_len: int | None = None) -> list[int]:
    """Token ids of one prompt: a user turn plus the generation prompt if `chat` and the tokenizer has a chat
    template, else the plain text with the tokenizer's special tokens; the last `max_len` tokens if given."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # a BatchEncoding in some versions
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = list(ids)
    return ids if max_len is None else ids[-max_len:]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded (B, S) long input ids and (B, S) long attention mask (1 = real token)."""
    S = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), S), dtype=torch.long)
    for b, s in enumerate(seqs):
        input_ids[b, S - len(s):] = torch.tensor(list(s), dtype=torch.long)
        attn[b, S - len(s):] = 1
    return input_ids, attn


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids, sorted: the generation config's (possibly several), the model config's and the
    tokenizer's. A sequence ends at the first of them it generates."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
