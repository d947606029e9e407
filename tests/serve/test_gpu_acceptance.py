"""`benchmarks/gpu_acceptance.sh --dry-run` walks every step on CPU and exits 0; its report checks the serving
targets on a ladder (here a CPU one standing in for the gpt-oss-20b-shaped ladder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import temoe
from temoe.models import char_tokenizer
from temoe.serve.bench import run_ladder
from temoe.testing import tiny_model

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["versions", "pytest_gpu", "ladder_tiny", "ladder_20b", "profile_20b", "train_step"]


@pytest.mark.slow
def test_dry_run_walks_every_step(tmp_path):
    out = tmp_path / "acceptance"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_acceptance.sh"), "--dry-run", "--out", str(out),
                           "--python", sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "acceptance.json").read_text())
    assert [s["step"] for s in report["steps"]] == STEPS
    assert all(s["status"] == "dry-run" for s in report["steps"])
    assert "gpt-oss-20b-shaped ladder" in (out / "summary.md").read_text()
    script = str(ROOT / "benchmarks/gpu_acceptance.sh")
    again = subprocess.run(["bash", script, "--dry-run", "--out", str(out)], cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 2 and "not empty" in again.stderr  # never writes over an earlier run


def test_report_checks_targets_on_a_ladder(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_serve_report as report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    handle = temoe.wrap(tiny_model("gpt_oss"))
    ladder = run_ladder(handle, char_tokenizer(), prompts=["Hello there"], k_hats=[2, 4], max_new_tokens=4)
    (tmp_path / "ladder_20b.json").write_text(json.dumps(ladder, default=str))
    (tmp_path / "steps.tsv").write_text("ladder_20b\tok\t3\ttemoe bench serve ...\n")
    assert report.main([str(tmp_path)]) == 0
    result = json.loads((tmp_path / "acceptance.json").read_text())
    names = [t["target"] for t in result["targets"]]
    assert names[:2] == ["option k̂=16 tok/s vs full residency", "option k̂=8 tok/s vs full residency"]
    assert result["targets"][0]["value"] is None  # this ladder has no k̂ = 16 rung: reported as missing
    assert any(n.startswith("option vs LRU") for n in names)
    assert any(n.startswith("copy time vs bytes") and t["value"] is not None
               for n, t in zip(names, result["targets"]))
    summary = (tmp_path / "summary.md").read_text()
    assert "full residency" in summary and "missing" in summary  # the other inputs are absent, and say so
