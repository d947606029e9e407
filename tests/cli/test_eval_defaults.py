"""`temoe eval` defaults: the local-file MATH task grades with the official normalisation unless told
otherwise (and says which in its JSON), and the base model needs no --k-hat."""

from __future__ import annotations

import json

import pytest

from temoe.cli.main import main
from temoe.eval.tasks import load_task


def _math_file(tmp_path):
    f = tmp_path / "math.jsonl"
    rows = [{"problem": f"What is {i} cm plus nothing?", "answer": str(i)} for i in range(4)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_hendrycks_math_grades_officially_by_default(tmp_path):
    task = load_task("hendrycks-math", _math_file(tmp_path), limit=None)
    item = task.items[1]
    assert task.grader == "official"
    # Units glued to the number are kept by the official normalisation (wrong) and cut by the lenient one.
    assert task.grade("\\boxed{1\\text{cm}}", item) == ("1\\text{cm}", False)
    lenient = load_task("hendrycks-math", _math_file(tmp_path), limit=None, grader="lenient")
    assert lenient.grade("\\boxed{1\\text{cm}}", item) == ("1\\text{cm}", True)
    # Both agree on what the official rules already accept.
    assert task.grade("\\boxed{1}", item) == lenient.grade("\\boxed{1}", item) == ("1", True)


def test_embedded_math_keeps_the_lenient_grader_and_bad_names_fail():
    assert load_task("math", limit=2).grader == "lenient"
    with pytest.raises(ValueError, match="valid: official, lenient"):
        load_task("math", limit=2, grader="strict")


def test_eval_base_model_without_k_hat_states_its_grader(tmp_path):
    data, out = _math_file(tmp_path), tmp_path / "base.json"
    args = ["eval", "--model", "testing:gpt_oss", "--task", "hendrycks-math", "--data", str(data),
            "--limit", "2", "--max-new-tokens", "2", "--batch-size", "2"]
    assert main(args + ["--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    # No --k-hat: the base model's switch rate is measured at k̂ = k̃ (the router's own top-k̃ set).
    assert summary["method"] == "base" and summary["grader"] == "official" and summary["n"] == 2
    assert summary["k_hat"] == 2  # testing:gpt_oss routes top-2 of 8
    out = tmp_path / "lenient.json"
    assert main(args + ["--grader", "lenient", "--k-hat", "4", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["grader"] == "lenient" and summary["k_hat"] == 4


def test_eval_baseline_still_needs_k_hat(tmp_path, capsys):
    args = ["eval", "--model", "testing:gpt_oss", "--task", "hendrycks-math", "--data",
            str(_math_file(tmp_path)), "--limit", "2", "--max-new-tokens", "2", "--baseline", "random",
            "--json", str(tmp_path / "o.json")]
    assert main(args) == 2
    assert "--baseline random needs --k-hat" in capsys.readouterr().err
