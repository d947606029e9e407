"""`temoe eval --method` for the methods users would pick instead: every summary carries loads_per_token
under the method's residency; an LRU cache has the base model's accuracy; REAP's static set loads nothing."""

from __future__ import annotations

import json

from temoe.cli.main import main


def _mc_file(tmp_path):
    f = tmp_path / "mc.jsonl"
    rows = [{"id": f"q{i}", "question": f"question {i}", "choices": ["w", "x", "y", "z"],
             "answer": "ABCD"[i % 4]} for i in range(4)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _eval(tmp_path, *extra):
    out = tmp_path / f"{'_'.join(extra)}.json"
    args = ["eval", "--model", "testing:gpt_oss", "--k-hat", "4", "--task", "mmlu", "--data",
            str(_mc_file(tmp_path)), "--limit", "3", "--json", str(out), "--max-new-tokens", "6",
            "--temperature", "0", "--calibration-size", "2", "--calibration-tokens", "24",
            "--cache-dir", str(tmp_path / "cache"), *extra]
    assert main(args) == 0
    return json.loads(out.read_text())


def test_methods_report_loads_per_token(tmp_path):
    base = _eval(tmp_path, "--method", "base")
    lru = _eval(tmp_path, "--method", "lru", "--budget", "2")
    assert lru["accuracy"] == base["accuracy"] and lru["residency"] == "lru" and lru["budget"] == 2
    assert lru["loads_per_token"] >= base["loads_per_token"]  # 2 slots miss at least as often as 4
    reap = _eval(tmp_path, "--method", "reap")
    assert reap["residency"] == "static" and reap["loads_per_token"] == 0.0
    demand = _eval(tmp_path, "--method", "demand", "--threshold", "0.3")
    assert demand["residency"] == "option" and demand["demand_threshold"] == 0.3
    prior = _eval(tmp_path, "--method", "cache-prior", "--strength", "0")
    assert prior["accuracy"] == base["accuracy"] and prior["loads_per_token"] == base["loads_per_token"]
    alias = _eval(tmp_path, "--baseline", "frequency")
    assert alias["method"] == "frequency" and alias["loads_per_token"] == 0.0
    recency = _eval(tmp_path, "--method", "recency", "--train-steps", "1", "--train-batch-size", "2")
    assert recency["residency"] == "lru" and recency["recency"] == 1.0 and "loss/token_kl" in recency["train"]
    distill = _eval(tmp_path, "--method", "static-distill", "--train-steps", "1", "--distill-mask", "reap")
    assert distill["residency"] == "static" and distill["distill_mask"] == "reap"
    assert distill["masks"] == reap["masks"] and distill["loads_per_token"] == 0.0


def test_method_and_checkpoint_must_agree(tmp_path, capsys):
    args = ["eval", "--model", "testing:gpt_oss", "--k-hat", "4", "--task", "mmlu", "--data",
            str(_mc_file(tmp_path)), "--json", str(tmp_path / "o.json"), "--method", "controller"]
    assert main(args) == 2
    assert "--method controller needs --checkpoint" in capsys.readouterr().err
