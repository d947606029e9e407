"""benchmarks/profile_engine.py on CPU: per-rung op counts from torch.profiler, the JSON and chrome traces."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_engine.py"


def _load():
    spec = importlib.util.spec_from_file_location("profile_engine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_rungs_on_cpu(tmp_path):
    prof = _load()
    out = tmp_path / "p"
    argv = ["--model", "tiny-random:gpt_oss", "--device", "cpu", "--threads", "1", "--tokens", "3",
            "--warmup", "1", "--repeats", "1", "--switch-rate", "0.5", "--out", str(out)]
    assert prof.main(argv) == 0
    result = json.loads((out / "profile.json").read_text())
    rows = result["rows"]
    assert set(rows) == {"full", "lru", "option"}
    assert result["environment"]["k_hat"] == 4  # N/2 of the tiny model's 8 experts
    for rung, row in rows.items():
        assert (out / f"trace_{rung}.json").stat().st_size > 0
        assert 0 < row["moe_aten_ops_per_layer_token"] < row["ops_per_layer_token"]
        assert row["device_ms_per_token"] is None  # CPU: no device activity
        assert 0 < row["moe_compute_ops_per_layer_token"] < row["moe_aten_ops_per_layer_token"]
        assert row["wall_ms_per_token_median"] > 0 and row["process_cpu_ms_per_token_median"] > 0
        per_layer = sum(row["moe_count_per_layer_token"].values())
        assert abs(per_layer - row["moe_aten_ops_per_layer_token"]) < 1e-9
    # full residency plans nothing: its MoE layers issue no read of the routing; the option rung reads it
    # with one cat of the routed ids and the option per layer call, and re-routes under the mask.
    assert "aten::cat" not in rows["full"]["moe_count_per_layer_token"]
    assert rows["option"]["moe_count_per_layer_token"]["aten::cat"] == 1
    assert rows["option"]["moe_count_per_layer_token"]["aten::masked_fill"] == 1
    assert rows["option"]["moe_aten_ops_per_layer_token"] > rows["full"]["moe_aten_ops_per_layer_token"]
    assert prof.main(argv) == 2  # a non-empty output directory is refused


def test_dry_run(tmp_path):
    prof = _load()
    assert prof.main(["--dry-run", "--out", str(tmp_path / "d")]) == 0
    assert not (tmp_path / "d").exists()
