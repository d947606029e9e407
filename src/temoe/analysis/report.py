"""The paper's Table 2/3 layout and figures, built from saved evaluation summaries and records
(no model runs).

Inputs are the files `temoe eval` / `temoe demo` write: a summary JSON per (method, η, k̂, task) with
`accuracy`, `accuracy_ci`, `switch_rate`, `switch_rate_ci` and, when saved, `records` (the JSONL path whose
records hold `active_experts`). Tables: one per k̂, rows base, the four baselines, the controller at each η;
columns accuracy ± 95% CI and switch rate ± 95% CI per benchmark, in percent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["METHOD_ORDER", "TASK_NAMES", "load_summaries", "summary_rows", "markdown_tables", "heatmaps",
           "training_curves", "build_report"]

METHOD_ORDER = ("base", "lru", "lfu", "cache-prior", "recency", "frequency", "reconstruction", "reap",
                "static-distill", "random", "random-fixed", "wanda", "demand", "controller")
TASK_NAMES = {"math": "Math", "mc": "MC", "mc-multilingual": "MC-multilingual", "hendrycks-math": "MATH",
              "mmlu": "MMLU", "mmmlu": "MMMLU"}
_METHOD_LABELS = {"base": "Base model", "frequency": "Frequency", "reconstruction": "Reconstruction loss",
                  "random": "Random (per token)", "random-fixed": "Random (fixed subset)",
                  "wanda": "Wanda (structured)", "lru": "LRU cache", "lfu": "LFU cache",
                  "cache-prior": "Cache-conditional routing", "reap": "REAP", "demand": "Demand rule",
                  "recency": "Router fine-tuning for reuse",
                  "static-distill": "Self-distillation, fixed mask"}


def _variant(s: dict[str, Any]) -> str:
    """The knobs of a method that has some (cache-prior λ, demand τ, recency weight, distillation mask) and
    a cache budget that differs from k̂."""
    parts = []
    if s.get("cache_prior_strength") is not None:
        parts.append(f"λ = {s['cache_prior_strength']:g}")
    if s.get("demand_threshold") is not None:
        parts.append(f"τ = {s['demand_threshold']:g}")
    if s.get("method") == "recency":
        parts.append(f"recency {s['recency']:g}")
    if s.get("distill_mask") is not None:
        parts.append(f"{s['distill_mask']} mask")
    if s.get("budget") is not None and s.get("budget") != s.get("k_hat"):
        parts.append(f"B = {s['budget']}")
    return ", ".join(parts)


def load_summaries(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every summary JSON among `paths` (files, or directories searched recursively); other JSON is
    skipped."""
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"report input {str(p)!r} does not exist")
        files = sorted(p.rglob("*.json")) if p.is_dir() else [p]
        for f in files:
            try:
                obj = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict) and {"accuracy", "method", "task"} <= set(obj):
                obj.setdefault("_path", str(f))
                out.append(obj)
    return out


def summary_rows(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows `method, eta, k_hat, task, n, accuracy, accuracy_ci, switch_rate, switch_rate_ci, records`,
    sorted by k̂ (descending), method order, η, task."""
    rows = []
    for s in summaries:
        rows.append({"method": s["method"], "eta": s.get("eta"), "k_hat": s.get("k_hat"), "task": s["task"],
                     "n": s.get("n"), "accuracy": s["accuracy"], "accuracy_ci": s.get("accuracy_ci"),
                     "switch_rate": s.get("switch_rate"), "switch_rate_ci": s.get("switch_rate_ci"),
                     "records": s.get("records"), "loads_per_token": s.get("loads_per_token"),
                     "variant": _variant(s)})

    def key(r):
        m = METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else len(METHOD_ORDER)
        eta = r["eta"]  # a number, None, or a budget label ("auto, 1 load/token"): after the numbers
        return (-(r["k_hat"] or 0), m, isinstance(eta, str), eta if isinstance(eta, str) else
                (eta if eta is not None else -1.0), r["variant"], r["task"])

    return sorted(rows, key=key)


def _pm(value: float | None, ci: Sequence[float] | None) -> str:
    """'71.5 ± 5.9' in percent (half-width of the CI; the CIs here are symmetric except where clipped)."""
    if value is None:
        return "–"
    if not ci:
        return f"{100 * value:.1f}"
    half = max(value - ci[0], ci[1] - value)
    return f"{100 * value:.1f} ± {100 * half:.1f}"


def _label(method: str, eta: float | str | None, variant: str = "") -> str:
    if method == "controller":
        if isinstance(eta, str):  # trained to a budget with η by dual ascent
            return f"Controller (η {eta})"
        return "Controller" + (f" (η = {eta:g})" if eta is not None else "")
    return _METHOD_LABELS.get(method, method) + (f" ({variant})" if variant else "")


def markdown_tables(rows: Sequence[dict[str, Any]], tasks: Sequence[str] | None = None) -> str:
    """Markdown: one table per k̂ with `Acc. (%)` and `Switch (%)` columns per task (Table 2/3 layout)."""
    if not rows:
        raise ValueError("no evaluation summaries to tabulate")
    if not tasks:
        tasks = sorted({r["task"] for r in rows})
    out = []
    for k_hat in sorted({r["k_hat"] for r in rows}, key=lambda k: -(k or 0)):
        at_k = [r for r in rows if r["k_hat"] == k_hat]
        methods = list(dict.fromkeys((r["method"], r["eta"], r.get("variant", "")) for r in at_k))
        loads = any(r.get("loads_per_token") is not None for r in at_k)  # older summaries have none
        columns = ("Acc. (%)", "Switch (%)") + (("Loads/tok",) if loads else ())
        header = ["Method"] + [f"{TASK_NAMES.get(t, t)} {c}" for t in tasks for c in columns]
        lines = [f"**k̂ = {k_hat}**", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for method, eta, variant in methods:
            cells = [_label(method, eta, variant)]
            for t in tasks:
                r = next((r for r in at_k if r["method"] == method and r["eta"] == eta
                          and r.get("variant", "") == variant and r["task"] == t), None)
                if r is None:
                    cells += ["–"] * len(columns)
                    continue
                cells += [_pm(r["accuracy"], r["accuracy_ci"]), _pm(r["switch_rate"], r["switch_rate_ci"])]
                if loads:
                    lpt = r.get("loads_per_token")
                    cells.append("–" if lpt is None else f"{lpt:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    note = ("Accuracy ± half-width of the 95% Wald interval over questions (the interval the paper's "
            "± values match); switch rate ± half-width of the 95% normal interval of the mean over "
            "questions. Base and static baselines: the base-model switch-rate definition with k̂ slots; "
            "random and controller: the change rate of the installed masks (the paper's §2). Loads/tok: "
            "expert loads per decode token summed over layers under the method's residency at B slots per "
            "layer (docs/traces.md). – : no value (not run, or no question generated ≥ 2 tokens, e.g. "
            "one-letter answers).")
    return "\n\n".join(out) + "\n\n" + note + "\n"


def _first_record(path: str | Path) -> dict[str, Any] | None:
    """The first record (sorted by id) with generated positions, for a reproducible heatmap."""
    p = Path(path)
    if not p.exists():
        return None
    recs = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("active_experts")]
    return min(recs, key=lambda r: str(r["id"])) if recs else None


def heatmaps(rows: Sequence[dict[str, Any]], out_dir: str | Path, layers: Sequence[int] = (0, 1, 2),
             task: str | None = None) -> list[Path]:
    """Expert-activation heatmaps (Fig. 2, 5–7) for layers 0–2: the base model and every controller, from the
    first question of `task` (default: the first task with records), via `temoe.analysis.activations`."""
    from temoe.analysis.activations import plot_activations

    with_records = [r for r in rows if r.get("records") and r["method"] in ("base", "controller")]
    if not with_records:
        return []
    task = task or with_records[0]["task"]
    paths = []
    for r in with_records:
        if r["task"] != task:
            continue
        rec = _first_record(r["records"])
        if rec is None:
            continue
        usable = [layer for layer in layers if layer < len(rec["active_experts"][0])]
        rec = {**rec, "model": _label(r["method"], r["eta"]) + f", {TASK_NAMES.get(task, task)}"}
        eta = "" if r["eta"] is None else "_budget" if isinstance(r["eta"], str) else f"_eta{r['eta']:g}"
        paths += plot_activations(rec, usable, out_dir, stem=f"activations_{r['method']}{eta}_k{r['k_hat']}")
    return paths


def training_curves(runs: dict[str, str | Path], out_path: str | Path,
                    keys: Sequence[str] = ("rollout/reward", "rollout/switch_rate")) -> Path | None:
    """One PNG with a panel per metric key, one line per training run (`RUN/metrics.jsonl`), versus step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for label, run in runs.items():
        f = Path(run) / "metrics.jsonl"
        if f.exists():
            series[label] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if not series:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, recs in series.items():
            pts = [(r.get("step", j + 1), r[key]) for j, r in enumerate(recs) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=label)
        ax.set_xlabel("step")
        ax.set_title(key)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=150)
    plt.close(fig)
    return out_path


def build_report(inputs: Iterable[str | Path], out_dir: str | Path, *, title: str = "temoe evaluation",
                 tasks: Sequence[str] | None = None, runs: dict[str, str | Path] | None = None,
                 preamble: str = "") -> Path:
    """Write `out_dir/report.md` (tables + figure links) and `out_dir/figures/*.png`; returns the
    report path."""
    out_dir = Path(out_dir)
    rows = summary_rows(load_summaries(inputs))
    parts = [f"# {title}", ""]
    if preamble:
        parts += [preamble, ""]
    parts += [markdown_tables(rows, tasks)]
    figs = heatmaps(rows, out_dir / "figures")
    curves = training_curves(runs or {}, out_dir / "figures" / "training_curves.png")
    if figs or curves:
        parts.append("## Figures\n")
    if curves:
        parts.append(f"![training curves]({curves.relative_to(out_dir)})\n")
    for f in figs:
        parts.append(f"![{f.stem}]({f.relative_to(out_dir)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
