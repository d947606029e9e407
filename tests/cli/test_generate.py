"""`temoe generate` through a subprocess: JSON with text and switch rate, with and without a checkpoint."""

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


def test_generate_with_checkpoint_prints_text_and_switch_rate(run_dir):
    proc = _temoe(
        "generate",
        "--model",
        "testing:gpt_oss",
        "--checkpoint",
        str(run_dir),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "12",
        "--json",
    )
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(record["text"], str)
    assert record["num_tokens"] >= 1
    assert record["switch_rate"] is None or 0.0 <= record["switch_rate"] <= 1.0


def test_generate_base_model_reports_router_switch_rate():
    proc = _temoe(
        "generate",
        "--model",
        "testing:gpt_oss",
        "--prompt",
        "abc",
        "--max-new-tokens",
        "10",
        "--temperature",
        "0",
        "--json",
    )
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    if record["num_tokens"] >= 2:
        assert 0.0 <= record["switch_rate"] <= 1.0


def test_generate_with_offload_adds_stats(run_dir):
    proc = _temoe(
        "generate",
        "--model",
        "testing:gpt_oss",
        "--checkpoint",
        str(run_dir),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "6",
        "--offload",
        "--json",
    )
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "stats" in record and isinstance(record["text"], str)
