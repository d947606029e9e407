"""Serving a trained checkpoint: `temoe serve --checkpoint` wiring and the ladder's trained-controller row."""

from __future__ import annotations

import argparse

import pytest

from temoe.serve.bench import run_ladder
from temoe.serve.generate import generate_offloaded
from temoe.testing import char_tokenizer
from temoe.train.config import load_config
from temoe.train.trainer import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = {"model": "testing:gpt_oss", "controller.k_hat": 4, "prompts_per_step": 2, "max_new_tokens": 4,
              "controller.hidden": 16, "controller.expert_embed_dim": 8, "lora_rank": 2, "lora_alpha": 2,
              "progress": False, "cpu_threads": 1, "steps": 1, "checkpoint_every": 1, "keep_checkpoints": 1,
              "out_dir": str(out)}
    train(load_config(None, config))
    return out


@pytest.mark.slow
def test_serve_and_bench_with_a_trained_checkpoint(checkpoint):
    from temoe.cli.serve import build_engine

    args = argparse.Namespace(model="tiny-random:gpt_oss", checkpoint=str(checkpoint), offload=True,
                              expert_budget=None, device="cpu", num_layers=None)
    engine, tok, controller = build_engine(args)
    assert engine.policy.name == "option" and engine.policy.num_slots == controller.k_hat == 4
    handle = engine.handle
    engine.detach()
    _, stats = generate_offloaded(handle.model, tok, "Hello there", 4, controller=controller, handle=handle)
    assert stats["serve/controller"] is True and stats["serve/expert_budget"] == 4
    result = run_ladder(handle, char_tokenizer(), prompts=["Hi"], max_new_tokens=3, controller=controller)
    assert [r["rung"] for r in result["rows"]] == ["full residency", "LRU cache, budget 4",
                                                   "trained controller k̂=4"]
    assert result["environment"]["option_source"] == "trained controller"
