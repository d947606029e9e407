"""`temoe generate` through a subprocess: the same text and switch rate as the library call, with and
without a checkpoint, and the same tokens through the offloading engine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from temoe.testing import TINY_TRAIN
from temoe.train.config import load_config
from temoe.train.trainer import train

# Each test starts Python subprocesses that import torch/transformers: tens of seconds on a busy CPU.
pytestmark = pytest.mark.slow

SRC = str(Path(__file__).parents[2] / "src")


def _temoe(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "temoe.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(
        load_config(
            None,
            {**TINY_TRAIN, "steps": 1, "out_dir": str(out)},
        )
    )
    return out


def _record(*args):
    proc = _temoe("generate", "--model", "testing:gpt_oss", *args, "--json")
    return json.loads(proc.stdout.splitlines()[-1])


def _in_process(checkpoint, prompt, max_new_tokens, **kwargs):
    """The library call `temoe generate` wraps, with the CLI's defaults (seed 42, temperature 0.5)."""
    import temoe
    from temoe.inference import load_for_inference
    from temoe.rollout.inference import generate_text

    model, tokenizer = temoe.load_model("testing:gpt_oss")
    controller = None
    if checkpoint is None:
        handle = temoe.wrap(model)
    else:
        model, handle, controller = load_for_inference(model, checkpoint)
    kwargs = {"temperature": 0.5, "top_p": 0.95, "seed": 42, **kwargs}
    try:
        return generate_text(model, tokenizer, handle, prompt, max_new_tokens, controller=controller,
                             **kwargs)
    finally:
        handle.unwrap()


def test_generate_with_checkpoint_matches_the_library_call(run_dir):
    record = _record("--checkpoint", str(run_dir), "--prompt", "hello", "--max-new-tokens", "12")
    expected = _in_process(run_dir, "hello", 12)
    # The CLI loads the checkpoint's controller and LoRA and samples with the given seed: same text, same
    # count of generated tokens and the same option switch rate as the library call.
    assert record["text"] == expected.text and record["text"]
    assert record["num_tokens"] == expected.num_tokens == 12
    assert record["switch_rate"] == pytest.approx(expected.switch_rate)


def test_generate_base_model_is_greedy_at_temperature_zero_and_reports_router_switches():
    a = _record("--prompt", "abc", "--max-new-tokens", "10", "--temperature", "0", "--seed", "1")
    b = _record("--prompt", "abc", "--max-new-tokens", "10", "--temperature", "0", "--seed", "2")
    assert a == b  # greedy: the seed does not matter
    expected = _in_process(None, "abc", 10, temperature=0.0)
    assert a["text"] == expected.text and a["num_tokens"] == expected.num_tokens == 10
    # Without a controller the switch rate is the base router's (its top-k̃ set changes between tokens), not
    # an option rate: a random router changes its set at most tokens.
    assert a["switch_rate"] == pytest.approx(expected.switch_rate) and a["switch_rate"] > 0.5


def test_generate_with_offload_generates_the_same_tokens_from_k_hat_resident_experts(run_dir):
    offloaded = _record("--checkpoint", str(run_dir), "--prompt", "hi", "--max-new-tokens", "6", "--offload")
    plain = _record("--checkpoint", str(run_dir), "--prompt", "hi", "--max-new-tokens", "6")
    stats = offloaded["stats"]
    # The engine moves experts, not tokens: the same seed gives the same text as generation without it.
    assert offloaded["text"] == plain["text"] and stats["serve/new_tokens"] == 6
    # The option policy keeps k̂ = 4 of the 8 experts per layer resident (TINY_TRAIN's k_hat).
    assert stats["serve/mode"] == "option" and stats["serve/controller"] is True
    assert stats["serve/expert_slots_per_layer"] == TINY_TRAIN["controller.k_hat"] == 4
    assert stats["serve/resident_expert_fraction"] == pytest.approx(0.5)
