"""`temoe report`: Table 2/3 layout from saved summaries (hand-checked cells) and heatmaps from records."""

from __future__ import annotations

import json

import pytest

from temoe.analysis.report import load_summaries, markdown_tables, summary_rows
from temoe.analysis.stats import wald_ci
from temoe.cli.main import main


def _summary(tmp_path, method, task, acc, sw, eta=None, k_hat=16, records=None):
    n = 200
    s = {"method": method, "task": task, "k_hat": k_hat, "eta": eta, "n": n, "accuracy": acc,
         "accuracy_ci": list(wald_ci(round(acc * n), n)), "switch_rate": sw,
         "switch_rate_ci": [sw - 0.002, sw + 0.002], "records": records}
    name = f"{method}{'' if eta is None else eta}-{task}-k{k_hat}.json"
    (tmp_path / name).write_text(json.dumps(s))
    return s


def test_table_layout_and_cells(tmp_path):
    _summary(tmp_path, "controller", "mmlu", 0.725, 0.042, eta=0.02)
    _summary(tmp_path, "base", "mmlu", 0.795, 0.57)
    _summary(tmp_path, "wanda", "mmlu", 0.535, 0.57)
    _summary(tmp_path, "base", "mmlu", 0.30, 0.6, k_hat=8)
    (tmp_path / "unrelated.json").write_text(json.dumps({"foo": 1}))
    rows = summary_rows(load_summaries([tmp_path]))
    assert [r["method"] for r in rows] == ["base", "wanda", "controller", "base"]  # k̂ 16 first, paper order
    md = markdown_tables(rows, ["mmlu"])
    assert md.index("**k̂ = 16**") < md.index("**k̂ = 8**")
    # 53.5% of 200: Wald half-width 1.96 * sqrt(.535 * .465 / 200) = 6.9 points (the paper's Table 2 cell)
    assert "| Wanda (structured) | 53.5 ± 6.9 | 57.0 ± 0.2 |" in md
    assert "| Controller (η = 0.02) | 72.5 ± 6.2 | 4.2 ± 0.2 |" in md
    assert "MMLU Acc. (%) | MMLU Switch (%)" in md


def test_missing_cells_and_empty_input(tmp_path):
    _summary(tmp_path, "base", "math", 0.5, 0.5)
    _summary(tmp_path, "random", "mmlu", 0.25, 1.0)
    md = markdown_tables(summary_rows(load_summaries([tmp_path])), ["math", "mmlu"])
    assert "| Base model | 50.0 ± 6.9 | 50.0 ± 0.2 | – | – |" in md
    with pytest.raises(ValueError, match="no evaluation summaries"):
        markdown_tables([])


def test_report_cli_writes_markdown_and_heatmaps(tmp_path):
    recs = tmp_path / "base.jsonl"
    active = [[[t % 8, (t + 1) % 8], [0, 1], [2, 3]] for t in range(10)]  # 10 positions, 3 layers, top-2
    recs.write_text(json.dumps({"id": "q0", "active_experts": active, "num_experts": 8, "top_k": 2}) + "\n")
    _summary(tmp_path, "base", "math", 0.5, 0.5, records=str(recs))
    _summary(tmp_path, "controller", "math", 0.45, 0.04, eta=0.02, records=str(recs))
    out = tmp_path / "report"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| Controller (η = 0.02) | 45.0 ± 6.9 |" in text
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    stems = ("base", "controller_eta0.02")
    assert pngs == [f"activations_{m}_k16_layer{i}.png" for m in stems for i in range(3)]
    assert all(f"figures/{p}" in text for p in pngs)
