"""Task and corpus generators are deterministic given a seed, and the shipped data files match them."""

from __future__ import annotations

import random

import pytest

from temoe.embedded import build_data, load_jsonl, math_problems, multiple_choice, world
from temoe.embedded.corpus import Corpus


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(seed=0, natural_chars=20_000, require_sources=False)


def test_world_is_deterministic_and_unique():
    a, b = world.make_world(seed=0), world.make_world(seed=0)
    assert a == b
    assert world.make_world(seed=1) != a
    names = [c.name for c in a] + [c.capital for c in a]
    assert len(names) == len(set(names))


def test_math_and_mc_generators_are_deterministic():
    assert math_problems.test_problems(seed=0) == math_problems.test_problems(seed=0)
    assert math_problems.test_problems(seed=0) != math_problems.test_problems(seed=1)
    assert multiple_choice.test_questions(0) == multiple_choice.test_questions(0)
    assert multiple_choice.multilingual_test_questions(seed=0) == multiple_choice.multilingual_test_questions(
        seed=0
    )


def test_math_solutions_are_correct():
    rng = random.Random(0)
    for _ in range(500):
        p = math_problems.train_problem(rng, set())
        a, b = p.operands
        expected = {"add": a + b, "sub": a - b, "solve_add": b - a, "mul": a * b, "solve_mul": b // a}[p.kind]
        assert p.answer == str(expected)
        assert p.solution.endswith(f"\\boxed{{{expected}}}.")


def test_corpus_samples_are_deterministic(corpus):
    draw = lambda seed: [corpus.sample(random.Random(seed)) for _ in range(5)]  # noqa: E731
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_shipped_data_matches_generators():
    assert load_jsonl("math_test") == build_data.math_rows(0)
    assert load_jsonl("mc_test") == build_data.mc_rows(multiple_choice.test_questions(0), "mc")
    mmc = build_data.mc_rows(multiple_choice.multilingual_test_questions(seed=0), "mmc")
    assert load_jsonl("mc_multilingual_test") == mmc


def test_shipped_data_sizes_and_fields():
    for name in ("math_test", "mc_test", "mc_multilingual_test"):
        assert len(load_jsonl(name)) >= 200
    for row in load_jsonl("mc_multilingual_test"):
        assert (
            len(row["choices"]) == 4
            and row["answer"] in "ABCD"
            and row["lang"] in ("de", "es", "fr", "it", "ja")
        )
    prompts = load_jsonl("prompts")
    cats = {p["category"] for p in prompts}
    assert {"chat", "code", "math", "stem", "en", "de", "es", "fr", "it", "ja"} <= cats
    for c in cats:
        assert sum(p["category"] == c for p in prompts) >= 100
