"""Prompt files: JSONL with a `prompt` string per line, an optional `category` and an optional `id`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
        prompts.append(Prompt(id=row.get("id", index), prompt=row["prompt"], category=category))
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} is empty: expected JSONL lines like "
                         '{"prompt": "...", "category": "chat"}')
    return prompts
