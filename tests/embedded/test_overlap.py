"""Held-out test items never occur in the pretraining text."""

from __future__ import annotations

import random

import pytest

from temoe.embedded import load_jsonl, math_problems, multiple_choice, task_prompts, tasks
from temoe.embedded.corpus import DRILL_SHARES, Corpus
from temoe.eval.measure import grade
from temoe.eval.tasks import load_task


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



def _test_prompts() -> set[str]:
    """The prompts `temoe eval` builds for the three embedded tasks' test items."""
    return {load_task(name, limit=None).prompt(item) for name in ("math", "mc", "mc-multilingual")
            for item in load_task(name, limit=None).items}


def test_task_prompts_are_training_items_disjoint_from_the_test_files():
    rows = load_jsonl("task_prompts")
    assert rows == task_prompts.task_prompt_rows(seed=0)  # the shipped file is what build_data writes
    test = _test_prompts()
    assert len(test) > 700 and not [r["prompt"] for r in rows if r["prompt"] in test]
    assert len({r["prompt"] for r in rows}) == len(rows)
    held = math_problems.held_out_keys(0)  # test keys and the prompt set's
    assert not [p.key for p in task_prompts.math_items(200, 0) if p.key in held]
    _, _, test_countries = multiple_choice.split_world(0)
    names = {c.name for c in test_countries}
    for langs in (("en",), multiple_choice.MULTILINGUAL_LANGS):
        assert not [q.country for q in task_prompts.mc_items(200, langs, 0) if q.country in names]


def test_task_prompts_are_formatted_as_evaluation_formats_them_in_the_tasks_proportions():
    rows = load_jsonl("task_prompts")
    assert {c: sum(r["category"] == c for r in rows) for c in tasks.TASKS} == dict.fromkeys(tasks.TASKS, 200)
    langs = [r["lang"] for r in rows if r["category"] == "mc_multilingual"]
    per_lang = {lang: langs.count(lang) for lang in set(langs)}
    assert per_lang == dict.fromkeys(multiple_choice.MULTILINGUAL_LANGS, 40)
    math = task_prompts.math_items(200, 0)
    assert [p.kind for p in math[:6]] == list(math_problems.TEST_KINDS) * 2  # the test's kinds, in turn
    evaluated = {"math": load_task("math", limit=None), "mc": load_task("mc", limit=None)}
    expected = [evaluated["math"].prompt({"question": p.question}) for p in math]
    for langs in (("en",), multiple_choice.MULTILINGUAL_LANGS):
        expected += [evaluated["mc"].prompt({"question": q.question, "choices": list(q.choices)})
                     for q in task_prompts.mc_items(200, langs, 0)]
    assert [r["prompt"] for r in rows] == expected
