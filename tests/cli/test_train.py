"""`temoe train` through a subprocess: flags and key=value overrides, metrics.jsonl, resume, early errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Each test starts Python subprocesses that import torch/transformers: tens of seconds on a busy CPU.
pytestmark = pytest.mark.slow

SRC = str(Path(__file__).parents[2] / "src")
SMALL = [
    "prompts_per_step=2",
    "max_new_tokens=4",
    "controller.hidden=16",
    "controller.expert_embed_dim=8",
    "lora_rank=2",
    "lora_alpha=2",
    "progress=false",
    "cpu_threads=1",
]


def _temoe(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "temoe.cli.main", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_train_writes_metrics_and_resolved_config_then_resumes(tmp_path):
    out = tmp_path / "run"
    proc = _temoe(
        "train",
        "--model",
        "testing:gpt_oss",
        "--k-hat",
        "4",
        "--eta",
        "0.03",
        "--steps",
        "1",
        "--out",
        str(out),
        *SMALL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1]
    assert {"step", "rollout/switch_rate", "rollout/reward"} <= set(lines[0])
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["controller"]["eta"] == 0.03 and resolved["controller"]["k_hat"] == 4
    assert resolved["max_new_tokens"] == 4
    assert resolved["gamma"] == 0.95  # defaults are written too
    proc = _temoe(
        "train",
        "--model",
        "testing:gpt_oss",
        "--k-hat",
        "4",
        "--eta",
        "0.03",
        "--steps",
        "2",
        "--out",
        str(out),
        "--resume",
        *SMALL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_bad_settings_fail_early_naming_the_key(tmp_path):
    proc = _temoe("train", "--model", "testing:gpt_oss", "--out", str(tmp_path), "tau=1.5")
    assert proc.returncode == 2 and "tau" in proc.stderr
    proc = _temoe("train", "--model", "testing:gpt_oss", "--out", str(tmp_path), "no_such_key=1")
    assert proc.returncode == 2 and "no_such_key" in proc.stderr and "valid keys" in proc.stderr
    proc = _temoe("train", "--model", "testing:gpt_oss", "--k-hat", "1", "--out", str(tmp_path), *SMALL)
    assert proc.returncode == 2 and "k_hat" in proc.stderr


def test_eta_auto_with_a_stall_budget_from_the_flags(tmp_path):
    out = tmp_path / "run"
    proc = _temoe("train", "--model", "testing:gpt_oss", "--k-hat", "4", "--eta", "auto", "--switch-cost",
                  "loads", "--stall-budget-ms", "2", "--hardware", "h100-gpt-oss-20b", "--steps", "1",
                  "--out", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ctrl = yaml.safe_load((out / "config.yaml").read_text())["controller"]
    assert (ctrl["eta"], ctrl["switch_cost"], ctrl["stall_budget_ms"], ctrl["hardware"]) == \
        ("auto", "loads", 2.0, "h100-gpt-oss-20b")
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["controller/eta"] == 0.02 and "controller/stall_ms_per_token" in record
    proc = _temoe("train", "--model", "testing:gpt_oss", "--eta", "auto", "--stall-budget-ms", "2",
                  "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "stall_budget_ms=2.0: needs a hardware profile" in proc.stderr
