"""`temoe trace` then `temoe simulate` through subprocesses: a valid trace per prompt, allowed sets for an
option method, option loads equal to the experts entering the recorded sets, and no overwriting."""

import json
import os
import subprocess
import sys
from pathlib import Path

from temoe.traces import read_trace, simulate

SRC = str(Path(__file__).resolve().parents[2] / "src")
PROMPTS = [{"prompt": "Hello there", "category": "chat", "id": "p0"},
           {"prompt": "def f(x):", "category": "code", "id": "p1"},
           {"prompt": "Why?", "category": "chat", "id": "p2"}]


def _temoe(*args, cwd):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "temoe.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _entering(record):
    """Σ over layers and t >= 1 of |allowed_t minus allowed_{t-1}|, from the change lists."""
    total = 0
    for changes in record["allowed"]:
        for (_, before), (_, after) in zip(changes, changes[1:]):
            total += len(set(after) - set(before))
    return total


def test_trace_then_simulate(tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    common = ["--model", "testing:gpt_oss", "--prompts", "p.jsonl", "--max-new-tokens", "6",
              "--batch-size", "2", "--k-hat", "4"]
    run = _temoe("trace", *common, "--out", "base.jsonl", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    base = list(read_trace(tmp_path / "base.jsonl"))
    assert [r["id"] for r in base] == ["p0", "p1", "p2"]
    assert [r["category"] for r in base] == ["chat", "code", "chat"]
    assert all(len(r["layers"]) == 2 and "allowed" not in r for r in base)
    run = _temoe("trace", *common, "--method", "demand", "--threshold", "0.2", "--out", "demand.jsonl",
                 cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    demand = list(read_trace(tmp_path / "demand.jsonl"))
    assert all(r["method"] == "demand" and r["k_hat"] == 4 for r in demand)
    # At B = k̂ every expert entering the option is one load.
    assert simulate(demand, "option", 4)["loads"] == sum(_entering(r) for r in demand) > 0
    run = _temoe("simulate", "--trace", "demand.jsonl", "--policy", "option", "--budget", "4", cwd=tmp_path)
    assert run.returncode == 0 and json.loads(run.stdout)["loads"] == sum(_entering(r) for r in demand)
    again = _temoe("trace", *common, "--out", "base.jsonl", cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr
