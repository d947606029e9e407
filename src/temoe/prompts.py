"""Prompt files: JSONL with a `prompt` string per line, an optional `category` and an optional `id`; the one
reader every command uses, with `file:line` errors, and the check that a prompt fits the model's positions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("temoe")

DEFAULT_CATEGORY = "uncategorised"


@dataclass(frozen=True)
class Prompt:
    """One line of a prompt file."""

    id: str | int
    """The line's `id`, or its 0-based line number among non-blank lines when absent."""
    prompt: str
    """The prompt text."""
    category: str
    """The line's `category` (Table 1 columns: chat, code, math, ...), or "uncategorised"."""
    where: str = ""
    """`file:line` of the prompt, for messages."""


def load_prompts(path: str | Path, per_category: int | None = None) -> list[Prompt]:
    """Read a prompt JSONL file; `per_category` keeps the first n prompts of each category.

    Raises FileNotFoundError for a missing file and ValueError for an empty file, a line that is not a JSON
    object, or a line without a string `prompt` field (naming the file, the line and the fields found).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    prompts: list[Prompt] = []
    kept: dict[str, int] = {}
    index = -1  # among non-blank lines: the default id
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        index += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}:{number}: needs a string 'prompt' field (optional 'category', 'id'); "
                             f"found {fields}")
        category = str(row.get("category", DEFAULT_CATEGORY))
        if per_category is not None and kept.get(category, 0) >= per_category:
            continue
        kept[category] = kept.get(category, 0) + 1
        prompts.append(Prompt(id=row.get("id", index), prompt=row["prompt"], category=category,
                              where=f"{path}:{number}"))
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} is empty: expected JSONL lines like "
                         '{"prompt": "...", "category": "chat"}')
    return prompts


def check_fits(prompt_tokens: int, max_new_tokens: int, max_positions: int | None, what: str = "the prompt"
               ) -> None:
    """ValueError when prompt + response tokens exceed the model's `max_positions` (None = unbounded)."""
    if max_positions is not None and prompt_tokens + max_new_tokens > max_positions:
        raise ValueError(f"{what} ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's {max_positions} positions; shorten it or lower max_new_tokens")


def keep_fitting(prompts: list[Prompt], count_tokens: Callable[[str], int], limit: int | None,
                 what: str = "the model's positions") -> list[Prompt]:
    """The prompts of at most `limit` tokens; those dropped are counted in one warning that names the first
    few (file:line).

    A prompt of more than 64 characters per allowed token is dropped without tokenising it, so a 1 MB
    line costs nothing. ValueError if none is left.
    """
    if limit is None:
        return prompts
    kept, dropped = [], []
    for p in prompts:
        fits = len(p.prompt) <= 64 * limit and count_tokens(p.prompt) <= limit
        (kept if fits else dropped).append(p)
    if dropped:
        names = ", ".join(str(p.where or p.id) for p in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        log.warning("%d of %d prompts exceed %s (%d tokens) and are skipped: %s", len(dropped), len(prompts),
                    what, limit, names)
    if not kept:
        raise ValueError(f"every prompt exceeds {what} ({limit} tokens)")
    return kept
