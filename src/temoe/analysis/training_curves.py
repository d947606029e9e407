"""Training-curve figures (paper Fig. 5 and A1–A3) from saved `metrics.jsonl` records, without re-running.

Each panel: a thin raw per-step line, a thick running mean over 20 steps, and a bootstrap 95% band (1000
resamples of the same 20-step window, 2.5/97.5 percentiles), one colour per run (labelled by η and k̂).

`paired_gain` / `plot_paired_gain`: the reward of a run minus the reward of a *frozen* run with the same seed
(`lr_controller=0 lr_policy=0`). Runs with one seed draw the same prompts at every step, so the
difference removes the prompt mix, which dominates a small run's per-step reward; what remains is what the
training changed.

`probe_gain` / `plot_probes`: the fixed-prompt probes of `TrainConfig.eval_every` (`eval.jsonl`): the same
held-out prompts and sampling seeds at every probe, so the reward at step s minus the reward at step 0, per
prompt, is a paired measurement of what training changed (bootstrap 95% interval over prompts).

`plot_eta`: η per step and the measured expert loads per generated token, with each budgeted run's target
(`eta: auto`) as a dashed line (`plot_training` adds it when the runs logged `controller/eta`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

#: (file stem, figure title, [(metric key, panel title)]): Fig. 5, A1, A2, A3.
FIGURES = (
    (
        "training_curves",
        "Training dynamics (Fig. 5)",
        [("rollout/reward", "Reward (neg. KL per token)"), ("rollout/switch_rate", "Switch rate")],
    ),
    (
        "training_losses",
        "Losses (Fig. A1)",
        [
            ("loss/value", "Value loss"),
            ("loss/controller_policy", "Controller policy loss (termination + selection)"),
            ("loss/policy", "Intra-option policy loss"),
        ],
    ),
    (
        "switch_prob",
        "Switch probability (Fig. A2)",
        [("rollout/switch_prob_p95", "Switch prob p95"), ("rollout/switch_prob_std", "Switch prob std")],
    ),
    (
        "repeat_ppl",
        "Repetition and teacher perplexity (Fig. A3)",
        [("rollout/repeat_fraction", "Repeat fraction"), ("rollout/teacher_ppl", "Teacher PPL (mean)")],
    ),
)


def _bootstrap_ci(vals: np.ndarray, resamples: int, rng: np.random.Generator) -> list[float]:
    """Bootstrap 95% interval [2.5, 97.5 percentiles] of the mean of the finite `vals` (NaN if none)."""
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return [float("nan"), float("nan")]
    boot = rng.choice(vals, size=(resamples, vals.size), replace=True).mean(axis=1)
    return [float(x) for x in np.percentile(boot, [2.5, 97.5])]


def running_mean_band(
    values: np.ndarray, window: int = 20, resamples: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trailing running mean over `window` steps and its bootstrap 95% band. values (S,) -> 3 × (S,).

    NaN values are ignored; a window with no finite value gives NaN.
    """
    rng = np.random.default_rng(seed)
    mean, lo, hi = (np.full(len(values), np.nan) for _ in range(3))
    for s in range(len(values)):
        w = values[max(0, s - window + 1) : s + 1]
        w = w[np.isfinite(w)]
        if len(w) == 0:
            continue
        mean[s] = w.mean()
        lo[s], hi[s] = _bootstrap_ci(w, resamples, rng)
    return mean, lo, hi


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir} (is it a `temoe train` run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def paired_gain(run_dir: str | Path, baseline_dir: str | Path, key: str = "rollout/reward",
                windows: int = 4, resamples: int = 1000, seed: int = 0) -> dict:
    """Per-step `key` of a run minus a same-seed baseline run, over the steps both logged.

    Returns {"steps", "diff", "windows": [{"steps": [first, last], "mean", "ci": [lo, hi]}]}: the steps split
    into `windows` equal consecutive windows, each with its mean difference and a bootstrap 95% interval.
    """
    run = {r["step"]: r.get(key) for r in _records(Path(run_dir))}
    base = {r["step"]: r.get(key) for r in _records(Path(baseline_dir))}
    steps = sorted(s for s in run if s in base and run[s] is not None and base[s] is not None)
    if not steps:
        raise ValueError(f"{run_dir} and {baseline_dir} share no logged step with {key!r}")
    diff = np.array([run[s] - base[s] for s in steps], dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    for chunk in np.array_split(np.arange(len(steps)), min(windows, len(steps))):
        vals = diff[chunk]
        vals = vals[np.isfinite(vals)]
        out.append({"steps": [steps[chunk[0]], steps[chunk[-1]]], "mean": float(vals.mean()),
                    "ci": _bootstrap_ci(vals, resamples, rng)})
    return {"steps": steps, "diff": diff.tolist(), "windows": out}


def plot_paired_gain(run_dirs: Sequence[str | Path], baseline_dir: str | Path, out_dir: str | Path,
                     window: int = 20) -> Path:
    """`reward_gain.png`: each run's reward minus the frozen baseline's, running mean with bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for c, d in enumerate(run_dirs):
        gain = paired_gain(d, baseline_dir)
        steps, diff = np.array(gain["steps"], dtype=float), np.array(gain["diff"])
        mean, lo, hi = running_mean_band(diff, window)
        colour = colours[c % len(colours)]
        ax.plot(steps, diff, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, mean, color=colour, linewidth=2.0, label=_label(Path(d)))
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(f"Reward minus frozen controller ({_label(Path(baseline_dir))}, same prompts)")
    ax.set_xlabel("Training step")
    ax.set_ylabel("Δ reward (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "reward_gain.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _probes(run_dir: Path) -> list[dict]:
    path = run_dir / "eval.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def probe_gain(run_dir: str | Path, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Per probe (eval.jsonl): step, mean reward and switch rate with bootstrap 95% intervals over prompts,
    and the paired gain over the first probe (reward per prompt minus the first probe's) with its interval.

    [] when the run has no probes (`eval_every=0`).
    """
    probes = _probes(Path(run_dir))
    if not probes:
        return []
    rng = np.random.default_rng(seed)
    first = np.array(probes[0]["reward_per_prompt"], dtype=float)
    firsts = {k: np.array(probes[0].get(f"{k}_per_prompt", []), dtype=float) for k in ("kl", "fixed_kl")}
    out = []
    for p in probes:
        reward = np.array(p["reward_per_prompt"], dtype=float)
        switch = np.array(p["switch_rate_per_prompt"], dtype=float)
        gain = reward - first
        row = {"step": p["step"], "reward": float(np.nanmean(reward)),
               "reward_ci": _bootstrap_ci(reward, resamples, rng),
               "switch_rate": float(np.nanmean(switch)) if np.isfinite(switch).any() else float("nan"),
               "switch_rate_ci": _bootstrap_ci(switch, resamples, rng),
               "gain": float(np.nanmean(gain)), "gain_ci": _bootstrap_ci(gain, resamples, rng),
               "prompts": int(reward.size)}
        for k, first_k in firsts.items():  # exact KL: on-policy ("kl") and on the fixed text ("fixed_kl")
            if f"{k}_per_prompt" in p and first_k.size == reward.size:
                kl = np.array(p[f"{k}_per_prompt"], dtype=float)
                row.update({k: float(np.nanmean(kl)), f"{k}_ci": _bootstrap_ci(kl, resamples, rng),
                            f"{k}_reduction": float(np.nanmean(first_k - kl)),
                            f"{k}_reduction_ci": _bootstrap_ci(first_k - kl, resamples, rng)})
        out.append(row)
    return out


def plot_probes(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path | None:
    """`probe_reward.png` (None without probes): probe reward and switch rate by step (95% intervals over
    prompts), and the paired change of each KL from the first probe (95% intervals of the per-prompt change;
    below 0 = closer to the teacher)."""
    runs = [(Path(d), probe_gain(d)) for d in run_dirs]
    runs = [(d, g) for d, g in runs if g]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    keys = ["reward", "switch_rate"] + [k for k in ("kl", "fixed_kl")
                                        if all(k in g for _, gains in runs for g in gains)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    axes = axes[0]
    for c, (d, gains) in enumerate(runs):
        steps = np.array([g["step"] for g in gains], dtype=float)
        colour = colours[c % len(colours)]
        for ax, key in zip(axes, keys):
            if key in ("kl", "fixed_kl"):  # paired change from the first probe: −reduction
                mean = -np.array([g[f"{key}_reduction"] for g in gains])
                lo = -np.array([g[f"{key}_reduction_ci"][1] for g in gains])
                hi = -np.array([g[f"{key}_reduction_ci"][0] for g in gains])
            else:
                mean = np.array([g[key] for g in gains])
                lo = np.array([g[f"{key}_ci"][0] for g in gains])
                hi = np.array([g[f"{key}_ci"][1] for g in gains])
            ax.plot(steps, mean, "o-", color=colour, label=_label(d))
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
    n = runs[0][1][0]["prompts"]
    axes[0].set_title(f"Probe reward (neg. KL/token), {n} held-out prompts, fixed seeds")
    axes[1].set_title("Probe switch rate")
    titles = {"kl": "Change of KL/token from step 0, own samples",
              "fixed_kl": "Change of KL/token from step 0, fixed teacher text"}
    for ax, key in zip(axes[2:], keys[2:]):
        ax.set_title(titles[key])
        ax.axhline(0.0, color="black", linewidth=0.8)
    for ax in axes:
        ax.set_xlabel("Training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "probe_reward.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _controller_config(run_dir: Path) -> dict:
    cfg_path = run_dir / "config.yaml"
    return (yaml.safe_load(cfg_path.read_text()).get("controller") or {}) if cfg_path.is_file() else {}


def _load_budget(ctrl: dict) -> float | None:
    """The budget in loads per token of a run trained with `eta: auto` (None otherwise)."""
    if ctrl.get("eta") != "auto":
        return None
    from temoe.controller.config import ControllerConfig

    return ControllerConfig(**ctrl).load_budget_per_token()


def _label(run_dir: Path) -> str:
    ctrl = _controller_config(run_dir)
    if not ctrl:
        return run_dir.name
    budget = _load_budget(ctrl)
    eta = f"η auto → {budget:g} loads/token" if budget is not None else f"η={ctrl.get('eta')}"
    switch_cost = ctrl.get("switch_cost", "flat")
    cost = f", {switch_cost} cost" if budget is not None or switch_cost != "flat" else ""
    return f"{eta}{cost}, k̂={ctrl.get('k_hat')}"


def plot_eta(run_dirs: Sequence[str | Path], out_dir: str | Path, window: int = 20) -> Path | None:
    """`deliberation_cost.png`: η per step (left) and expert loads per generated token (right, raw and
    running mean; dashed: the run's budget). None when no run logged `controller/eta`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = [Path(d) for d in run_dirs]
    runs = [(d, _records(d)) for d in dirs]
    runs = [(d, recs) for d, recs in runs if any("controller/eta" in r for r in recs)]
    if not runs:
        return None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_eta, ax_loads) = plt.subplots(1, 2, figsize=(10, 3.6))
    for c, (d, recs) in enumerate(runs):
        colour = colours[c % len(colours)]
        steps = np.array([r["step"] for r in recs], dtype=float)
        eta = np.array([r.get("controller/eta", np.nan) for r in recs], dtype=float)
        loads = np.array([r.get("controller/loads_per_token", np.nan) for r in recs], dtype=float)
        ax_eta.plot(steps, eta, color=colour, linewidth=2.0, label=_label(d))
        ax_loads.plot(steps, loads, color=colour, alpha=0.25, linewidth=0.8)
        ax_loads.plot(steps, running_mean_band(loads, window)[0], color=colour, linewidth=2.0)
        budget = _load_budget(_controller_config(d))
        if budget is not None:
            ax_loads.axhline(budget, color=colour, linestyle="--", linewidth=1.0)
    ax_eta.set_title("Deliberation cost η")
    ax_loads.set_title("Expert loads per generated token (dashed: budget)")
    for ax in (ax_eta, ax_loads):
        ax.set_xlabel("Training step")
        ax.grid(alpha=0.3)
    ax_eta.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "deliberation_cost.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training(
    run_dirs: str | Path | Sequence[str | Path], out_dir: str | Path, window: int = 20
) -> list[Path]:
    """Write the four figures as PNG into `out_dir` for one or several run directories; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    runs = [(_label(d), _records(d)) for d in dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []
    for stem, title, panels in FIGURES:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (key, panel_title) in zip(axes[0], panels):
            for c, (label, records) in enumerate(runs):
                steps = np.array([r["step"] for r in records], dtype=float)
                vals = np.array(
                    [r.get(key, np.nan) if r.get(key) is not None else np.nan for r in records], dtype=float
                )
                colour = colours[c % len(colours)]
                mean, lo, hi = running_mean_band(vals, window)
                ax.plot(steps, vals, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(steps, mean, color=colour, linewidth=2.0, label=label)
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
            ax.set_title(panel_title)
            ax.set_xlabel("Training step")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    for extra in (plot_probes(dirs, out), plot_eta(dirs, out, window)):
        if extra is not None:
            paths.append(extra)
    return paths
