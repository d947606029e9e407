"""The exact prompt and completion text of each embedded task (graded by `temoe.eval.tasks.grade`).

`format_prompt(item, task)` is the text the embedded model saw right before an answer during pretraining:
math answers follow as ` <worked steps> The answer is \\boxed{N}.`, multiple-choice answers as
` <option text>. A. <option>, B. <option>. The answer is B.` (recall, scan the options to it, its letter).
"""

from __future__ import annotations

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
    """Multiple-choice prompt ending in 'Answer:' (the model continues with `mc_completion`)."""
    if len(choices) != 4:
        raise ValueError(f"multiple-choice items need 4 choices, got {len(choices)}")
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def math_document(question: str, solution: str) -> str:
    """A full training document for a math problem: prompt, one space, worked solution."""
    return f"Problem: {question}\nSolution: {solution}"


def mc_scan(choices: Sequence[str], index: int) -> str:
    """The options from A up to the one at `index`, as "A. salt, B. wool" (the scan of `mc_completion`)."""
    return ", ".join(f"{LETTERS[j]}. {choices[j]}" for j in range(index + 1))


def mc_completion(choices: Sequence[str], answer: str) -> str:
    """The trained answer to a multiple-choice prompt: the recalled option, a scan to it, then its letter.

    ` wool. A. salt, B. wool. The answer is B.` Each step is a circuit small transformers learn early:
    recall the fact; copy option lines in order (an induction copy); stop at the copy that repeats the
    recalled text; copy the letter written a few tokens back. Answering with the bare letter, or with the
    option then its letter (` wool. The answer is B.`), asks for a lookup from the option's text to the letter
    in front of it, which a model this small does not learn (docs/embedded.md).
    """
    index = LETTERS.index(answer)
    return f" {choices[index]}. {mc_scan(choices, index)}. The answer is {answer}."


def mc_document(question: str, choices: Sequence[str], answer: str) -> str:
    """A full training document for a multiple-choice question: prompt, then `mc_completion`."""
    return mc_prompt(question, choices) + mc_completion(choices, answer)


def lookup_drill(choices: Sequence[str], rng) -> str:
    """A training document that practises the option scan of `mc_completion` for all four options.

    "Options:\nA. salt\nB. wool\nC. tin\nD. rice\nFind tin: A. salt, B. wool, C. tin. It is C.\n..."
    The prefix differs from a question ("Options:"/"Find", not "Question:"/"Answer:"), so the drill never
    teaches a second answer after the first one.
    """
    lines = ["Options:"] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    order = list(range(len(choices)))
    rng.shuffle(order)
    lines += [f"Find {choices[i]}: {mc_scan(choices, i)}. It is {LETTERS[i]}." for i in order]
    return "\n".join(lines)
