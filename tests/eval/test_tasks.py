"""Task loading from the local layouts users have (never the network), seeded subsampling, clear errors."""

from __future__ import annotations

import csv
import json

import pytest

from temoe.eval.tasks import load_task


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hendrycks_math_parquet_layout_and_boxed_reference(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    for subject in ("algebra", "geometry"):
        (tmp_path / subject).mkdir()
        rows = [{"problem": f"{subject} {i}?", "solution": f"So it is $\\boxed{{\\frac{{{i}}}{{2}}}}$.",
                 "level": "Level 1", "type": subject} for i in range(5)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / subject / "test-00000-of-00001.parquet")
        pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / subject / "train-00000-of-00001.parquet")
    task = load_task("hendrycks-math", tmp_path, limit=None)
    assert len(task.items) == 10  # train files skipped
    item = task.items[0]
    assert item["answer"] == "\\frac{0}{2}" and "\\boxed{}" in task.prompt(item)
    assert task.grade("the answer is \\boxed{\\dfrac{0}{2}}", item) == ("\\dfrac{0}{2}", True)
    assert task.grade("no answer", item) == (None, False)


def test_seeded_subsample_is_reproducible(tmp_path):
    f = tmp_path / "math.jsonl"
    _write_jsonl(f, [{"problem": f"p{i}", "answer": str(i)} for i in range(50)])
    a = load_task("hendrycks-math", f, limit=10, seed=42)
    b = load_task("hendrycks-math", f, limit=10, seed=42)
    c = load_task("hendrycks-math", f, limit=10, seed=1)
    assert [x["id"] for x in a.items] == [x["id"] for x in b.items] != [x["id"] for x in c.items]
    assert a.meta["pool_size"] == 50 and len(a.items) == 10


def test_mmlu_cais_parquet_layout_skips_all_and_aux(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    row = {"question": "2+2?", "subject": "math", "choices": ["1", "2", "3", "4"], "answer": 3}
    for sub in ("abstract_algebra", "anatomy", "all", "auxiliary_train"):
        (tmp_path / sub).mkdir()
        pq.write_table(pa.Table.from_pylist([row] * 3), tmp_path / sub / "test-00000-of-00001.parquet")
    task = load_task("mmlu", tmp_path, limit=None)
    assert len(task.items) == 6 and task.items[0]["answer"] == "D"
    assert "D. 4" in task.prompt(task.items[0])
    assert task.grade("so <answer>D</answer>", task.items[0]) == ("D", True)


def test_mmlu_original_csv_layout(tmp_path):
    (tmp_path / "test").mkdir()
    with open(tmp_path / "test" / "anatomy_test.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Q1?", "a", "b", "c", "d", "B"], ["Q2?", "a", "b", "c", "d", "A"]])
    task = load_task("mmlu", tmp_path, limit=None)
    assert [i["answer"] for i in task.items] == ["B", "A"] and task.items[0]["subject"] == "anatomy"


def test_mmmlu_csv_layout_pools_languages(tmp_path):
    (tmp_path / "test").mkdir()
    for lang in ("DE_DE", "FR_FR"):
        with open(tmp_path / "test" / f"mmlu_{lang}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["", "Question", "A", "B", "C", "D", "Answer", "Subject"])
            w.writerows([[j, f"Frage {j}", "w", "x", "y", "z", "C", "anatomy"] for j in range(4)])
    task = load_task("mmmlu", tmp_path, limit=5, seed=42)
    assert len(task.items) == 5 and {i["lang"] for i in task.items} <= {"DE_DE", "FR_FR"}
    assert all(i["answer"] == "C" for i in task.items)


def test_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'gsm8k'; valid: math, mc"):
        load_task("gsm8k")
    with pytest.raises(ValueError, match="--data PATH"):
        load_task("mmlu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("mmmlu", tmp_path / "nope")
    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": "E"}])
    with pytest.raises(ValueError, match="expected one of ABCD"):
        load_task("mmlu", bad)
