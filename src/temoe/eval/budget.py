"""The memory-budget benchmark: accuracy against predicted decode speed at B expert slots per layer.

For each budget B (k̂ = B), method and knob value, one evaluation (the computation of
`temoe.eval.pipeline.evaluate_method`) gives accuracy, switch rate and expert loads per token under the
method's residency with B slots; the loads are split into critical (the computation waits) and background
(copied while compute goes on) and priced with the cost model (`temoe.cost.predict`) on a hardware profile.
Cells are cached as summary JSONs in `DIR/k{B}/{cell}.json` (written through a `.part` file), so a rerun
skips finished cells.

Work is grouped into units (`plan_units`): the methods that leave the router alone (base, lru, lfu, recency)
generate once per task and replay that routing at every budget (`router_views`); a trained method
(recency, static-distill) trains once for all tasks. Units and controller trainings run in `jobs` worker
processes (`run_cells`; the caller passes the training function); every unit seeds torch first, so the
results do not depend on the schedule.
docs/budget.md explains the assumptions.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from temoe.cost import HardwareProfile, predict, profile_names

__all__ = [
    "Cell", "DEFAULT_METHODS", "KNOBS", "QUICK_METHODS", "EvalSettings", "parse_methods", "check_inputs",
    "plan_cells", "plan_units", "critical_split", "predict_row", "full_row", "router_views", "run_cells",
    "train_done", "write_outputs",
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
#: Methods whose generations do not depend on B (no mask over the router): one generation per task serves
#: every budget.
ROUTER_METHODS = ("base", "lru", "lfu", "recency")
#: Methods that read the calibration sequences (warmed once before the units that need them run).
CALIBRATING = ("reap", "frequency", "static-distill", "recency", "reconstruction", "wanda")
#: Residencies whose loads are all cache misses the computation waits for.
_CACHE_RESIDENCIES = ("lru", "lfu")
#: `written_by` of the cell summaries this module evaluates (others were placed in OUT beforehand).
WRITER = "temoe bench budget"
ROW_KEYS = ("method", "knob", "budget", "task", "accuracy", "accuracy_ci", "switch_rate", "loads_per_token",
            "critical_per_token", "background_per_token", "critical_source", "predicted_tok_s",
            "predicted_vs_full", "ideal_tok_s", "n")


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
    controller_steps: int | None = None
    """Controller training steps (None: the `tiny` trainer config's)."""
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
            "predicted_vs_full": 1.0, "ideal_tok_s": profile.decode_tok_s, "n": base.get("n")}


def write_atomic(path: Path, text: str) -> None:
    """Write through `path.part`, then rename: a killed run leaves no half-written cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


@dataclass(frozen=True)
class Unit:
    """Work done in one model context: `cells` (all missing) of one method (and knob; and budget unless the
    method leaves the router alone), over their tasks. `needs`: the trainings (B, η) it waits for."""

    key: tuple
    cells: tuple[Cell, ...]
    needs: tuple[tuple[int, float], ...] = ()


def _unit_key(cell: Cell) -> tuple:
    if cell.method in ("base", "lru", "lfu"):
        return ("router", None, None)
    if cell.method in ROUTER_METHODS:
        return (cell.method, cell.knob, None)
    return (cell.method, cell.knob, cell.budget)


def plan_units(cells: Iterable[Cell]) -> list[Unit]:
    """Group cells into units (`Unit`) in order of first appearance; controller units need their training."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(_unit_key(cell), []).append(cell)
    units = []
    for key, group in groups.items():
        needs = ((key[2], key[1]),) if key[0] == "controller" else ()
        units.append(Unit(key, tuple(group), needs))
    return units


def run_cells(cells: list[Cell], out: Path, settings: EvalSettings,
              progress: Callable[[Cell, bool], None] | None = None, *, jobs: int = 1,
              trainings: Iterable[tuple[int, float]] = (), threads: int | None = None,
              trained: Callable[[tuple[int, float]], None] | None = None,
              train: Callable[[EvalSettings, int, float], None] | None = None) -> dict[Cell, dict]:
    """Train the controllers `trainings` with `train(settings, B, η)` (a module-level function, so that
    worker processes can run it; it trains into `settings.checkpoints[(B, η)]` and leaves `budget-done`
    there, `train_done`) and evaluate every cell whose summary JSON is not in `out` yet, in `jobs` processes
    (1: this one); returns cell -> summary. `threads`: torch threads of each worker process (default 1)."""
    results, todo = {}, []
    for cell in cells:
        path = cell_path(out, cell)
        if path.is_file():
            results[cell] = json.loads(path.read_text())
            if progress:
                progress(cell, True)
        else:
            todo.append(cell)
    trainings = list(trainings)
    for t in [t for t in trainings if train_done(settings.checkpoints[t])]:
        trainings.remove(t)
        if trained:
            trained(t)  # finished earlier: counted as done
    units = plan_units(todo)
    prepare = any(c.method in CALIBRATING for c in todo)
    if not units and not trainings:
        return {cell: results[cell] for cell in cells}

    def done_unit(summaries: list[tuple[Cell, dict]]) -> None:
        for cell, summary in summaries:
            results[cell] = summary
            if progress:
                progress(cell, False)

    if jobs <= 1:
        _run_here(units, trainings, prepare, Path(out), settings, done_unit, trained, train)
    else:
        _run_pool(units, trainings, prepare, Path(out), settings, done_unit, trained, train, jobs,
                  threads or 1)
    return {cell: results[cell] for cell in cells}  # in plan order, whichever process finished first


def _run_here(units, trainings, prepare, out, settings, done_unit, trained, train) -> None:
    for t in trainings:
        train(settings, *t)
        if trained:
            trained(t)
    runner = CellRunner(settings)
    if prepare:
        runner.prepare()
    for unit in units:
        done_unit(runner.run_unit(unit, out))


def _run_pool(units, trainings, prepare, out, settings, done_unit, trained, train, jobs, threads) -> None:
    """Schedule trainings first (the longest jobs), the calibration warm-up, then units as their trainings
    and the warm-up finish."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    waiting = list(units)
    finished: set = set()
    pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                               initargs=(asdict(settings), threads, train))
    running: dict = {}
    try:
        for t in trainings:
            running[pool.submit(_worker_train, t)] = ("train", t)
        if prepare:
            running[pool.submit(_worker_prepare)] = ("prepare", None)

        def ready(unit: Unit) -> bool:
            if any(("train", t) in _pending(running) for t in unit.needs):
                return False
            return not (prepare and "prepare" not in finished and any(c.method in CALIBRATING
                                                                      for c in unit.cells))

        while running or waiting:
            for unit in [u for u in waiting if ready(u)]:
                waiting.remove(unit)
                running[pool.submit(_worker_unit, unit, str(out))] = ("unit", unit)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind, what = running.pop(future)
                value = future.result()  # a failure in a worker raises here
                if kind == "train":
                    finished.add(("train", what))
                    if trained:
                        trained(what)
                elif kind == "prepare":
                    finished.add("prepare")
                else:
                    done_unit(value)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _pending(running: dict) -> set:
    return {(kind, what) for kind, what in running.values() if kind == "train"}


_WORKER: dict[str, Any] = {}


def _worker_init(settings: dict, threads: int, train) -> None:
    import torch

    _WORKER["train"] = train
    torch.set_num_threads(threads)
    checkpoints = {tuple(k) if isinstance(k, list) else k: v for k, v in settings.pop("checkpoints").items()}
    _WORKER["settings"] = EvalSettings(**settings, checkpoints=checkpoints)


def _runner() -> CellRunner:
    if "runner" not in _WORKER:
        _WORKER["runner"] = CellRunner(_WORKER["settings"])
    return _WORKER["runner"]


def _worker_train(t: tuple[int, float]) -> None:
    _WORKER["train"](_WORKER["settings"], *t)


def _worker_prepare() -> None:
    _runner().prepare()


def _worker_unit(unit: Unit, out: str) -> list[tuple[Cell, dict]]:
    return _runner().run_unit(unit, Path(out))


def train_done(run_dir: str) -> bool:
    """A finished training run of this benchmark: its directory holds the `budget-done` marker."""
    return (Path(run_dir) / "budget-done").is_file()


class _RouterViews:
    """Wraps a `MaskSource` that installs no mask: generation is the source's own, and every sequence's
    switch statistics are also taken under each view source (the same router, another k̂) and its routing
    kept, so that `router_views` can replay it at every budget."""

    def __init__(self, source, views):
        self._source, self._views = source, views
        self.switches: list[list[tuple]] = [[] for _ in views]
        self.layers: list[list] = []

    def __getattr__(self, name):
        return getattr(self._source, name)

    def start(self, batch_size: int):
        masks = self._source.start(batch_size)
        if masks is not None:
            raise ValueError(f"method {self._source.name!r} installs masks; its generations depend on k̂")
        return None

    def sequence_switches(self, b, rows, router_logits, expert_ids):
        for acc, view in zip(self.switches, self._views, strict=True):
            acc.append(view.sequence_switches(b, rows, router_logits, expert_ids))
        self.layers.append(expert_ids.permute(1, 0, 2).tolist())  # (T, L, k) -> (L, T, k)
        return self._source.sequence_switches(b, rows, router_logits, expert_ids)


def router_views(handle, tokenizer, task, source, views: list[tuple[Any, int]],
                 generation) -> list[tuple[dict, list[dict]]]:
    """Evaluate `task` once with `source` (a `MaskSource` without masks) and return, for each (view source,
    budget) in `views`, the (summary, records) `temoe.eval.runner.evaluate` gives that view at that budget:
    the same generations, each view's switch rate (its k̂) and loads (its residency with `budget` slots),
    apart from `seconds` (the shared generation's) and `shared_generation` (True)."""
    from temoe.analysis.stats import summarise
    from temoe.eval.runner import evaluate
    from temoe.traces.residency import simulate_sequence

    wrapper = _RouterViews(source, [v for v, _ in views])
    budget = max(b for _, b in views)
    shared, records = evaluate(handle, tokenizer, task, wrapper, generation, budget=budget)
    out = []
    for (view, b), switches in zip(views, wrapper.switches, strict=True):
        recs = []
        for r, (rate, loaded), layers in zip(records, switches, wrapper.layers, strict=True):
            trace = {"id": r["id"], "k_tilde": handle.top_k, "num_experts": handle.num_experts,
                     "layers": layers}
            counts = simulate_sequence(trace, view.residency, b)
            recs.append({**r, "switch_rate": rate, "experts_loaded": loaded, "loads": sum(counts.loads),
                         "decode_tokens": counts.decode_tokens})
        summary = summarise(recs)
        tokens, loads = sum(r["decode_tokens"] for r in recs), sum(r["loads"] for r in recs)
        summary.update(loads_per_token=loads / tokens if tokens else None, budget=b, residency=view.residency)
        summary.update(task=shared["task"], method=view.name, k_hat=view.k_hat, seconds=shared["seconds"],
                       switch_rate_definition=view.switch_definition, generation=shared["generation"],
                       pool_size=shared["pool_size"], **view.describe())
        summary["shared_generation"] = True
        out.append((summary, recs))
    return out


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
                  "| predicted tok/s | vs full | ideal tok/s |", "|" + "---|" * 11]
        for r in sorted((r for r in rows if r["budget"] == b), key=_order):
            sw = "" if r["switch_rate"] is None else f"{r['switch_rate']:.3f}"
            knob = "" if r["knob"] is None else _fmt(r["knob"])
            lines.append(f"| {r['task']} | {r['method']} | {knob} | {r['accuracy']:.3f} | "
                         f"{_ci(r['accuracy_ci'])} | {sw} | {r['loads_per_token'] or 0:.3f} | "
                         f"{r['critical_per_token']:.3f} | {r['predicted_tok_s']:.2f} | "
                         f"{r['predicted_vs_full']:.3f} | {_ideal(r)} |")
        lines.append("")
    return "\n".join(lines)


def _ideal(r: dict) -> str:
    """A row's ideal tok/s (no path overhead); rows written before the column existed have none."""
    return "" if r.get("ideal_tok_s") is None else f"{r['ideal_tok_s']:.2f}"


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
    """Evaluates units in this process: the model is loaded once (again per controller checkpoint, whose
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

    def _calibration(self):
        from temoe.baselines import CalibrationConfig

        s = self.s
        return CalibrationConfig(num_prompts=s.calibration_size, max_total_tokens=s.calibration_tokens,
                                 seed=s.seed)

    def _generation(self):
        from temoe.rollout.runner import GenerationConfig

        s = self.s
        return GenerationConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                batch_size=s.batch_size, seed=s.seed)

    def _task(self, name: str):
        from temoe.eval.tasks import load_task

        return load_task(name, None, limit=self.s.limit, seed=self.s.seed)

    def prepare(self) -> None:
        """Write the calibration sequences to the cache (read, never written, by the units after)."""
        from temoe.baselines.calibration import calibration_sequences

        calibration_sequences(self.handle(), self.tokenizer, self._calibration(), self.s.cache_dir)

    def _options(self, method: str, knob) -> dict:
        from temoe.baselines.distill import DistillConfig

        s = self.s
        options: dict[str, Any] = dict(cache_dir=s.cache_dir, calibration=self._calibration(), seed=s.seed)
        if method == "cache-prior":
            options["peer_options"] = {"strength": knob}
        elif method == "demand":
            options["peer_options"] = {"threshold": knob, "decay": 0.9}
        elif method in ("recency", "static-distill"):
            distill = DistillConfig(steps=s.train_steps, recency=knob if method == "recency" else 0.0,
                                    seed=s.seed)
            options["peer_options"] = {"distill": distill,
                                       "distill_mask": knob if method == "static-distill" else "frequency"}
        return options

    def _controller(self, budget: int, eta: float):
        ckpt = self.s.checkpoints.get((budget, eta))
        if ckpt is None:
            raise ValueError(f"no controller checkpoint for B = {budget}, eta = {_fmt(eta)}")
        from temoe.eval.pipeline import load_controller

        model, _ = self._load_model(self.s.model)
        return load_controller(model.to(self.device).eval(), ckpt)

    def run_unit(self, unit: Unit, out: Path) -> list[tuple[Cell, dict]]:
        """Evaluate the unit's cells, writing each summary to `out` as soon as it is known."""
        import torch

        torch.manual_seed(self.s.seed)  # LoRA initialisation etc.: the same whichever process runs the unit
        method, knob, budget = unit.key
        if budget is None:
            pairs = self._router_unit(unit)
        else:
            pairs = self._unit(unit)
        done = []
        for cell, summary in pairs:
            checkpoint = self.s.checkpoints.get((cell.budget, cell.knob)) if cell.method == "controller" \
                else None
            summary.update(written_by=WRITER, model=self.s.model, checkpoint=checkpoint)
            write_atomic(cell_path(out, cell), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
            done.append((cell, summary))
        return done

    def _tasks(self, unit: Unit) -> list[str]:
        return list(dict.fromkeys(c.task for c in unit.cells))

    def _router_unit(self, unit: Unit):
        """base / lru / lfu (or recency, trained once): one generation per task, a view per cell."""
        from temoe.baselines.lru import CacheSource
        from temoe.eval.pipeline import method_source
        from temoe.rollout.masks import BaseSource

        handle = self.handle()
        method, knob, _ = unit.key
        k_hat = max(c.budget for c in unit.cells)
        context = (method_source(handle, self.tokenizer, method, k_hat, **self._options(method, knob))
                   if method == "recency" else _null(BaseSource(handle.top_k)))
        with context as source:
            for task in self._tasks(unit):
                cells = [c for c in unit.cells if c.task == task]
                views = []
                for c in cells:
                    if c.method == "base":
                        view = BaseSource(handle.top_k)
                    elif c.method in ("lru", "lfu"):
                        view = CacheSource(c.budget, c.method)
                    else:
                        view = copy.copy(source)
                        view.k_hat = c.budget
                    views.append((view, c.budget))
                results = router_views(handle, self.tokenizer, self._task(task), source, views,
                                       self._generation())
                yield from zip(cells, (summary for summary, _ in results), strict=True)

    def _unit(self, unit: Unit):
        """One method at one budget: trained methods train once for every task; the others enter their
        source per task (a controller's or a rule's state starts afresh, as in `evaluate_method`)."""
        from temoe.eval.pipeline import method_source
        from temoe.eval.runner import evaluate

        method, knob, budget = unit.key
        handle, options = self.handle(), self._options(method, knob)
        if method == "controller":
            _, handle, controller = self._controller(budget, knob)
            options.update(controller=controller, eta=knob)
        once = method in ("static-distill",)
        shared = method_source(handle, self.tokenizer, method, budget, budget=budget, **options) if once \
            else _null(None)
        with shared as trained:
            for task in self._tasks(unit):
                cell = next(c for c in unit.cells if c.task == task)
                context = _null(trained) if once else method_source(handle, self.tokenizer, method, budget,
                                                                    budget=budget, **options)
                with context as source:
                    summary, records = evaluate(handle, self.tokenizer, self._task(task), source,
                                                self._generation(), budget=budget)
                if summary.get("residency") == "option":
                    summary["critical_per_token"] = option_critical_per_token(records, budget)
                yield cell, summary
        if method == "controller":
            handle.unwrap()


@contextmanager
def _null(value):
    yield value
