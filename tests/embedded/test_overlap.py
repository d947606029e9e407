"""Held-out test items never occur in the pretraining text."""

from __future__ import annotations

import random

import pytest

from temoe.embedded import load_jsonl, math_problems, multiple_choice, tasks
from temoe.embedded.corpus import DRILL_SHARES, Corpus
from temoe.eval.measure import grade


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(seed=0, natural_chars=20_000, require_sources=False)


@pytest.fixture(scope="module")
def training_docs(corpus) -> list[tuple[str, str]]:
    # Batches are drawn from random.Random(f"batch-{seed}-{step}"); sample the first steps' streams, from the
    # default mixture and from the late mixture with lookup drills (PretrainConfig.drill_from_step).
    late = corpus.with_shares(DRILL_SHARES)
    docs = []
    for step in range(40):
        rng = random.Random(f"batch-0-{step}")
        docs += [corpus.sample(rng) for _ in range(100)]
        docs += [late.sample(rng) for _ in range(100)]
    return docs


def test_late_mixture_has_lookup_drills(training_docs):
    drills = [doc for label, doc in training_docs if label == "drill/all"]
    assert len(drills) > 20
    for doc in drills[:20]:
        lines = doc.split("\n")
        options = {line[3:]: line[0] for line in lines[1:5]}
        assert len(lines) == 9
        for find in lines[5:]:  # "Find tin: A. salt, B. wool, C. tin. It is C."
            text, rest = find.removeprefix("Find ").split(": ", 1)
            scan, letter = rest.rstrip(".").rsplit(". It is ", 1)
            assert options[text] == letter
            assert scan.endswith(f"{letter}. {text}")


def test_mc_document_names_the_option_scans_then_gives_its_letter():
    doc = tasks.mc_document("Q?", ["salt", "wool", "tin", "rice"], "C")
    assert doc.endswith("Answer: tin. A. salt, B. wool, C. tin. The answer is C.")
    assert grade("mc", doc.split("Answer:", 1)[1], "C")


def test_math_keys_held_out():
    held = math_problems.held_out_keys(0)
    rng = random.Random(0)
    for _ in range(20_000):
        assert math_problems.train_problem(rng, held).key not in held


def test_mc_training_never_asks_about_test_countries():
    world, train, test = multiple_choice.split_world(0)
    test_names = {c.name for c in test}
    assert not test_names & {c.name for c in train}
    rng = random.Random(0)
    for lang in ("en", "de", "ja"):
        for _ in range(2_000):
            assert multiple_choice.train_question(rng, world, train, lang).country not in test_names


def test_test_items_not_in_training_text(training_docs):
    text = "\n".join(doc for _, doc in training_docs)
    mc_questions = [row["question"] for row in load_jsonl("mc_test") + load_jsonl("mc_multilingual_test")]
    assert not [q for q in mc_questions if q in text]
    # Question strings contain both operands, so a held-out key can never render as a training question.
    assert not [r["question"] for r in load_jsonl("math_test") if f"Problem: {r['question']}\n" in text]
    assert any(label.startswith("math/") for label, _ in training_docs)


def test_prompt_documents_not_trained_on(corpus):
    for cat, docs in corpus.prompt_docs.items():
        trained = set(corpus.natural[cat])
        assert not [d for d in docs if d in trained]
