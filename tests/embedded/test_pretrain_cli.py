"""`temoe pretrain` runs a few resumable steps on a sliver of the corpus (CPU smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _pretrain(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "temoe.cli.main", "pretrain", "--size", "ci", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_pretrain_smoke_and_resume(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    proc = _pretrain("--out", str(out), "--steps", "3", "--export", str(export))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["loss/lm"] > 0 and x["loss/router_aux"] > 0 for x in lines)
    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.config.model_type == "gpt_oss" and not model.config.output_router_logits
    assert len(AutoTokenizer.from_pretrained(export)) == model.config.vocab_size

    proc = _pretrain("--out", str(out), "--steps", "4", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stdout + proc.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
