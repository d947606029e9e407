"""Shared fixtures: a minimal character tokenizer matching the tiny models' 128-token vocabulary."""

from __future__ import annotations

import pytest


class CharTokenizer:
    """ids 0 pad, 1 bos, 2 eos; every other character maps to 3 + (ord % 125). No chat template."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [3 + ord(c) % 125 for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 3 + 32) if 0 <= i - 3 + 32 < 127 else "?" for i in ids if i > 2)


@pytest.fixture
def tokenizer():
    return CharTokenizer()
