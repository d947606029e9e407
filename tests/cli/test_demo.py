"""`temoe demo` pipeline on a tiny random model with local task files: every stage writes its outputs, the
summary has one row per method × task, and a rerun resumes from the caches without recomputing."""

from __future__ import annotations

import json

import pytest

from temoe.cli.demo import DemoConfig, run_demo
from temoe.train.logging import read_metrics


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    pairs = [("hello world", "chat"), ("def f(x):", "code"), ("2+2=", "math")]
    prompts.write_text("".join(json.dumps({"prompt": p, "category": c}) + "\n" for p, c in pairs))
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"id": f"q{i}", "question": f"q {i}", "choices": list("wxyz"),
                                      "answer": "ABCD"[i % 4]}) + "\n" for i in range(4)))
    cfg = DemoConfig.quick(str(tmp_path / "run"), model="testing:gpt_oss", k_hat=4, tasks=("mmlu",),
                           data={"mmlu": str(mc)}, limit=3, max_new_tokens=5, train_steps=1,
                           survey_per_category=1, survey_tokens=5, calibration_prompts=3,
                           calibration_tokens=20, prompts=str(prompts), progress=False, batch_size=4,
                           train_overrides={"prompts_per_step": 2, "max_new_tokens": 5,
                                            "controller.hidden": 16, "controller.expert_embed_dim": 8},
                           load_budget=1.0)
    result = run_demo(cfg)
    run = tmp_path / "run"
    rows = json.loads((run / "summary.json").read_text())
    assert [(r["method"], r["eta"]) for r in rows] == [("base", None), ("frequency", None),
                                                       ("reconstruction", None), ("random", None),
                                                       ("wanda", None), ("controller", 0.02),
                                                       ("controller", "auto, 1 load/token")]
    assert all(r["k_hat"] == 4 and r["task"] == "mmlu" and r["n"] == 3 for r in rows)
    assert all(set(r) >= {"accuracy", "accuracy_ci", "switch_rate", "switch_rate_ci"} for r in rows)
    report = (run / "report.md").read_text()
    assert "| Controller (η = 0.02) |" in report and "Base-model switch rate" in report
    assert "| Controller (η auto, 1 load/token) |" in report
    budgeted = read_metrics(run / "train" / "budget1")
    assert budgeted and all("controller/eta" in r and "controller/loads_per_token" in r for r in budgeted)
    assert (run / "eval" / "controller_budget1-mmlu.json").exists()
    assert "Controllers evaluated in sample mode" in report
    assert (run / "survey.json").exists() and (run / "train" / "eta0.02" / "DONE").exists()
    assert list((run / "figures").glob("activations_controller_eta0.02_k4_layer*.png"))
    # held-out probes of the trained run (eval_every from the tiny config; 3 prompts, all of them probed)
    probes = json.loads((run / "probes.json").read_text())["η = 0.02"]
    assert [p["step"] for p in probes] == [0, 1] and probes[0]["fixed_kl_reduction"] == 0.0
    assert "Held-out probes during training" in report and (run / "figures" / "probe_reward.png").exists()
    stamp = (run / "eval" / "base-mmlu.json").stat().st_mtime_ns
    again = run_demo(cfg)  # every stage is cached: nothing is recomputed
    assert (run / "eval" / "base-mmlu.json").stat().st_mtime_ns == stamp
    assert again["summary"] == result["summary"]


def test_demo_refuses_a_bad_load_budget(tmp_path):
    with pytest.raises(ValueError, match=r"DemoConfig\.load_budget=-1\.0: must be a finite number > 0"):
        DemoConfig.quick(str(tmp_path), load_budget=-1.0)
    assert DemoConfig.quick(str(tmp_path)).load_budget is None  # CI stays fast: no budgeted run


def test_demo_refuses_an_unknown_controller_mode(tmp_path):
    with pytest.raises(ValueError, match="controller_mode must be 'sample' or 'greedy', got 'argmax'"):
        DemoConfig.quick(str(tmp_path), controller_mode="argmax")
    with pytest.raises(ValueError, match="selection_mode"):
        DemoConfig.quick(str(tmp_path), selection_mode="top")


def test_demo_budget_stage_runs_beside_the_main_process_and_writes_its_outputs(tmp_path):
    import temoe
    from temoe.cli.demo import _budget_section, finish_budget_stage, start_budget_stage
    from temoe.loading import load_model

    cfg = DemoConfig.quick(str(tmp_path / "run"), tasks=("mc",), limit=2, max_new_tokens=4,
                           calibration_prompts=4, calibration_tokens=32, budgets=(16, 8),
                           budget_methods=("lru", "demand=0.5", "frequency"), progress=False)
    assert start_budget_stage(DemoConfig.quick(str(tmp_path / "x"), data={"mc": "f"})) is None
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        DemoConfig.quick(str(tmp_path), budget_methods=("nope",))
    future = start_budget_stage(cfg)
    model, _ = load_model("tiny")
    paths = finish_budget_stage(cfg, future, temoe.wrap(model))
    out = tmp_path / "run" / "budget"
    rows = json.loads((out / "budget.json").read_text())["rows"]
    methods = ("full", "lru", "demand", "frequency")
    assert {(r["method"], r["budget"]) for r in rows} == {(m, b) for m in methods for b in (16, 8)}
    assert {p.name for p in paths} >= {"budget.json", "budget.md", "pareto_mc_B16.png", "pareto_mc_B8.png"}
    report = tmp_path / "run" / "report.md"
    report.write_text("# demo\n")
    _budget_section(tmp_path / "run", paths, report)
    text = report.read_text()
    assert "[budget/budget.md](budget/budget.md)" in text and "(budget/pareto_mc_B8.png)" in text
    assert DemoConfig.quick(str(tmp_path)).budgets == (16,)
    assert DemoConfig.full(str(tmp_path)).budgets == (16, 8)
