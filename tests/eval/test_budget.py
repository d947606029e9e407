"""`temoe bench budget` (`temoe.eval.budget`): the prediction arithmetic on hand rows, resumable cells, the
quick run's outputs and the input errors."""

import json
from pathlib import Path

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

    def refuse(self, unit, out):
        raise AssertionError(f"unit {unit.key} evaluated again")

    monkeypatch.setattr(bud.CellRunner, "run_unit", refuse)
    assert main(argv) == 0
    assert json.loads((out / "budget.json").read_text())["rows"] == data["rows"]


def test_units_group_router_methods_across_budgets_and_trained_ones_across_tasks():
    methods = bud.parse_methods(["lru", "lfu", "recency", "static-distill", "demand=0.5", "controller=0.02"])
    cells = bud.plan_cells([8, 16], methods, ["mc", "math"])
    units = {u.key: u for u in bud.plan_units(cells)}
    assert {c.name for c in units[("router", None, None)].cells} == {
        "base-mc", "lru-mc", "lfu-mc", "base-math", "lru-math", "lfu-math"}
    assert len(units[("router", None, None)].cells) == 12  # both budgets
    assert len(units[("recency", 1.0, None)].cells) == 4
    assert [c.task for c in units[("static-distill", "frequency", 8)].cells] == ["mc", "math"]
    assert units[("controller", 0.02, 16)].needs == ((16, 0.02),)
    assert sum(len(u.cells) for u in units.values()) == len(cells)


@pytest.fixture(scope="module")
def tiny():
    import torch

    import temoe
    from temoe.loading import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model("tiny")
    return temoe.wrap(model.eval()), tokenizer


def test_router_views_equal_one_evaluation_per_budget(tiny):
    from temoe.baselines.lru import CacheSource
    from temoe.eval.pipeline import evaluate_method
    from temoe.eval.tasks import load_task
    from temoe.rollout.masks import BaseSource
    from temoe.rollout.runner import GenerationConfig

    handle, tokenizer = tiny
    task = load_task("mc", None, limit=4, seed=42)
    gen = GenerationConfig(max_new_tokens=8, batch_size=2, seed=42)
    views = [(BaseSource(handle.top_k), 8), (CacheSource(8, "lru"), 8), (CacheSource(16, "lfu"), 16),
             (CacheSource(4, "lru"), 4)]
    shared = bud.router_views(handle, tokenizer, task, BaseSource(handle.top_k), views, gen)
    for (view, budget), (summary, records) in zip(views, shared, strict=True):
        k_hat = handle.top_k if view.name == "base" else view.k_hat
        direct, direct_records = evaluate_method(handle, tokenizer, task, view.name, k_hat, generation=gen,
                                                 budget=budget)
        assert summary.pop("shared_generation") is True
        summary.pop("seconds"), direct.pop("seconds")
        assert summary == direct and records == direct_records
    assert shared[1][0]["loads_per_token"] > shared[2][0]["loads_per_token"] > 0  # 8 LRU slots vs 16 LFU


def _cells(root):
    out = {}
    for p in sorted(root.rglob("k*/*.json")):
        summary = json.loads(p.read_text())
        summary.pop("seconds")
        if summary["checkpoint"]:
            summary["checkpoint"] = str(Path(summary["checkpoint"]).relative_to(root))
        out[str(p.relative_to(root))] = summary
    return out


@pytest.mark.slow
def test_two_worker_processes_give_the_sequential_results_and_resume(tmp_path):
    argv = ["bench", "budget", "--model", "tiny", "--budgets", "8", "16", "--tasks", "mc", "--limit", "2",
            "--max-new-tokens", "4", "--calibration-size", "4", "--calibration-tokens", "32",
            "--train-steps", "1", "--threads", "1", "--methods", "lru", "lfu", "demand=0.5", "frequency",
            "static-distill", "recency", "controller=0.02"]
    assert main([*argv, "--jobs", "1", "--out", str(tmp_path / "seq")]) == 0
    par = tmp_path / "par"
    assert main([*argv, "--jobs", "2", "--out", str(par)]) == 0
    assert _cells(tmp_path / "seq") == _cells(par)
    assert len(_cells(par)) == 2 * 8
    # An interrupted run: a lost cell and a lost training are redone, the rest is read back.
    (par / "k8" / "demand-0.5-mc.json").unlink()
    lost = par / "train" / "k16-eta0.02" / "budget-done"
    lost.unlink()
    before = _cells(par)
    assert main([*argv, "--jobs", "2", "--out", str(par)]) == 0
    assert lost.is_file() and _cells(par).keys() == before.keys() | {"k8/demand-0.5-mc.json"}
