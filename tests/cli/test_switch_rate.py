"""`temoe switch-rate` and `temoe plot activations` end to end, through a subprocess as a user runs them."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from temoe.cli.main import main

SRC = str(Path(__file__).resolve().parents[2] / "src")
PROMPTS = [
    {"prompt": "Hello there", "category": "chat"},
    {"prompt": "def f(x):", "category": "code"},
    {"prompt": "How are you today?", "category": "chat"},
]


def _temoe(*args, cwd):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "temoe.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_switch_rate_and_plot(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    run = _temoe(
        "switch-rate",
        "tiny-random:gpt_oss",
        "--prompts",
        str(prompts),
        "--k-hat",
        "4",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
        "--json",
        "table.json",
        "--records",
        "rec.jsonl",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "Rated: generated tokens only" in run.stdout and "k̂ = k̃ = 2" in run.stdout
    table = json.loads((tmp_path / "table.json").read_text())
    assert (table["k_tilde"], table["k_hat"], table["num_experts"], table["num_layers"]) == (2, 4, 8, 2)
    assert set(table["categories"]) == {"chat", "code", "all"}
    assert table["rated_positions"].startswith("generated tokens only")
    records = [json.loads(line) for line in (tmp_path / "rec.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == [p["prompt"] for p in PROMPTS]
    for r in records:
        assert {
            "id",
            "category",
            "prompt",
            "completion",
            "switch_rate_k_tilde",
            "switch_rate_k_hat",
            "per_layer",
            "active_experts",
        } <= set(r)
        active = r["active_experts"]  # position -> layer -> sorted routed ids
        assert len(active) == r["num_rated"] == r["num_generated"] - 1
        assert all(len(layer) == 2 and layer == sorted(layer) for pos in active for layer in pos)
        # Independent check of k̂ = k̃: the fraction of steps whose routed set changed, mean over layers.
        changes = [
            sum(active[t][i] != active[t - 1][i] for t in range(1, len(active))) / (len(active) - 1)
            for i in range(2)
        ]
        assert r["per_layer"]["k_tilde"] == pytest.approx(changes)
        assert r["switch_rate_k_tilde"] == pytest.approx(sum(changes) / 2)
    chat = [r["switch_rate_k_tilde"] for r in records if r["category"] == "chat"]
    assert table["categories"]["chat"]["k_tilde"]["mean"] == pytest.approx(sum(chat) / 2)
    # Local routing consistency from the same records (7 rated positions: no 8-token segment for SRP).
    from temoe.traces import sch

    lrc = table["consistency"]["categories"]
    per_layer = [[list(tokens) for tokens in zip(*r["active_experts"])] for r in records]
    assert lrc["all"]["sch"]["8"] == pytest.approx(sch(per_layer, 8, 4)) and lrc["all"]["srp"]["8"] is None
    assert "Local routing consistency" in run.stdout

    plot = _temoe(
        "plot",
        "activations",
        "rec.jsonl",
        "--layers",
        "0",
        "1",
        "--index",
        "1",
        "--out",
        "figs",
        cwd=tmp_path,
    )
    assert plot.returncode == 0, plot.stderr
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "activations_1_layer0.png",
        "activations_1_layer1.png",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "missing.jsonl", "--k-hat", "4"], "prompt file 'missing.jsonl' does not exist"),
        (["--prompts", "empty.jsonl", "--k-hat", "4"], "is empty"),
        (["--prompts", "ok.jsonl", "--k-hat", "1"], r"--k-hat 1 is out of range for this model: need k̃ = 2"),
        (["--prompts", "ok.jsonl", "--k-hat", "9"], r"--k-hat 9 .* N = 8"),
    ],
)
def test_switch_rate_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "ok.jsonl").write_text('{"prompt": "hi"}\n')
    assert main(["switch-rate", "tiny-random:mixtral", *args]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_unknown_tiny_model_type(tmp_path, capsys):
    (tmp_path / "ok.jsonl").write_text('{"prompt": "hi"}\n')
    assert (
        main(["switch-rate", "tiny-random:llama", "--prompts", str(tmp_path / "ok.jsonl"), "--k-hat", "2"])
        == 2
    )
    assert "no tiny config for model_type='llama'" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("temoe.analysis.training_curves") is None,
    reason="temoe.analysis.training_curves is not there yet",
)
def test_plot_training(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "rollout/reward": -1.0 + 0.1 * s, "rollout/switch_rate": 0.5} for s in range(5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", "training", str(run), "--out", str(tmp_path / "o"), "--window", "2"]) == 0
    assert "training_curves.png" in capsys.readouterr().out
    assert main(["plot", "training", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
