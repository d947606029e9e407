"""`temoe bench serve` and `temoe serve` through a subprocess, on tiny models and CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _temoe(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "temoe.cli.main", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


@pytest.mark.slow
def test_bench_serve_ladder_json(tmp_path):
    out = tmp_path / "ladder.json"
    r = _temoe("bench", "serve", "--model", "tiny-random:mixtral", "--k-hat", "2", "4", "--max-new-tokens",
               "4", "--max-prompts", "1", "--device", "cpu", "--json", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    rungs = [row["rung"] for row in result["rows"]]
    assert rungs[0] == "full residency" and rungs[1] == "LRU cache, budget 4"
    assert any("synthetic options k̂=2" in x for x in rungs) and any("router-as-option" in x for x in rungs)
    assert result["environment"]["h2d_bandwidth_source"].startswith("simulated")
    for row in result["rows"]:
        assert row["serve/pcie_bound_ms_per_token"] >= 0
    assert "PCIe bound" in r.stdout


@pytest.mark.slow
def test_gpt_oss_20b_random_refused_on_cpu_at_full_depth():
    r = _temoe("bench", "serve", "--model", "gpt-oss-20b-random", "--device", "cpu")
    assert r.returncode == 2
    assert "--num-layers" in r.stderr and "CUDA" in r.stderr


@pytest.mark.slow
def test_serve_cli_answers_and_stops():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "temoe.cli.main", "serve", "--model", "tiny-random:qwen3_moe", "--offload",
           "--expert-budget", "3", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(300):   # bounded wait for startup (imports dominate)
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.post(base + "/completions", json={"model": "tiny-random:qwen3_moe", "prompt": "Hi",
                                                    "max_tokens": 4, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        stats = httpx.get(base + "/stats", timeout=10).json()
        assert stats["serve/expert_slots_per_layer"] == 3 and stats["worker"]["max_active"] == 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
