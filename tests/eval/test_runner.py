"""The batched runner: greedy output equals HF generate, left padding does not change a sequence's tokens,
records carry every field, and base switch rates follow `temoe.metrics.router_switch_rate`."""

from __future__ import annotations

import json

import pytest
import torch

import temoe
from temoe import metrics
from temoe.eval.runner import evaluate
from temoe.eval.tasks import load_task
from temoe.rollout.masks import BaseSource
from temoe.rollout.runner import GenerationConfig, generate
from temoe.testing import tiny_model

GREEDY = GenerationConfig(max_new_tokens=8, temperature=0.0, batch_size=2, seed=0)


@pytest.fixture(scope="module")
def handle():
    h = temoe.wrap(tiny_model("gpt_oss", seed=0))
    yield h
    h.unwrap()


def test_greedy_matches_hf_generate(handle, tokenizer):
    prompt = "abc def"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    ref = handle.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    ours = generate(handle, tokenizer, [prompt], BaseSource(4), GREEDY, torch.Generator(), eos_ids=set())[0]
    assert ours.token_ids == ref


def test_left_padding_does_not_change_tokens(handle, tokenizer):
    alone = generate(handle, tokenizer, ["hi"], BaseSource(4), GREEDY, torch.Generator(), eos_ids=set())[0]
    prompts = ["a much longer prompt than the other", "hi"]
    batched = generate(handle, tokenizer, prompts, BaseSource(4), GREEDY, torch.Generator(), eos_ids=set())[1]
    assert batched.token_ids == alone.token_ids
    torch.testing.assert_close(batched.router_logits, alone.router_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(batched.expert_ids, alone.expert_ids)


def test_base_switch_rate_is_the_router_definition(handle, tokenizer):
    g = generate(handle, tokenizer, ["xyz"], BaseSource(4), GREEDY, torch.Generator(), eos_ids=set())[0]
    assert g.router_logits.shape == (8, 2, 8) and g.expert_ids.shape == (8, 2, 2)
    assert g.switch_rate == pytest.approx(metrics.router_switch_rate(g.router_logits, g.expert_ids, 4))
    g_full = generate(handle, tokenizer, ["xyz"], BaseSource(8), GREEDY, torch.Generator(), eos_ids=set())[0]
    assert g_full.switch_rate == 0.0 and g_full.experts_loaded == 0  # k̂ = N: the option never changes


def test_evaluate_writes_one_record_per_question(handle, tokenizer, tmp_path):
    data = tmp_path / "mc.jsonl"
    rows = [{"id": f"q{i}", "question": f"question {i}", "choices": ["a", "b", "c", "d"], "answer": "B"}
            for i in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task("mmlu", data, limit=3, seed=42)
    cfg = GenerationConfig(max_new_tokens=5, batch_size=2, seed=42)
    summary, records = evaluate(handle, tokenizer, task, BaseSource(4), cfg,
                                records_path=tmp_path / "r.jsonl")
    assert summary["n"] == 3 and 0 <= summary["accuracy"] <= 1 and len(summary["accuracy_ci"]) == 2
    assert summary["method"] == "base" and summary["k_hat"] == 4 and summary["task"] == "mmlu"
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[0])
    assert set(rec) >= {"id", "prompt", "completion", "prediction", "answer", "correct", "switch_rate",
                        "experts_loaded", "active_experts"}
    assert all(len(json.loads(x)["active_experts"]) == json.loads(x)["n_generated"] for x in lines)
    assert all(len(pos) == 2 for x in lines for pos in json.loads(x)["active_experts"])  # L = 2 layers
    _, again = evaluate(handle, tokenizer, task, BaseSource(4), cfg)
    assert [r["completion"] for r in records] == [r["completion"] for r in again]  # seeded: reproducible


def test_mask_sources_record_option_members(handle, tokenizer, tmp_path):
    from temoe.baselines.random import RandomPerTokenMasks
    from temoe.rollout.masks import MaskFnSource

    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"id": "q", "question": "q", "choices": list("abcd"), "answer": "A"}) + "\n")
    source = MaskFnSource(RandomPerTokenMasks(2, 8, 4, torch.Generator().manual_seed(0)), "random", 4)
    _, records = evaluate(handle, tokenizer, load_task("mmlu", data), source,
                          GenerationConfig(max_new_tokens=4, seed=1))
    rec = records[0]
    assert rec["k_hat"] == 4 and "top_k" not in rec
    for members, routed in zip(rec["active_experts"], rec["routed_experts"]):  # per generated position
        for m, r in zip(members, routed):  # per layer: k̂ option members, k̃ routed ids inside them
            assert len(m) == 4 and set(r) <= set(m)
