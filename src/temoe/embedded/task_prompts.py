"""Controller-training prompts from the distribution of the three embedded tasks (`task_prompts.jsonl`).

Each prompt is a training-side item (a math problem whose key is not held out, a multiple-choice question
about a training country) formatted exactly as `temoe eval` formats a test item (`tasks.format_prompt`), in
the proportions of the three tasks as evaluated (equal numbers of math, English and multilingual
multiple-choice prompts; the multilingual third split evenly over its languages). No prompt is a test item
(tests/embedded/test_overlap.py), so the task test files stay held out from controller training.
"""

from __future__ import annotations

import random

from temoe.embedded import math_problems, multiple_choice, tasks

PER_TASK = 200
"""Prompts per task: 600 in all, more than the tiny config's 80 steps x 4 prompts draw."""


def math_items(n: int, seed: int = 0) -> list[math_problems.MathProblem]:
    """`n` distinct training-side problems of the test's kinds, cycling through them as the test does."""
    rng = random.Random(f"task-prompts-math-{seed}")
    held_out = math_problems.held_out_keys(seed)
    out: list[math_problems.MathProblem] = []
    seen: set[tuple[str, tuple[int, int]]] = set()
    while len(out) < n:
        p = math_problems.train_problem(rng, held_out)
        if p.kind == math_problems.TEST_KINDS[len(out) % len(math_problems.TEST_KINDS)] and p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def mc_items(n: int, langs: tuple[str, ...], seed: int = 0) -> list[multiple_choice.MCQuestion]:
    """`n` distinct training questions (training countries only), split evenly over `langs`."""
    world, train, _ = multiple_choice.split_world(seed)
    rng = random.Random(f"task-prompts-mc-{'-'.join(langs)}-{seed}")
    out: list[multiple_choice.MCQuestion] = []
    for i, lang in enumerate(langs):
        share = n // len(langs) + (i < n % len(langs))
        seen: set[str] = set()
        while len(seen) < share:
            q = multiple_choice.train_question(rng, world, train, lang)
            if q.question + "\n".join(q.choices) not in seen:
                seen.add(q.question + "\n".join(q.choices))
                out.append(q)
    return out


def task_prompt_rows(per_task: int = PER_TASK, seed: int = 0) -> list[dict]:
    """Rows of task_prompts.jsonl: id, category (math, mc, mc_multilingual), lang, prompt."""
    rows = [{"category": "math", "lang": "en",
             "prompt": tasks.format_prompt({"question": p.question}, "math")}
            for p in math_items(per_task, seed)]
    for category, langs in (("mc", ("en",)), ("mc_multilingual", multiple_choice.MULTILINGUAL_LANGS)):
        rows += [{"category": category, "lang": q.lang,
                  "prompt": tasks.format_prompt({"question": q.question, "choices": q.choices}, category)}
                 for q in mc_items(per_task, langs, seed)]
    return [{"id": f"task-{i:04d}", **row} for i, row in enumerate(rows)]
