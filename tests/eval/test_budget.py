"""`temoe bench budget` (`temoe.eval.budget`): the prediction arithmetic on hand rows, resumable cells, the
quick run's outputs and the input errors."""

import json

import pytest

from temoe.cli.main import main
from temoe.cost import HardwareProfile
from temoe.eval import budget as bud

# One load = 1e9 B / 100 GB/s = 10 ms; full decode 50 tok/s = 20 ms per token; background fully overlapped.
PROFILE = HardwareProfile(name="hand", num_layers=2, expert_bytes=10**9, h2d_bandwidth_gbps=100.0,
                          copy_overhead_ms=0.0, decode_tok_s=50.0, background_overlap=1.0,
                          sources=dict.fromkeys(("num_layers", "expert_bytes", "h2d_bandwidth_gbps",
                                                 "copy_overhead_ms", "decode_tok_s", "background_overlap"),
                                                "hand-made test figure"))


def _summary(residency, loads, critical=None):
    return {"accuracy": 0.5, "accuracy_ci": [0.4, 0.6], "switch_rate": 0.1, "loads_per_token": loads,
            "residency": residency, "critical_per_token": critical, "n": 10}


@pytest.mark.parametrize("residency,loads,critical,ms", [
    ("lru", 0.5, None, 20 + 2 * 0.5 * 10),     # every miss critical, 1 model layer -> 2 profile layers
    ("lfu", 0.5, None, 20 + 2 * 0.5 * 10),
    ("option", 1.0, 0.25, 20 + 2 * 0.25 * 10),  # background 1.5 x 10 ms hides under 20 ms of compute
    ("option", 1.0, None, 20 + 2 * 1.0 * 10),  # no split known: all critical (conservative)
    ("static", 0.0, None, 20),
])
def test_predicted_speed_of_hand_rows(residency, loads, critical, ms):
    cell = bud.Cell("m", None, 8, "mc")
    row = bud.predict_row(_summary(residency, loads, critical), cell, PROFILE, layer_scale=2.0)
    assert row["predicted_tok_s"] == pytest.approx(1e3 / ms)
    assert row["predicted_vs_full"] == pytest.approx(20 / ms)
    assert set(bud.ROW_KEYS) <= set(row)


def test_exposed_background_when_compute_cannot_hide_it():
    # 0.5 critical + 2.5 background loads per model layer, x2 layers: stall 10 ms, background 50 - 20 exposed.
    row = bud.predict_row(_summary("option", 3.0, 0.5), bud.Cell("m", None, 8, "mc"), PROFILE, 2.0)
    assert row["predicted_tok_s"] == pytest.approx(1e3 / (20 + 10 + 30))


def test_full_row_is_the_profiles_full_decode():
    row = bud.full_row(_summary("lru", 3.0), 16, "mc", PROFILE)
    assert (row["loads_per_token"], row["predicted_tok_s"], row["predicted_vs_full"]) == (0.0, 50.0, 1.0)


def test_option_critical_from_records():
    # One layer, k̃ = 1, options {0,1} then {2,3}: the switch at t=2 loads 2 and 3, only routed 2 is critical.
    record = {"id": "a", "num_experts": 4, "routed_experts": [[[0]], [[1]], [[2]], [[3]]],
              "active_experts": [[[0, 1]], [[0, 1]], [[2, 3]], [[2, 3]]]}
    assert bud.option_critical_per_token([record], budget=2) == pytest.approx(1 / 3)


def test_methods_and_cell_names():
    cells = bud.plan_cells([8], bud.parse_methods(["lru", "cache-prior=1,0.25", "static-distill"]), ["mc"])
    assert [c.name for c in cells] == ["base-mc", "lru-mc", "cache-prior-1-mc", "cache-prior-0.25-mc",
                                       "static-distill-frequency-mc"]
    assert [k for m, k in bud.parse_methods(["controller"])] == [0.02, 0.04, 0.08]


@pytest.mark.parametrize("argv,message", [
    (["--methods", "nope"], "unknown method 'nope'; valid: base"),
    (["--methods", "demand=1.5"], "valid: (0, 1)"),
    (["--budgets", "2"], "budget 2 is out of range; valid: k̃ = 4 <= B <= N = 32"),
    (["--budgets", "33"], "budget 33 is out of range"),
    (["--hardware", "abacus"], "unknown hardware profile 'abacus'; valid: h100-gpt-oss-20b"),
])
def test_bad_inputs_are_clear_errors_before_any_work(tmp_path, capsys, argv, message):
    rc = main(["bench", "budget", "--quick", "--out", str(tmp_path / "o"), *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_quick_run_writes_outputs_and_a_rerun_skips_cells(tmp_path, monkeypatch):
    out = tmp_path / "b"
    argv = ["bench", "budget", "--model", "tiny", "--budgets", "16", "--quick", "--limit", "3",
            "--max-new-tokens", "6", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads((out / "budget.json").read_text())
    assert {r["method"] for r in data["rows"]} == {"full", "lru", "demand", "frequency"}
    for r in data["rows"]:
        assert set(bud.ROW_KEYS) <= set(r) and r["budget"] == 16 and r["task"] == "mc"
        assert 0 < r["predicted_tok_s"] <= 23.8 + 1e-9
    full = next(r for r in data["rows"] if r["method"] == "full")
    assert full["loads_per_token"] == 0 and full["predicted_vs_full"] == 1.0 and full["switch_rate"] is None
    demand = next(r for r in data["rows"] if r["method"] == "demand")
    assert demand["critical_source"] == "routed misses (split_loads)"
    assert demand["critical_per_token"] <= demand["loads_per_token"]
    md = (out / "budget.md").read_text()
    assert "## B = 16" in md and "h100-gpt-oss-20b" in md and "temoe bench budget" in md
    assert "4 of 4 cells evaluated by temoe bench budget" in md
    assert (out / "pareto_mc_B16.png").stat().st_size > 0
    assert not list(out.rglob("*.part"))

    def refuse(self, cell):
        raise AssertionError(f"cell {cell} evaluated again")

    monkeypatch.setattr(bud.CellRunner, "evaluate", refuse)
    assert main(argv) == 0
    assert json.loads((out / "budget.json").read_text())["rows"] == data["rows"]
