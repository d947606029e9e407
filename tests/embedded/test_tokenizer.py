"""The shipped tokenizer round-trips every language and task format, and prompts tokenize as prefixes."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from temoe.embedded import MODELS, load_jsonl, tasks

SAMPLES = [
    "The capital of Veltria is Morn.",
    "Die Hauptstadt von Veltria ist Morn. Größe: 12 µm, Straße, Äpfel.",
    "¿Cuál es la capital de Veltria? Año 1492, niño, pingüino.",
    "Quelle est la capitale de Veltria ? Où, déjà, garçon, cœur.",
    "Qual è la capitale di Veltria? Perché, città.",
    "Veltriaの首都はMornです。日本語のテキスト、カタカナ、ひらがな。",
    "def f(x: int) -> int:\n    return x ** 2  # tabs\tand emoji 🙂",
    "Problem: What is 47 + 38?\nSolution: 47 + 38 = 85. The answer is \\boxed{85}.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODELS["tiny"])


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_round_trip_shipped_prompts(tokenizer):
    for row in load_jsonl("prompts"):
        ids = tokenizer(row["prompt"])["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == row["prompt"]


def test_special_tokens(tokenizer):
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3


def test_digits_are_single_tokens(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345", add_special_tokens=False)["input_ids"])
    assert pieces == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    "task,name", [("math", "math_test"), ("mc", "mc_test"), ("mc_multilingual", "mc_multilingual_test")]
)
def test_prompt_is_token_prefix_of_training_text(tokenizer, task, name):
    # The model was trained on prompt + completion; at test time it sees the prompt alone, so the prompt's
    # tokens must be a prefix of the training document's tokens.
    for item in load_jsonl(name)[:50]:
        prompt = tasks.format_prompt(item, task)
        if task == "math":
            full = tasks.math_document(item["question"], f"x. The answer is \\boxed{{{item['answer']}}}.")
        else:
            full = tasks.mc_document(item["question"], item["choices"], item["answer"])
        p, f = tokenizer(prompt)["input_ids"], tokenizer(full)["input_ids"]
        assert f[: len(p)] == p
