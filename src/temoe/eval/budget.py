"""The memory-budget benchmark: accuracy against predicted decode speed at B expert slots per layer.

For each budget B (k̂ = B), method and knob value, one evaluation (`temoe.eval.pipeline.evaluate_method`)
gives accuracy, switch rate and expert loads per token under the method's residency with B slots; the
loads are split into critical (the computation waits) and background (copied while compute goes on) and
priced with the cost model (`temoe.cost.predict`) on a hardware profile. Cells are cached as summary JSONs
in `DIR/k{B}/{cell}.json` (written through a `.part` file), so a rerun skips finished cells.
docs/budget.md explains the assumptions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temoe.cost import HardwareProfile, predict, profile_names

__all__ = [
    "Cell", "DEFAULT_METHODS", "KNOBS", "QUICK_METHODS", "EvalSettings", "parse_methods", "check_inputs",
    "plan_cells", "critical_split", "predict_row", "full_row", "run_cells", "write_outputs",
]

#: method -> (knob name, default knob values); methods without a knob have ().
KNOBS: dict[str, tuple[str | None, tuple]] = {
    "base": (None, ()), "lru": (None, ()), "lfu": (None, ()), "reap": (None, ()), "frequency": (None, ()),
    "reconstruction": (None, ()), "random": (None, ()), "wanda": (None, ()),
    "cache-prior": ("strength", (0.25, 0.5, 1.0)), "demand": ("threshold", (0.3, 0.5, 0.7)),
    "recency": ("recency", (1.0,)), "static-distill": ("distill_mask", ("frequency",)),
    "controller": ("eta", (0.02, 0.04, 0.08)),
}
DEFAULT_METHODS = ("lru", "lfu", "cache-prior", "demand", "reap", "frequency", "static-distill", "recency",
                   "controller")
QUICK_METHODS = ("lru", "demand=0.5", "frequency")
#: Residencies whose loads are all cache misses the computation waits for.
_CACHE_RESIDENCIES = ("lru", "lfu")
#: `written_by` of the cell summaries this module evaluates (others were placed in OUT beforehand).
WRITER = "temoe bench budget"
ROW_KEYS = ("method", "knob", "budget", "task", "accuracy", "accuracy_ci", "switch_rate", "loads_per_token",
            "critical_per_token", "background_per_token", "critical_source", "predicted_tok_s",
            "predicted_vs_full", "n")


@dataclass(frozen=True)
class Cell:
    """One evaluation: `method` at `knob` (None for methods without one), budget B = k̂, on `task`."""

    method: str
    knob: Any
    budget: int
    task: str

    @property
    def name(self) -> str:
        """File stem: `lru-mc`, `demand-0.5-mc`, `static-distill-frequency-math`, `controller-0.02-mc`."""
        knob = "" if self.knob is None else f"{_fmt(self.knob)}-"
        return f"{self.method}-{knob}{self.task}"


@dataclass
class EvalSettings:
    """The evaluation protocol shared by every cell (the defaults match `temoe eval`'s knobs at a short
    generation length for the embedded model)."""

    model: str = "tiny"
    limit: int = 200
    max_new_tokens: int = 64
    batch_size: int = 32
    temperature: float = 0.5
    top_p: float = 0.95
    seed: int = 42
    calibration_size: int = 128
    calibration_tokens: int = 256
    train_steps: int = 40
    cache_dir: str = ".temoe-cache"
    device: str | None = None
    checkpoints: dict[tuple[int, float], str] = field(default_factory=dict)
    """(B, η) -> controller checkpoint directory (trained with k̂ = B)."""


def _fmt(value) -> str:
    """Knob value as written in file names and tables: 1.0 -> "1", 0.25 -> "0.25"."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_methods(items: Iterable[str]) -> list[tuple[str, Any]]:
    """`["lru", "demand", "cache-prior=0.25,1"]` -> [(method, knob)] with each method's default knob values
    where none are given; raises ValueError naming the valid methods."""
    out: list[tuple[str, Any]] = []
    for item in items:
        method, _, values = item.partition("=")
        if method not in KNOBS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(KNOBS)}")
        name, defaults = KNOBS[method]
        if values and name is None:
            raise ValueError(f"method {method!r} has no knob, got {item!r}")
        if not values:
            out += [(method, v) for v in defaults] if name else [(method, None)]
            continue
        for v in values.split(","):
            out.append((method, _parse_knob(method, v)))
    return out


def _parse_knob(method: str, text: str):
    if method == "static-distill":
        if text not in ("frequency", "reap"):
            raise ValueError(f"static-distill knob {text!r}; valid: frequency, reap")
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{method} knob {text!r} is not a number") from None
    if value < 0 or (method == "demand" and not 0 < value < 1):
        valid = "(0, 1)" if method == "demand" else ">= 0"
        raise ValueError(f"{method} knob {text!r} out of range; valid: {valid}")
    return value


def check_inputs(budgets: Iterable[int], k_tilde: int, num_experts: int, hardware: str) -> None:
    """Raise ValueError for a budget outside [k̃, N] or an unknown hardware profile, naming valid values."""
    for b in budgets:
        if not k_tilde <= b <= num_experts:
            raise ValueError(f"budget {b} is out of range; valid: k̃ = {k_tilde} <= B <= N = {num_experts}")
    if hardware != "local" and hardware not in profile_names():
        raise ValueError(f"unknown hardware profile {hardware!r}; valid: {', '.join(profile_names())}, local")


def plan_cells(budgets: Iterable[int], methods: list[tuple[str, Any]], tasks: Iterable[str]) -> list[Cell]:
    """Every (budget, method, knob, task) cell, plus the base model's cell per budget (the full-residency
    row's accuracy)."""
    cells = []
    for b in budgets:
        for task in tasks:
            cells.append(Cell("base", None, b, task))
            cells += [Cell(m, k, b, task) for m, k in methods if m != "base"]
    return cells


def cell_path(out: Path, cell: Cell) -> Path:
    return Path(out) / f"k{cell.budget}" / f"{cell.name}.json"


def critical_split(summary: dict) -> tuple[float, float, str]:
    """(critical, background) loads per token of one eval summary and how the split was made.

    lru / lfu: every load is a miss of a routed expert, so critical. static: no loads. option: the routed
    experts that were not resident (`critical_per_token` from the records, `split_loads` semantics) when the
    summary has it, else every load is counted critical (conservative: the engine copies the rest of an
    option in the background)."""
    loads = summary.get("loads_per_token") or 0.0
    residency = summary.get("residency")
    if residency in _CACHE_RESIDENCIES or residency == "static":
        return loads, 0.0, "all critical" if loads else "no loads"
    if summary.get("critical_per_token") is not None:
        c = summary["critical_per_token"]
        return c, max(loads - c, 0.0), "routed misses (split_loads)"
    return loads, 0.0, "all critical (conservative)"


def _changes(members: list[list[list[int]]], layer: int) -> list[list]:
    """Per-position option members (T, L, ids) -> one layer's `allowed` changes `[[t, ids], ...]`."""
    out, prev = [], None
    for t, pos in enumerate(members):
        ids = sorted(pos[layer])
        if ids != prev:
            out.append([t, ids])
            prev = ids
    return out


def option_critical_per_token(records: list[dict], budget: int) -> float | None:
    """Critical loads per decode token of an option method's eval records: the routed experts that were not
    resident when their token came (`temoe.cost.split_loads`'s critical part), replayed with the cache
    simulator at `budget` slots per layer. Records: `routed_experts` (T, L, k) and `active_experts`
    (T, L, the option's members)."""
    from temoe.traces.residency import simulate_sequence

    critical = tokens = 0
    for r in records:
        routed, members = r.get("routed_experts"), r["active_experts"]
        if routed is None or not routed:
            continue
        L = len(routed[0])
        trace = {"id": r["id"], "k_tilde": len(routed[0][0]), "num_experts": r["num_experts"],
                 "layers": [[pos[i] for pos in routed] for i in range(L)],
                 "allowed": [_changes(members, i) for i in range(L)]}
        counts = simulate_sequence(trace, "option", budget)
        critical += sum(counts.accesses) - sum(counts.hits)
        tokens += counts.decode_tokens
    return critical / tokens if tokens else None


def predict_row(summary: dict, cell: Cell, profile: HardwareProfile, layer_scale: float) -> dict:
    """One budget.json row: the summary's accuracy columns and the cost model's prediction.

    layer_scale: profile layers / the evaluated model's MoE layers (loads per token per layer carry over).
    predicted_tok_s: the temoe engine (the profile's overhead of the method's serving path included);
    ideal_tok_s: the same loads with no path overhead."""
    c, b, how = critical_split(summary)
    path = "cache" if summary.get("residency") in _CACHE_RESIDENCIES else "option"  # static: masked routing
    p = predict(profile, critical_per_token=c * layer_scale, background_per_token=b * layer_scale, path=path)
    return {"method": cell.method, "knob": cell.knob, "budget": cell.budget, "task": cell.task,
            "accuracy": summary["accuracy"], "accuracy_ci": summary.get("accuracy_ci"),
            "switch_rate": summary.get("switch_rate"), "loads_per_token": summary.get("loads_per_token"),
            "critical_per_token": c, "background_per_token": b, "critical_source": how,
            "predicted_tok_s": p.tok_s, "predicted_vs_full": p.vs_full, "ideal_tok_s": p.ideal_tok_s,
            "n": summary.get("n")}


def full_row(base: dict, budget: int, task: str, profile: HardwareProfile) -> dict:
    """The full-residency row: the base model's accuracy, no loads, the profile's full decode speed."""
    return {"method": "full", "knob": None, "budget": budget, "task": task, "accuracy": base["accuracy"],
            "accuracy_ci": base.get("accuracy_ci"), "switch_rate": None, "loads_per_token": 0.0,
            "critical_per_token": 0.0, "background_per_token": 0.0,
            "critical_source": "every expert resident", "predicted_tok_s": profile.decode_tok_s,
            "predicted_vs_full": 1.0, "n": base.get("n")}


def write_atomic(path: Path, text: str) -> None:
    """Write through `path.part`, then rename: a killed run leaves no half-written cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def run_cells(cells: list[Cell], out: Path, settings: EvalSettings,
              progress: Callable[[Cell, bool], None] | None = None) -> dict[Cell, dict]:
    """Evaluate every cell whose summary JSON is not in `out` yet; returns cell -> summary."""
    results, todo = {}, []
    for cell in cells:
        path = cell_path(out, cell)
        if path.is_file():
            results[cell] = json.loads(path.read_text())
            if progress:
                progress(cell, True)
        else:
            todo.append(cell)
    if todo:
        runner = CellRunner(settings)
        for cell in todo:
            summary = runner.evaluate(cell)
            write_atomic(cell_path(out, cell), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
            results[cell] = summary
            if progress:
                progress(cell, False)
    return results


def provenance_note(results: dict[Cell, dict]) -> str:
    """How many cells this command evaluated and how many it read from summaries placed in OUT beforehand."""
    ours = sum(1 for s in results.values() if s.get("written_by") == WRITER)
    other = len(results) - ours
    note = f"{ours} of {len(results)} cells evaluated by temoe bench budget"
    if other:
        note += f"; {other} read from `temoe eval` summaries with the same settings placed in OUT beforehand"
    return note


def build_rows(results: dict[Cell, dict], profile: HardwareProfile, model_layers: int) -> list[dict]:
    """budget.json rows: one per evaluated cell (base excluded) plus the full-residency row per budget and
    task."""
    scale = profile.num_layers / model_layers
    rows = []
    for cell, summary in results.items():
        if cell.method == "base":
            rows.append(full_row(summary, cell.budget, cell.task, profile))
        else:
            rows.append(predict_row(summary, cell, profile, scale))
    return rows


def write_outputs(out: Path, rows: list[dict], profile: HardwareProfile, command: str, notes: list[str],
                  model_layers: int) -> list[Path]:
    """DIR/budget.json, DIR/budget.md and DIR/pareto_<task>_B<budget>.png; returns the paths written."""
    out = Path(out)
    meta = {"command": command, "profile": _profile_line(profile), "model_layers": model_layers,
            "notes": notes}
    write_atomic(out / "budget.json", json.dumps({**meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / "budget.md", _markdown(rows, meta))
    return [out / "budget.json", out / "budget.md"] + _plots(out, rows, profile)


def _profile_line(p: HardwareProfile) -> str:
    return (f"{p.name}: {p.num_layers} MoE layers, {p.expert_bytes / 2**20:.1f} MiB per expert"
            f"{f' ({p.dtype})' if p.dtype else ''}, {p.h2d_bandwidth_gbps:.3g} GB/s host->device, "
            f"full-residency decode {p.decode_tok_s:.3g} tok/s, background overlap {p.background_overlap:g}")


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Memory-budget benchmark", "", f"Command: `{meta['command']}`", "",
             f"Hardware profile: {meta['profile']}", ""]
    lines += [f"- {n}" for n in meta["notes"]] + [""]
    for b in sorted({r["budget"] for r in rows}):
        lines += [f"## B = {b}", "",
                  "| task | method | knob | accuracy | 95% CI | switch rate | loads/token | critical/token "
                  "| predicted tok/s | vs full |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r["budget"] == b), key=_order):
            sw = "" if r["switch_rate"] is None else f"{r['switch_rate']:.3f}"
            knob = "" if r["knob"] is None else _fmt(r["knob"])
            lines.append(f"| {r['task']} | {r['method']} | {knob} | {r['accuracy']:.3f} | "
                         f"{_ci(r['accuracy_ci'])} | {sw} | {r['loads_per_token'] or 0:.3f} | "
                         f"{r['critical_per_token']:.3f} | {r['predicted_tok_s']:.2f} | "
                         f"{r['predicted_vs_full']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def _order(r: dict):
    return (r["task"], r["method"] != "full", r["method"], _fmt(r["knob"]) if r["knob"] is not None else "")


def _plots(out: Path, rows: list[dict], profile: HardwareProfile) -> list[Path]:
    """One Pareto plot per (task, budget): accuracy against predicted tok/s, a line per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task, b in sorted({(r["task"], r["budget"]) for r in rows}):
        sel = [r for r in rows if r["task"] == task and r["budget"] == b]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in sorted({r["method"] for r in sel} - {"full"}):
            pts = sorted((r for r in sel if r["method"] == method), key=lambda r: r["predicted_tok_s"])
            ax.plot([r["predicted_tok_s"] for r in pts], [r["accuracy"] for r in pts], marker="o",
                    label=method)
            for r in pts:
                if r["knob"] is not None:
                    ax.annotate(_fmt(r["knob"]), (r["predicted_tok_s"], r["accuracy"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
        for r in (r for r in sel if r["method"] == "full"):
            ax.scatter([r["predicted_tok_s"]], [r["accuracy"]], marker="*", s=180, color="black", zorder=5,
                       label="full residency (base model)")
            ax.axhline(r["accuracy"], color="grey", linestyle=":", linewidth=1, label="base model accuracy")
        ax.set_xlabel(f"predicted decode tok/s ({profile.name})")
        ax.set_ylabel(f"accuracy ({task})")
        ax.set_title(f"{task}, B = {b} expert slots per layer")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"pareto_{task}_B{b}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


class CellRunner:
    """Evaluates cells in this process: the model is loaded once (again per controller checkpoint, whose
    LoRA is merged into its copy)."""

    def __init__(self, settings: EvalSettings):
        import torch

        from temoe.loading import load_model

        self.s = settings
        self.device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._load_model = load_model
        self._handle = None

    def handle(self):
        if self._handle is None:
            import temoe

            model, self.tokenizer = self._load_model(self.s.model)
            self._handle = temoe.wrap(model.to(self.device).eval())
        return self._handle

    def _options(self, cell: Cell) -> tuple[object, dict]:
        from temoe.baselines import CalibrationConfig
        from temoe.baselines.distill import DistillConfig

        s = self.s
        calibration = CalibrationConfig(num_prompts=s.calibration_size, max_total_tokens=s.calibration_tokens,
                                        seed=s.seed)
        options: dict[str, Any] = dict(cache_dir=s.cache_dir, calibration=calibration)
        m, k = cell.method, cell.knob
        if m == "cache-prior":
            options["peer_options"] = {"strength": k}
        elif m == "demand":
            options["peer_options"] = {"threshold": k, "decay": 0.9}
        elif m in ("recency", "static-distill"):
            distill = DistillConfig(steps=s.train_steps, recency=k if m == "recency" else 0.0, seed=s.seed)
            options["peer_options"] = {"distill": distill,
                                       "distill_mask": k if m == "static-distill" else "frequency"}
        if m != "controller":
            return self.handle(), options
        ckpt = s.checkpoints.get((cell.budget, k))
        if ckpt is None:
            raise ValueError(f"no controller checkpoint for B = {cell.budget}, eta = {_fmt(k)}")
        from temoe.eval.pipeline import load_controller

        model, tokenizer = self._load_model(s.model)
        model, handle, controller = load_controller(model.to(self.device).eval(), ckpt)
        self.tokenizer = tokenizer
        options.update(controller=controller, eta=k)
        return handle, options

    def evaluate(self, cell: Cell) -> dict:
        """Run one cell's evaluation; returns its summary (with the settings that identify it)."""
        from temoe.eval.pipeline import evaluate_method
        from temoe.eval.tasks import load_task
        from temoe.rollout.runner import GenerationConfig

        s = self.s
        task = load_task(cell.task, None, limit=s.limit, seed=s.seed)
        generation = GenerationConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                      top_p=s.top_p, batch_size=s.batch_size, seed=s.seed)
        handle, options = self._options(cell)
        k_hat = handle.top_k if cell.method == "base" else cell.budget
        summary, records = evaluate_method(handle, self.tokenizer, task, cell.method, k_hat,
                                           generation=generation, budget=cell.budget, **options)
        if summary.get("residency") == "option":
            summary["critical_per_token"] = option_critical_per_token(records, cell.budget)
        checkpoint = s.checkpoints.get((cell.budget, cell.knob)) if cell.method == "controller" else None
        summary.update(written_by=WRITER, model=s.model, checkpoint=checkpoint)
        return summary
