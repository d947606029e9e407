"""`temoe info` prints the MoE facts of the embedded model (subprocess, like a user)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _info(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "temoe.cli.main", "info", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_info_json_tiny():
    proc = _info("tiny", "--json", "--k-hat", "8")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["model_type"] == "gpt_oss"
    assert (info["num_experts"], info["top_k"], info["k_hat"]) == (32, 4, 8)
    assert 0 < info["expert_params"] < info["total_params"]
    # Equal-sized experts: 8 of 32 resident experts hold a quarter of the expert bytes.
    assert info["expert_bytes_at_k_hat"] * 4 == info["expert_bytes_all"]


def test_info_unknown_model_lists_names():
    proc = _info("no-such-model", "--json")
    assert proc.returncode == 2
    assert "tiny" in proc.stderr


def test_info_k_hat_out_of_range():
    proc = _info("tiny", "--k-hat", "2")
    assert proc.returncode == 2
    assert "k_hat" in proc.stderr
