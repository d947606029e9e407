"""Smoke training on a tiny from-config gpt-oss model: what changes, what must not, and exact resume."""

import json

import pytest
import torch

from temoe.testing import TINY_TRAIN, tiny_model
from temoe.train.config import load_config
from temoe.train.logging import read_metrics
from temoe.train.trainer import train

TINY = {**TINY_TRAIN, "max_new_tokens": 6, "seed": 3}


def _config(tmp_path, **kw):
    return load_config(None, {**TINY, "out_dir": str(tmp_path), **kw})


def test_two_steps_change_controller_lora_and_routers_not_base_weights(tmp_path):
    result = train(_config(tmp_path / "run", steps=2, checkpoint_every=0))
    reference = tiny_model("gpt_oss", seed=0)
    ref = dict(reference.named_parameters())
    pm = result.model
    lora_b = [p for n, p in pm.named_parameters() if "lora_B" in n]
    assert lora_b and all(bool(p.abs().sum() > 0) for p in lora_b)  # B starts at exactly 0
    for layer in result.controller.layers:  # init: termination bias exactly −3, V exactly 0
        assert not torch.equal(layer.termination[-1].bias, torch.tensor([-3.0]))
        assert bool(layer.value.weight.abs().sum() > 0)
    frozen = 0
    for name, p in pm.named_parameters():
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if "lora_" in name:
            continue
        if "router" in name:
            assert not torch.equal(p, ref[base_name]), name  # routers are part of θ (§5)
            continue
        assert not p.requires_grad
        assert torch.equal(p, ref[base_name]), f"base weight {name} changed"
        frozen += 1
    assert frozen == len(ref) - 2 * 2  # every non-router base parameter was checked (2 layers x weight, bias)
    lines = read_metrics(tmp_path / "run")
    assert [r["step"] for r in lines] == [1, 2]
    for key in (
        "rollout/switch_rate",
        "rollout/reward",
        "rollout/switch_prob_p95",
        "rollout/switch_prob_std",
        "loss/value",
        "loss/termination",
        "loss/selection",
        "loss/policy",
        "rollout/repeat_fraction",
        "rollout/teacher_ppl",
        "perf/tokens_per_s",
    ):
        assert key in lines[0]
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (
        tmp_path / "run" / "checkpoints" / "step_000002" / "adapter" / "adapter_model.safetensors"
    ).is_file()


def _comparable(record):
    return {k: v for k, v in record.items() if not k.startswith("perf/")}


@pytest.mark.slow
def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path):
    full = train(_config(tmp_path / "full", steps=4, checkpoint_every=2))
    # Interrupted run: killed during step 3, after step 3 was logged but before its checkpoint.
    part = tmp_path / "part"
    train(_config(part, steps=3, checkpoint_every=2, keep_checkpoints=0))
    ckpts = part / "checkpoints"
    import shutil

    shutil.rmtree(ckpts / "step_000003")
    (ckpts / "latest").write_text("step_000002\n")
    resumed = train(_config(part, steps=4, checkpoint_every=2), resume=True)
    assert [r["step"] for r in resumed.metrics] == [3, 4]
    steps = [r["step"] for r in read_metrics(part)]
    assert steps == [1, 2, 3, 4]  # no lost or repeated step in the log
    for a, b in zip(full.metrics[2:], resumed.metrics):
        assert json.dumps(_comparable(a), sort_keys=True) == json.dumps(_comparable(b), sort_keys=True)


def test_resume_with_a_different_config_fails_naming_the_key(tmp_path):
    train(_config(tmp_path, steps=1))
    with pytest.raises(ValueError, match=r"controller\.eta: saved 0\.02 vs now 0\.04"):
        train(_config(tmp_path, steps=2, **{"controller.eta": 0.04}), resume=True)


def test_selection_context_and_probes(tmp_path):
    run = tmp_path / "probes"
    cfg = {"steps": 2, "checkpoint_every": 0, "controller.selection_context_decay": 0.9,
           "controller.initial_option": "selection", "eval_every": 1, "eval_prompts": 4}
    result = train(_config(run, **cfg))
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(bool(p.abs().sum() > 0) for p in lora_b)  # the policy update trained the adapters
    probes = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes] == [0, 1, 2]
    for p in probes:
        assert len(p["reward_per_prompt"]) == len(p["kl_per_prompt"]) == len(p["fixed_kl_per_prompt"]) == 4
        assert p["eval/fixed_kl"] >= 0
        assert p["eval/kl"] >= 0 and p["eval/reward"] == pytest.approx(sum(p["reward_per_prompt"]) / 4)
    assert all(r["rollout/kl"] >= 0 for r in read_metrics(run))
    # same seed, same untrained model: the step-0 probe is reproducible; resuming keeps one record per step
    again = tmp_path / "again"
    train(_config(again, **{**cfg, "steps": 1}))
    first = json.loads((again / "eval.jsonl").read_text().splitlines()[0])
    assert first["reward_per_prompt"] == probes[0]["reward_per_prompt"]
    assert first["fixed_kl_per_prompt"] == probes[0]["fixed_kl_per_prompt"]
    train(_config(again, **{**cfg, "steps": 2}), resume=True)
    steps = [json.loads(line)["step"] for line in (again / "eval.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]


def test_bad_settings_fail_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="eval_prompts"):
        _config(tmp_path, eval_prompts=0)
    with pytest.raises(ValueError, match=r"config key controller\.selection_context_decay=1\.5: must be in"):
        _config(tmp_path, **{"controller.selection_context_decay": 1.5})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) eta \(did you mean controller\.eta\?\)"):
        _config(tmp_path, eta=0.03)
    with pytest.raises(ValueError, match=r"controller\.k_hat=40: must satisfy top-k=2 <= k_hat <= N=8"):
        train(_config(tmp_path, steps=1, **{"controller.k_hat": 40}))


def test_yaml_controller_section_overrides_and_the_written_config_round_trip(tmp_path):
    from temoe.controller import ControllerConfig

    cfg = load_config("tiny", ["controller.eta=0.03", "steps=5"])
    assert cfg.controller.eta == 0.03 and cfg.steps == 5
    assert cfg.controller.selection_context_decay == 0.9  # the rest of the YAML section is kept
    nested = load_config(None, {"controller": {"k_hat": 8, "hidden": 64}, "controller.eta": 0.04})
    assert nested.controller == ControllerConfig(k_hat=8, hidden=64, eta=0.04)
    assert load_config(cfg.save(tmp_path / "config.yaml")) == cfg


def test_bad_gpt_oss_20b_random_layer_count_fails_naming_the_form(tmp_path):
    with pytest.raises(ValueError, match=r"gpt-oss-20b-random\[:LAYERS\]"):
        train(_config(tmp_path, model="gpt-oss-20b-random:two", steps=1))
    with pytest.raises(ValueError, match=r"gpt-oss-20b-random\[:LAYERS\]"):  # 0 layers is not "full depth"
        train(_config(tmp_path, model="gpt-oss-20b-random:0", steps=1))
