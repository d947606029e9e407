"""Training prompts: read a JSONL file, apply the chat template, drop over-long prompts, and hand out the
left-padded batch of step s deterministically (so a resumed run sees exactly the prompts it would have seen).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from temoe.prompts import keep_fitting, load_prompts
from temoe.rollout.text import encode_prompt


def resolve_prompts_path(spec: str) -> Path:
    """`embedded:NAME` -> `temoe.embedded.data_path(NAME)`; anything else is a file path."""
    if spec.startswith("embedded:"):
        from temoe.embedded import data_path

        return Path(data_path(spec.split(":", 1)[1]))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {spec!r} not found (config key prompts)")
    return path


class PromptSource:
    """Tokenised prompts; `batch(step, rank, world)` returns this process's slice of step `step`'s prompts."""

    def __init__(self, prompts: list[list[int]], per_step: int, seed: int, pad_token_id: int):
        if not prompts:
            raise ValueError("no training prompts (every prompt is empty after tokenisation)")
        self.prompts, self.per_step, self.seed, self.pad_token_id = prompts, per_step, seed, pad_token_id

    @classmethod
    def from_jsonl(
        cls,
        spec: str,
        tokenizer,
        *,
        per_step: int,
        seed: int,
        max_prompt_tokens: int,
        chat_template: bool = True,
        pad_token_id: int,
    ) -> PromptSource:
        prompts = keep_fitting(load_prompts(resolve_prompts_path(spec)),  # §5: at most 512 prompt tokens
                               lambda text: len(encode_prompt(tokenizer, text, chat_template)),
                               max_prompt_tokens, "max_prompt_tokens")
        encoded = [encode_prompt(tokenizer, p.prompt, chat_template) for p in prompts]
        return cls([ids for ids in encoded if ids], per_step, seed, pad_token_id)

    def indices(self, step: int) -> list[int]:
        """Global prompt indices of step `step` (0-based): seeded permutations per epoch, in order."""
        n, out, start = len(self.prompts), [], step * self.per_step
        for pos in range(start, start + self.per_step):
            epoch, offset = divmod(pos, n)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def _permutation(self, epoch: int) -> Tensor:
        """The seeded prompt order of `epoch`."""
        n = len(self.prompts)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def probe_indices(self, count: int) -> list[int]:
        """`count` fixed prompt indices for held-out probes: the last `count` of the first epoch's
        permutation, which training reaches only after `len(prompts) - count` prompts (`probe_held_out`)."""
        n = len(self.prompts)
        if not 0 < count <= n:
            raise ValueError(f"probe prompt count must be in [1, {n}] (the usable prompts), got {count}")
        return [int(i) for i in self._permutation(0)[n - count:]]

    def probe_held_out(self, count: int, steps: int) -> bool:
        """True when `steps` training steps never reach the probe prompts."""
        return steps * self.per_step <= len(self.prompts) - count

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        """(ids (B, P) long left-padded, mask (B, P) bool) for this process, B = per_step / world."""
        return self._pad(self.indices(step), rank, world)

    def probe_batch(self, count: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        """Like `batch`, for the fixed probe prompts (`probe_indices`)."""
        return self._pad(self.probe_indices(count), rank, world)

    def _pad(self, idx: list[int], rank: int, world: int) -> tuple[Tensor, Tensor]:
        b = len(idx) // world
        seqs = [self.prompts[i] for i in idx[rank * b : (rank + 1) * b]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = True
        return ids, mask
