"""Training-curve figures from metrics.jsonl records, and the running mean / bootstrap band arithmetic."""

import json

import numpy as np
import pytest

from temoe.analysis.training_curves import paired_gain, plot_paired_gain, plot_training, running_mean_band


def test_running_mean_band_by_hand():
    v = np.array([1.0, 3.0, 5.0, np.nan])
    mean, lo, hi = running_mean_band(v, window=2, resamples=200)
    # windows: [1] -> 1; [1, 3] -> 2; [3, 5] -> 4; [5, nan] -> 5 (NaN ignored)
    np.testing.assert_allclose(mean, [1.0, 2.0, 4.0, 5.0])
    assert lo[0] == hi[0] == 1.0 and 1.0 <= lo[1] <= 2.0 <= hi[1] <= 3.0


def test_plot_training_writes_four_pngs_for_two_runs(tmp_path):
    for eta in (0.02, 0.04):
        run = tmp_path / f"eta{eta}"
        run.mkdir()
        (run / "config.yaml").write_text(f"controller:\n  eta: {eta}\n  k_hat: 16\n")
        rng = np.random.default_rng(0)
        with (run / "metrics.jsonl").open("w") as f:
            for s in range(1, 31):
                f.write(
                    json.dumps(
                        {
                            "step": s,
                            "rollout/reward": -1 + s / 30 + 0.1 * rng.normal(),
                            "rollout/switch_rate": 0.05 / s,
                            "loss/value": 1.0,
                            "loss/policy": 0.1,
                            "loss/controller_policy": 0.0,
                            "rollout/switch_prob_p95": 0.05,
                            "rollout/switch_prob_std": 0.01,
                            "rollout/repeat_fraction": 0.3,
                            "rollout/teacher_ppl": 10.0,
                        }
                    )
                    + "\n"
                )
    paths = plot_training([tmp_path / "eta0.02", tmp_path / "eta0.04"], tmp_path / "fig")
    assert [p.name for p in paths] == [
        "training_curves.png",
        "training_losses.png",
        "switch_prob.png",
        "repeat_ppl.png",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)


def _write_run(path, rewards, eta=0.02):
    path.mkdir()
    (path / "config.yaml").write_text(f"controller:\n  eta: {eta}\n  k_hat: 16\n")
    with (path / "metrics.jsonl").open("w") as f:
        for s, r in enumerate(rewards, start=1):
            f.write(json.dumps({"step": s, "rollout/reward": r}) + "\n")


def test_paired_gain_removes_the_shared_prompt_mix(tmp_path):
    rng = np.random.default_rng(1)
    prompt_mix = rng.normal(0, 0.3, size=40)  # same prompts per step in both runs: large shared noise
    _write_run(tmp_path / "frozen", -0.5 + prompt_mix, eta=0.0)
    _write_run(tmp_path / "trained", -0.5 + prompt_mix + np.linspace(0, 0.2, 40) + rng.normal(0, 0.01, 40))
    gain = paired_gain(tmp_path / "trained", tmp_path / "frozen", windows=4)
    assert gain["steps"] == list(range(1, 41))
    means = [w["mean"] for w in gain["windows"]]
    assert means == sorted(means) and means[-1] > 0.15 and abs(means[0]) < 0.05
    assert [w["steps"] for w in gain["windows"]] == [[1, 10], [11, 20], [21, 30], [31, 40]]
    for w in gain["windows"]:
        assert w["ci"][0] <= w["mean"] <= w["ci"][1] and w["ci"][1] - w["ci"][0] < 0.05
    path = plot_paired_gain([tmp_path / "trained"], tmp_path / "frozen", tmp_path / "fig")
    assert path.name == "reward_gain.png" and path.stat().st_size > 1000


def test_paired_gain_needs_shared_steps(tmp_path):
    _write_run(tmp_path / "a", [-0.1, -0.2])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text(json.dumps({"step": 7, "rollout/reward": -0.3}) + "\n")
    with pytest.raises(ValueError, match="share no logged step"):
        paired_gain(tmp_path / "a", tmp_path / "b")


def test_probe_gain_pairs_prompts_and_plot_probes(tmp_path):
    from temoe.analysis.training_curves import plot_probes, probe_gain

    assert probe_gain(tmp_path) == [] and plot_probes([tmp_path], tmp_path / "figs") is None
    base = [0.30, 0.10, 0.20, 0.40]
    rows = []
    for step, drop in ((0, 0.0), (10, 0.05)):
        kl = [k - drop for k in base]
        rows.append({"step": step, "reward_per_prompt": [-k for k in kl], "kl_per_prompt": kl,
                     "fixed_kl_per_prompt": kl, "switch_rate_per_prompt": [0.1, 0.2, float("nan"), 0.3]})
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gains = probe_gain(tmp_path)
    assert [g["step"] for g in gains] == [0, 10] and gains[0]["prompts"] == 4
    assert gains[0]["gain"] == 0.0 and gains[0]["kl_reduction"] == 0.0
    # every prompt improved by exactly 0.05: the paired interval is a point, the unpaired one is wide
    assert gains[1]["gain"] == pytest.approx(0.05) and gains[1]["fixed_kl_reduction"] == pytest.approx(0.05)
    assert gains[1]["kl_reduction_ci"] == pytest.approx([0.05, 0.05])
    assert gains[1]["kl_ci"][1] - gains[1]["kl_ci"][0] > 0.05
    assert gains[1]["switch_rate"] == pytest.approx(0.2)  # NaN (a one-token answer) left out
    assert plot_probes([tmp_path], tmp_path / "figs").is_file()
