"""The shipped embedded model loads by name and from its directory, generates, and beats chance."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import temoe
from temoe.embedded import MODELS, load_jsonl, tasks
from temoe.embedded.measure import generate_greedy
from temoe.loading import load_model

SLICE = 40


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return load_model("tiny")


def test_loads_by_name_and_directory(loaded):
    model, tokenizer = loaded
    assert model.config.model_type == "gpt_oss"
    assert model.config.num_local_experts == 32 and model.config.num_experts_per_tok == 4
    assert not model.config.output_router_logits
    same = AutoModelForCausalLM.from_pretrained(MODELS["tiny"])
    assert model.config.to_dict()["num_hidden_layers"] == same.config.num_hidden_layers
    assert (MODELS["tiny"] / "model.safetensors").stat().st_size <= 32 * 2**20


def test_unknown_name_lists_embedded_models():
    with pytest.raises(ValueError, match="tiny"):
        load_model("no-such-model")


def test_wrap_reads_routing_shape(loaded):
    handle = temoe.wrap(loaded[0])
    try:
        assert (handle.num_experts, handle.top_k) == (32, 4) and handle.num_layers >= 2
    finally:
        handle.unwrap()


def test_generates(loaded):
    model, tokenizer = loaded
    [text] = generate_greedy(model, tokenizer, ["The capital of"], max_new_tokens=8)
    assert text.strip()


@pytest.mark.parametrize(
    "task,name,chance",
    [("math", "math_test", 0.0), ("mc", "mc_test", 0.25), ("mc_multilingual", "mc_multilingual_test", 0.25)],
)
def test_beats_chance_on_a_slice(loaded, task, name, chance):
    model, tokenizer = loaded
    items = load_jsonl(name)
    if task == "mc_multilingual":  # a slice covering every language
        items = [it for i, it in enumerate(items) if i % 60 < SLICE // 5]
    items = items[:SLICE]
    prompts = [tasks.format_prompt(it, task) for it in items]
    completions = generate_greedy(model, tokenizer, prompts, max_new_tokens=40 if task == "math" else 2)
    grade = tasks.grade_math if task == "math" else tasks.grade_mc
    acc = sum(grade(c, it["answer"]) for c, it in zip(completions, items)) / len(items)
    # 40 items: chance 0.25 has std 0.068, so 0.40 is more than two standard deviations above it.
    assert acc >= chance + 0.15, f"{task}: accuracy {acc:.2f} on {len(items)} items"
