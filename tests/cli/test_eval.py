"""`temoe eval` through a subprocess on a tiny random model (`testing:gpt_oss`), plus its user-facing
errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from temoe.cli.main import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _mc_file(tmp_path: Path) -> Path:
    f = tmp_path / "mc.jsonl"
    rows = [{"id": f"q{i}", "question": f"question {i}", "choices": ["w", "x", "y", "z"],
             "answer": "ABCD"[i % 4]} for i in range(6)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_eval_subprocess_writes_summary_and_records(tmp_path):
    out, recs = tmp_path / "out.json", tmp_path / "records.jsonl"
    cmd = [sys.executable, "-m", "temoe.cli.main", "eval", "--model", "testing:gpt_oss",
           "--baseline", "random", "--k-hat", "4", "--task", "mmlu", "--data", str(_mc_file(tmp_path)),
           "--limit", "4", "--json", str(out), "--records", str(recs), "--max-new-tokens", "5",
           "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["n"] == 4 and summary["method"] == "random" and summary["k_hat"] == 4
    low, high = summary["accuracy_ci"]
    assert 0 <= low <= summary["accuracy"] <= high <= 1
    assert summary["switch_rate_definition"] == "mask" and summary["switch_rate"] > 0.5  # fresh set per token
    assert len(recs.read_text().splitlines()) == 4


def test_eval_errors_name_the_bad_value(tmp_path, capsys):
    args = ["eval", "--model", "testing:gpt_oss", "--k-hat", "1", "--task", "mmlu", "--data",
            str(_mc_file(tmp_path)), "--limit", "2", "--json", str(tmp_path / "o.json"),
            "--max-new-tokens", "2", "--baseline", "random"]
    assert main(args) == 2
    assert "k_hat=1 out of range" in capsys.readouterr().err
    assert main(["eval", "--k-hat", "4", "--task", "mmlu", "--json", str(tmp_path / "o.json")]) == 2
    assert "--data PATH" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_with_a_trained_checkpoint(tmp_path, capsys):
    from temoe.train.config import load_config
    from temoe.train.trainer import train

    cfg = load_config(None, {"model": "testing:gpt_oss", "controller.k_hat": 4, "controller.eta": 0.03,
                             "out_dir": str(tmp_path / "run"), "steps": 1, "prompts_per_step": 2,
                             "max_new_tokens": 4, "controller.hidden": 16, "controller.expert_embed_dim": 8,
                             "progress": False})
    train(cfg)
    out = tmp_path / "ctrl.json"
    args = ["eval", "--model", "testing:gpt_oss", "--checkpoint", str(tmp_path / "run"), "--k-hat", "4",
            "--task", "mmlu", "--data", str(_mc_file(tmp_path)), "--limit", "3", "--json", str(out),
            "--max-new-tokens", "4"]
    assert main(args) == 0
    summary = json.loads(out.read_text())
    assert summary["method"] == "controller" and summary["eta"] == 0.03 and summary["n"] == 3
    assert summary["switch_rate_definition"] == "mask" and summary["controller_mode"] == "sample"
    assert main(args[:6] + ["8"] + args[7:]) == 2  # k̂ differs from the checkpoint's
    assert "trained with k̂ = 4" in capsys.readouterr().err
