"""Collect a `benchmarks/gpu_acceptance.sh` output directory into one `acceptance.json` and a `summary.md`.

    python benchmarks/bench_serve_report.py OUT_DIR

Reads OUT_DIR/steps.tsv (name, status, seconds, command per step), versions.json, pytest_gpu.xml,
ladder_tiny.json, ladder_20b.json and train_step.log when present, and checks the serving targets on the
gpt-oss-20b-shaped ladder: option rung k̂ = 16 >= 0.9x full residency tok/s, k̂ = 8 >= 0.85x, the best option
rung >= 1.5x the LRU cache when the cache hits <= 70 %, copy time within 1.2x of bytes moved / probed
bandwidth. A missing input is reported as missing, never filled in.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _steps(out: Path) -> list[dict]:
    rows = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, seconds, command = line.split("\t", 3)
        rows.append({"step": name, "status": status, "seconds": int(seconds), "command": command})
    return rows


def _pytest(out: Path) -> dict | None:
    path = out / "pytest_gpu.xml"
    if not path.exists():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: int(suite.get(k, 0)) for k in keys}


def _row(ladder: dict, mode: str, k_hat: int | None = None, label: str = "") -> dict | None:
    for row in ladder["rows"]:
        if row["mode"] == mode and (k_hat is None or row["k_hat"] == k_hat) and label in row["rung"]:
            return row
    return None


def targets(ladder: dict) -> list[dict]:
    """The serving targets checked on one ladder; `value` None when the ladder lacks the rung."""
    out = []

    def check(name, value, bound, ok):
        out.append({"target": name, "value": value, "bound": bound,
                    "met": None if value is None else bool(ok(value))})

    for k, bound in ((16, 0.9), (8, 0.85)):
        row = _row(ladder, "option", k, "synthetic")
        check(f"option k̂={k} tok/s vs full residency", row and row.get("serve/speed_vs_full"), f">= {bound}",
              lambda v, b=bound: v >= b)
    lru = _row(ladder, "lru")
    options = [r for r in ladder["rows"] if r["mode"] == "option" and r.get("serve/decode_tokens_per_s")]
    if lru and options and lru.get("serve/decode_tokens_per_s"):
        k_max = max(r["k_hat"] for r in options)  # the LRU rung's budget
        best = max(r["serve/decode_tokens_per_s"] for r in options if r["k_hat"] == k_max)
        hit = lru.get("serve/lru_hit_rate")
        check(f"option vs LRU tok/s at the same budget (LRU hit rate {hit:.2f})" if hit is not None
              else "option vs LRU tok/s", best / lru["serve/decode_tokens_per_s"],
              ">= 1.5 when the LRU hit rate <= 0.70", lambda v: v >= 1.5 or (hit is not None and hit > 0.70))
    for row in ladder["rows"]:
        copy, bound = row.get("serve/copy_ms_per_token"), row.get("serve/pcie_bound_ms_per_token")
        if copy and bound:
            check(f"copy time vs bytes / probed bandwidth ({row['rung']})", copy / bound, "<= 1.2",
                  lambda v: v <= 1.2)
    return out


def _ladder_table(ladder: dict) -> list[str]:
    cols = [("rung", "rung", "{}"), ("tok/s", "serve/decode_tokens_per_s", "{:.1f}"),
            ("x full", "serve/speed_vs_full", "{:.2f}"), ("TPOT p50 ms", "serve/tpot_ms_p50", "{:.2f}"),
            ("loads/tok", "serve/loads_per_token", "{:.2f}"),
            ("stall ms/tok", "serve/stall_ms_per_token", "{:.3f}"),
            ("copy ms/tok", "serve/copy_ms_per_token", "{:.3f}"),
            ("PCIe bound ms/tok", "serve/pcie_bound_ms_per_token", "{:.3f}"),
            ("GB/s", "serve/achieved_gbps", "{:.1f}"), ("hit rate", "serve/lru_hit_rate", "{:.2f}"),
            ("switch rate", "serve/switch_rate", "{:.3f}"),
            ("expert VRAM", "serve/expert_vram_vs_full", "{:.0%}")]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in ladder["rows"]:
        cells = ["-" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    env = ladder["environment"]
    lines.append(f"\n{env['device_name']}, H2D {env['h2d_bandwidth_gbps']:.1f} GB/s "
                 f"({env['h2d_bandwidth_source']}); options: {env['option_source']}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    report: dict = {"steps": _steps(out)}
    for name in ("versions", "ladder_tiny", "ladder_20b"):
        path = out / f"{name}.json"
        report[name] = json.loads(path.read_text()) if path.exists() else None
    report["pytest_gpu"] = _pytest(out)
    log = out / "train_step.log"
    report["train_step_log_tail"] = log.read_text().splitlines()[-8:] if log.exists() else None
    report["targets"] = targets(report["ladder_20b"]) if report["ladder_20b"] else None
    (out / "acceptance.json").write_text(json.dumps(report, indent=2, default=str))

    md = ["# GPU acceptance", "", "| step | status | s | command |", "|---|---|---|---|"]
    md += [f"| {s['step']} | {s['status']} | {s['seconds']} | `{s['command'][:120]}` |"
           for s in report["steps"]]
    md += ["", "## Versions", "", f"`{json.dumps(report['versions'])}`" if report["versions"] else "missing"]
    md += ["", "## pytest -m gpu", ""]
    md.append(json.dumps(report["pytest_gpu"]) if report["pytest_gpu"] else "missing")
    for name, title in (("ladder_tiny", "Tiny CUDA ladder"), ("ladder_20b", "gpt-oss-20b-shaped ladder")):
        md += ["", f"## {title}", ""] + (_ladder_table(report[name]) if report[name] else ["missing"])
    md += ["", "## Targets (gpt-oss-20b shape)", ""]
    if report["targets"]:
        md += ["| target | value | bound | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:.3f}"
            md.append(f"| {t['target']} | {value} | {t['bound']} | {t['met']} |")
    else:
        md.append("missing (no gpt-oss-20b ladder)")
    md += ["", "## One-step training benchmark", "", "```"]
    md += [*(report["train_step_log_tail"] or ["missing"]), "```"]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'acceptance.json'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
