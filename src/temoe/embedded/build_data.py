"""Write the shipped evaluation and prompt files to `embedded/data/` (`python -m temoe.embedded.build_data`).

Files: math_test.jsonl, mc_test.jsonl, mc_multilingual_test.jsonl, prompts.jsonl, calibration.jsonl,
task_prompts.jsonl (`temoe.embedded.task_prompts`).
All are deterministic given the seed; the test files' items are never trained on, and task_prompts.jsonl (the
controllers' training prompts for the tasks) holds training-side items only (tests/embedded/test_overlap.py).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from temoe.embedded import DATA_DIR, math_problems, multiple_choice, task_prompts
from temoe.embedded.corpus import Corpus

CALIBRATION_SIZE = 128  # §5: 128 calibration prompts of the training distribution


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"[temoe] wrote {len(rows)} rows to {path}")


def math_rows(seed: int = 0) -> list[dict]:
    """Rows of math_test.jsonl: id, question, answer (plus kind for per-kind breakdowns)."""
    return [
        {"id": f"math-{i:04d}", "question": p.question, "answer": p.answer, "kind": p.kind}
        for i, p in enumerate(math_problems.test_problems(seed=seed))
    ]


def mc_rows(questions: list[multiple_choice.MCQuestion], prefix: str) -> list[dict]:
    """Rows of the MC files: id, question, choices, answer, lang, subject."""
    return [
        {
            "id": f"{prefix}-{i:04d}",
            "question": q.question,
            "choices": list(q.choices),
            "answer": q.answer,
            "lang": q.lang,
            "subject": q.subject,
        }
        for i, q in enumerate(questions)
    ]


def build(out: Path = DATA_DIR, seed: int = 0, corpus: Corpus | None = None) -> None:
    """Write every shipped data file into `out`."""
    corpus = corpus or Corpus(seed=seed)
    _write(out / "math_test.jsonl", math_rows(seed))
    _write(out / "mc_test.jsonl", mc_rows(multiple_choice.test_questions(seed), "mc"))
    _write(
        out / "mc_multilingual_test.jsonl",
        mc_rows(multiple_choice.multilingual_test_questions(seed=seed), "mmc"),
    )
    prompts = [{"id": f"prompt-{i:04d}", **p} for i, p in enumerate(corpus.prompts())]
    _write(out / "prompts.jsonl", prompts)
    rng = random.Random(f"calibration-{seed}")
    _write(out / "calibration.jsonl", sorted(rng.sample(prompts, CALIBRATION_SIZE), key=lambda r: r["id"]))
    _write(out / "task_prompts.jsonl", task_prompts.task_prompt_rows(seed=seed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-missing-sources", action="store_true",
                        help="build the prompts from the installed Debian text sources only")
    args = parser.parse_args(argv)
    build(args.out, args.seed, Corpus(seed=args.seed, require_sources=not args.allow_missing_sources))


if __name__ == "__main__":
    main()
