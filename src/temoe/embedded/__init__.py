"""The embedded pretrained MoE (`tiny`, gpt-oss architecture) and its local benchmark and prompt data.

`MODELS` maps short names to shipped HF directories; `data_path(name)` locates a shipped JSONL file.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent
DATA_DIR = EMBEDDED_DIR / "data"
MODELS: dict[str, Path] = {"tiny": EMBEDDED_DIR / "tiny"}
DATA_FILES = (
    "math_test.jsonl",
    "mc_test.jsonl",
    "mc_multilingual_test.jsonl",
    "prompts.jsonl",
    "calibration.jsonl",
    "task_prompts.jsonl",
)


def data_path(name: str) -> Path:
    """Path of a shipped data file, e.g. `data_path("math_test.jsonl")` (the `.jsonl` suffix is optional)."""
    if not name.endswith(".jsonl"):
        name = f"{name}.jsonl"
    if name not in DATA_FILES:
        raise ValueError(f"unknown embedded data file {name!r}; valid: {', '.join(DATA_FILES)}")
    return DATA_DIR / name


def load_jsonl(name: str) -> list[dict]:
    """Rows of a shipped data file."""
    import json

    with data_path(name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
