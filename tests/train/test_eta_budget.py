"""η as a Lagrange multiplier: the loads cost in the losses, dual ascent in the loop, exact resume, keys."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from temoe.controller.options import indices_to_mask
from temoe.rl import loads_switch_cost, termination_loss
from temoe.testing import TINY_TRAIN
from temoe.train import trainer as trainer_mod
from temoe.train.config import load_config
from temoe.train.logging import read_metrics
from temoe.train.trainer import train

TINY = {**TINY_TRAIN, "max_new_tokens": 6, "seed": 3}
AUTO = {"controller.eta": "auto", "controller.switch_cost": "loads", "controller.eta_init": 0.02,
        "controller.eta_lr": 0.5}


def _config(tmp_path, **kw):
    return load_config(None, {**TINY, "out_dir": str(tmp_path), "checkpoint_every": 0, **kw})


def test_loads_cost_reaches_the_termination_and_selection_losses(tmp_path, monkeypatch):
    seen = {}
    real_term, real_sel = trainer_mod.termination_loss, trainer_mod.selection_loss

    def spy_term(betas, q_prev, values, mask, eta, *a, **kw):
        seen["eta"] = eta
        return real_term(betas, q_prev, values, mask, eta, *a, **kw)

    def spy_sel(*a, cost=None, **kw):
        seen["cost"] = cost
        return real_sel(*a, cost=cost, **kw)

    def spy_switch_cost(run, batch):
        seen["traj"] = batch.trajectory
        seen["num_experts"], seen["run_eta"] = run.handle.num_experts, run.eta
        return real_switch_cost(run, batch)

    real_switch_cost = trainer_mod.switch_cost
    monkeypatch.setattr(trainer_mod, "termination_loss", spy_term)
    monkeypatch.setattr(trainer_mod, "selection_loss", spy_sel)
    monkeypatch.setattr(trainer_mod, "switch_cost", spy_switch_cost)
    train(_config(tmp_path, steps=1, **AUTO, **{"controller.load_budget": 1.0}))
    traj, n = seen["traj"], seen["num_experts"]
    k_hat = traj.selected.shape[-1]
    old, new = indices_to_mask(traj.options_prev, n), indices_to_mask(traj.selected, n)
    # hand form: c = η · |candidate \ previous| / k̂, per (row, position, layer)
    hand = 0.02 * (new & ~old).sum(-1).float() / k_hat
    assert seen["run_eta"] == 0.02
    torch.testing.assert_close(seen["eta"], hand)
    assert seen["cost"] is seen["eta"]
    assert bool((hand[traj.decision_mask] > 0).any())  # the candidates drew new experts somewhere
    # at a kept position (d_t = 0) the recorded candidate is the draw, not the kept option
    kept = traj.decision_mask[..., None] & ~traj.decisions
    differs = (indices_to_mask(traj.options, n) != new).any(-1)
    assert bool(differs[kept].any())
    torch.testing.assert_close(loads_switch_cost(old, new, 0.02, k_hat), hand)


def test_flat_cost_passes_the_number_and_no_selection_cost(tmp_path, monkeypatch):
    seen = {}
    real_sel = trainer_mod.selection_loss
    monkeypatch.setattr(trainer_mod, "termination_loss",
                        lambda *a, **kw: (seen.setdefault("eta", a[4]), termination_loss(*a, **kw))[1])
    monkeypatch.setattr(trainer_mod, "selection_loss",
                        lambda *a, cost=None, **kw: (seen.setdefault("cost", cost), real_sel(*a, **kw))[1])
    result = train(_config(tmp_path, steps=1, **{"controller.eta": 0.03}))
    assert seen == {"eta": 0.03, "cost": None}
    record = result.metrics[0]
    assert record["controller/eta"] == 0.03 and record["controller/loads_per_token"] >= 0
    assert "controller/load_budget" not in record and "controller/stall_ms_per_token" not in record


def test_probes_measure_loads_per_token_on_held_out_prompts(tmp_path):
    # β ≈ σ(3): many switches; the probe's pooled loads per token agree with the per-step measure's scale
    run = tmp_path / "run"
    train(_config(run, steps=1, eval_every=1, eval_prompts=4, **{"controller.termination_bias_init": 3.0}))
    probes = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes] == [0, 1]
    assert all(0 < p["eval/loads_per_token"] <= 2 * 4 for p in probes)  # at most L · k̂ = 2 · 4 per token


def test_answer_positions_leave_out_the_eos_position():
    eos = 9
    batch = SimpleNamespace(tokens=torch.tensor([[5, 6, eos, 0], [5, 6, 7, 8]]),
                            valid=torch.tensor([[True, True, True, False], [True, True, True, True]]))
    answer = trainer_mod.answer_positions(batch, [eos])
    assert answer.tolist() == [[True, True, False, False], [True, True, True, True]]


def test_measured_loads_count_what_eval_records_count(tmp_path, monkeypatch):
    # temoe eval --records: experts_loaded = Σ_ℓ Σ_{t=1}^{n-1} |ω_t \ ω_{t-1}| over the n tokens before EOS,
    # loads per token = Σ experts_loaded / Σ (n − 1)
    seen = {}
    real, real_settings = trainer_mod.update_eta, trainer_mod.rollout_settings

    def spy(run, batch):
        seen["batch"], seen["eos"] = batch, run.rollout_settings["eos_token_ids"]
        seen["n"] = run.handle.num_experts
        return real(run, batch)

    def many_eos(config, eos_ids, *a, **kw):  # every eighth token id ends a row, so rows end at EOS
        return real_settings(config, list(eos_ids) + list(range(0, 4096, 8)), *a, **kw)

    monkeypatch.setattr(trainer_mod, "update_eta", spy)
    monkeypatch.setattr(trainer_mod, "rollout_settings", many_eos)
    result = train(_config(tmp_path, steps=1, **{"controller.termination_bias_init": 3.0}))
    batch = seen["batch"]
    masks = batch.trajectory.option_masks(seen["n"])
    loads = positions = 0
    for b in range(batch.tokens.shape[0]):
        toks = batch.tokens[b][batch.valid[b]].tolist()
        n = next((i for i, t in enumerate(toks) if t in seen["eos"]), len(toks))
        loads += sum(int((masks[b, t] & ~masks[b, t - 1]).sum()) for t in range(1, n))
        positions += max(n - 1, 0)
    ended = [toks for toks in (batch.tokens[b][batch.valid[b]].tolist() for b in range(batch.tokens.shape[0]))
             if len(toks) >= 3 and toks[-1] in seen["eos"]]
    assert positions > 0 and ended  # a row ends at EOS after two answer tokens: its EOS position left out
    assert result.metrics[0]["controller/loads_per_token"] == pytest.approx(loads / positions)


@pytest.mark.parametrize(("budget", "rises"), [(1e-3, True), (1e4, False)])
def test_dual_update_in_the_loop_rises_over_budget_and_clamps_at_zero(tmp_path, budget, rises):
    # β ≈ σ(3) at the start: the rows switch often, so the measured loads are far above a tiny budget
    result = train(_config(tmp_path, steps=3, **AUTO, **{"controller.load_budget": budget,
                                                          "controller.hardware": "h100-gpt-oss-20b",
                                                          "controller.termination_bias_init": 3.0}))
    recs = result.metrics
    etas = [r["controller/eta"] for r in recs]
    assert etas[0] == 0.02
    for a, b, r in zip(etas, etas[1:], recs):  # η_{s+1} = max(0, η_s + α (measured − budget) / budget)
        assert b == pytest.approx(max(0.0, a + 0.5 * (r["controller/loads_per_token"] - budget) / budget))
        assert r["controller/stall_ms_per_token"] > 0 or r["controller/loads_per_token"] == 0
    from temoe.analysis.training_curves import _label, plot_eta

    assert plot_eta([tmp_path], tmp_path / "figs").is_file()
    assert _label(tmp_path) == f"η auto → {budget:g} loads/token, loads cost, k̂=4"
    if rises:
        assert etas[1] > etas[0] and etas[2] > etas[1]
    else:  # far under budget: η falls by up to α per step and stops at 0
        assert etas[1] == 0.0 and etas[2] == 0.0


def test_pi_update_in_the_loop_follows_the_integral_and_the_averaged_loads(tmp_path):
    budget, lr, kp, decay = 0.05, 0.01, 0.03, 0.5
    result = train(_config(tmp_path, steps=3, **{
        **AUTO, "controller.load_budget": budget, "controller.eta_lr": lr, "controller.eta_kp": kp,
        "controller.eta_ema": decay, "controller.termination_bias_init": 3.0}))
    recs = result.metrics
    integral, average = 0.02, None
    assert recs[0]["controller/eta"] == 0.02
    for rec, nxt in zip(recs, recs[1:]):
        measured = rec["controller/loads_per_token"]
        average = measured if average is None else decay * average + (1 - decay) * measured
        assert rec["controller/loads_ema"] == pytest.approx(average)
        integral = max(0.0, integral + lr * (measured - budget) / budget)
        assert nxt["controller/eta"] == pytest.approx(max(0.0, integral + kp * (average - budget) / budget))
    assert recs[1]["controller/eta"] > 0.02 + lr  # over budget: the proportional term adds to the integral


@pytest.mark.slow
def test_resume_restores_eta_exactly(tmp_path):
    # over budget (β ≈ σ(3) at the start), so η_I and η stay above 0 and differ by the proportional term
    cfg = {"steps": 4, **AUTO, "controller.load_budget": 0.05, "controller.eta_kp": 0.05,
           "controller.eta_ema": 0.5, "controller.termination_bias_init": 3.0}
    full = train(_config(tmp_path / "full", **cfg))
    part = tmp_path / "part"
    train(_config(part, **{**cfg, "steps": 3, "checkpoint_every": 2, "keep_checkpoints": 0}))
    shutil.rmtree(part / "checkpoints" / "step_000003")
    (part / "checkpoints" / "latest").write_text("step_000002\n")
    meta = json.loads((part / "checkpoints" / "step_000002" / "meta.json").read_text())
    state = meta["trainer_state"]
    assert state["eta"] == full.metrics[2]["controller/eta"]  # the next step's η
    assert state["loads_ema"] == full.metrics[1]["controller/loads_ema"]  # the average after step 2
    assert state["eta_integral"] != state["eta"]  # the integral is its own state, not η
    resumed = train(_config(part, **{**cfg, "checkpoint_every": 2}), resume=True)
    assert [r["controller/eta"] for r in resumed.metrics] == [r["controller/eta"] for r in full.metrics[2:]]
    drop = ("perf/",)
    for a, b in zip(full.metrics[2:], read_metrics(part)[2:]):
        assert {k: v for k, v in a.items() if not k.startswith(drop)} == \
            {k: v for k, v in b.items() if not k.startswith(drop)}


@pytest.mark.parametrize(("keys", "message"), [
    ({"controller.load_budget": 1.0}, r"controller\.load_budget=1\.0: a budget needs eta: auto"),
    ({"controller.eta": "auto"}, r"controller\.eta='auto': 'auto' needs exactly one of .* got neither"),
    ({"controller.eta": "auto", "controller.load_budget": 1, "controller.stall_budget_ms": 2,
      "controller.hardware": "h100-gpt-oss-20b"}, r"got load_budget and stall_budget_ms"),
    ({"controller.eta": "auto", "controller.stall_budget_ms": 2},
     r"stall_budget_ms=2\.0: needs a hardware profile .* valid hardware: h100-gpt-oss-20b"),
    ({"controller.eta": "auto", "controller.stall_budget_ms": 2, "controller.hardware": "tpu"},
     r"controller\.hardware='tpu': valid: h100-gpt-oss-20b"),
    ({"controller.switch_cost": "bytes"}, r"controller\.switch_cost='bytes': must be one of flat, loads"),
    ({"controller.eta": "sometimes"}, r"controller\.eta: cannot read 'sometimes' as float"),
    ({"controller.eta": "auto", "controller.load_budget": -1}, r"controller\.load_budget=-1\.0: must be"),
    ({"controller.eta_kp": -0.1}, r"controller\.eta_kp=-0\.1: must be a finite number >= 0"),
    ({"controller.eta_ema": 1}, r"controller\.eta_ema=1\.0: must be a finite number in \[0, 1\)"),
    ({"controller.eta_ema": -0.5}, r"controller\.eta_ema=-0\.5: must be a finite number in \[0, 1\)"),
])
def test_budget_keys_fail_naming_the_key_and_the_valid_values(tmp_path, keys, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **keys)


def test_stall_budget_converts_through_the_hardware_profile(tmp_path):
    from temoe.cost import load_profile

    cfg = _config(tmp_path, **{"controller.eta": "AUTO", "controller.stall_budget_ms": 3.0,
                               "controller.hardware": "h100-gpt-oss-20b"}).controller
    p = load_profile("h100-gpt-oss-20b")
    ms_per_load = p.load_ms  # the cost model's time of one expert load
    assert cfg.eta == "auto" and cfg.load_budget_per_token() == pytest.approx(3.0 / ms_per_load)
    yaml_cfg = load_config(cfg_path := _config(tmp_path, **{"controller.eta": "auto",
                                                            "controller.load_budget": 1.5}).save(
        tmp_path / "c.yaml"))
    assert yaml_cfg.controller.eta == "auto" and yaml_cfg.controller.load_budget == 1.5 and cfg_path.is_file()


def test_tiny_tasks_config_trains_on_the_task_prompt_set():
    from temoe.train.data import resolve_prompts_path

    config = load_config("tiny-tasks", {"out_dir": "unused"})
    assert config.prompts == "embedded:task_prompts.jsonl" and resolve_prompts_path(config.prompts).is_file()
    ctrl = config.controller
    assert config.max_new_tokens == 48 and ctrl.eta_lr == 0.0 and ctrl.eta_init == 0.0
    assert ctrl.eta_kp == 0.03 and ctrl.eta_ema == 0.8
