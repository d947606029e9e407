"""`temoe simulate` through a subprocess: the known LRU answer of a hand trace, without importing torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
TRACE = {"id": "a", "category": "c", "k_tilde": 1, "num_experts": 4,
         "layers": [[[0], [1], [0], [2], [1], [0]]] * 2}
CHECK = ("import sys; from temoe.cli.main import main; rc = main(sys.argv[1:]); "
         "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")


def _temoe(*args, cwd):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", CHECK, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_simulate_lru_without_torch(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps(TRACE) + "\n")
    run = _temoe("simulate", "--trace", "t.jsonl", "--policy", "lru", "--budget", "2", "--json", "o.json",
                 "--consistency", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = json.loads((tmp_path / "o.json").read_text())
    # Per layer (see tests/cache/test_simulate.py): 4 loads, 1 hit of 5 accesses, 5 decode tokens.
    assert (out["loads"], out["hits"], out["decode_tokens"]) == (8, 2, 5)
    assert out["loads_per_token"] == 8 / 5 and out["per_layer"]["loads"] == [4, 4]
    assert set(out["srp"]) == {"8", "16", "32"} and out["srp"]["8"] is None  # 6 tokens: no 8-token segment


def test_simulate_bad_budget_is_a_clear_error(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps(TRACE) + "\n")
    run = _temoe("simulate", "--trace", "t.jsonl", "--policy", "lru", "--budget", "9", cwd=tmp_path)
    assert run.returncode == 2 and "budget 9 is out of range" in run.stderr
