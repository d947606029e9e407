"""The exact prompt and completion text of each embedded task, and the graders that read the completions.

`format_prompt(item, task)` is the text the embedded model saw right before an answer during pretraining:
math answers follow as ` <worked steps> The answer is \\boxed{N}.`, multiple-choice answers as ` X`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from temoe.embedded.multiple_choice import LETTERS

TASKS = ("math", "mc", "mc_multilingual")


def format_prompt(item: Mapping[str, Any], task: str) -> str:
    """Prompt text for one item (a row of math_test.jsonl, mc_test.jsonl or mc_multilingual_test.jsonl).

    math: "Problem: {question}\\nSolution:"; mc / mc_multilingual:
    "Question: {question}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:" (labels stay English in every
    language, as MMMLU keeps the answer format fixed).
    """
    if task == "math":
        return f"Problem: {item['question']}\nSolution:"
    if task in ("mc", "mc_multilingual"):
        return mc_prompt(item["question"], item["choices"])
    raise ValueError(f"unknown task {task!r}; valid: {TASKS}")


def mc_prompt(question: str, choices: Sequence[str]) -> str:
    """Multiple-choice prompt ending in 'Answer:' (the model continues with ' X')."""
    if len(choices) != 4:
        raise ValueError(f"multiple-choice items need 4 choices, got {len(choices)}")
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def math_document(question: str, solution: str) -> str:
    """A full training document for a math problem: prompt, one space, worked solution."""
    return f"Problem: {question}\nSolution: {solution}"


def mc_document(question: str, choices: Sequence[str], answer: str) -> str:
    """A full training document for a multiple-choice question: prompt, one space, the answer letter."""
    return f"{mc_prompt(question, choices)} {answer}"


_BOXED = re.compile(r"\\boxed\{")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} in text (balanced braces), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def grade_math(completion: str, answer: str) -> bool:
    """Exact match of the last \\boxed{} content with the answer (whitespace-insensitive)."""
    got = last_boxed(completion)
    return got is not None and got.replace(" ", "") == answer.replace(" ", "")


_LETTER = re.compile(r"^\s*\(?([ABCD])\b")


def extract_letter(completion: str) -> str | None:
    """The answer letter at the start of a completion that follows an 'Answer:' prompt, or None."""
    m = _LETTER.match(completion)
    return m.group(1) if m else None


def grade_mc(completion: str, answer: str) -> bool:
    """The completion starts with the correct letter."""
    return extract_letter(completion) == answer
