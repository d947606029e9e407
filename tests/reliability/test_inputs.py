"""Bad input files and paths are clear errors found before expensive work: one prompt-file reader with
file:line errors for every command, prompts beyond the model's positions, and unusable output paths."""

import json
import logging

import pytest

from temoe.cli.main import main
from temoe.prompts import Prompt, check_fits, keep_fitting
from temoe.train.data import PromptSource


def _source(path, tokenizer):
    return PromptSource.from_jsonl(str(path), tokenizer, per_step=1, seed=0, max_prompt_tokens=64,
                                   chat_template=False, pad_token_id=0)


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a"}\n{"text": "b"}\n', r"p.jsonl:2: needs a string 'prompt' field .*found \['text'\]"),
    ("", r"p.jsonl' is empty"),
    ('{"prompt": "a"}\n{oops\n', r"p.jsonl:2: not valid JSON"),
])
def test_training_prompt_files_fail_with_file_and_line(tmp_path, tokenizer, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        _source(path, tokenizer)


def test_overlong_training_prompts_are_skipped_with_a_warning_naming_the_line(tmp_path, tokenizer, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "x" * 1_000_000}) + "\n")
    with caplog.at_level(logging.WARNING):
        source = _source(path, tokenizer)
    assert len(source.prompts) == 1
    assert f"1 of 2 prompts exceed max_prompt_tokens (64 tokens) and are skipped: {path}:2" in caplog.text
    path.write_text(json.dumps({"prompt": "x" * 100}) + "\n")
    with pytest.raises(ValueError, match="every prompt exceeds max_prompt_tokens"):
        _source(path, tokenizer)


def test_a_huge_prompt_is_never_tokenised():
    def count(text):
        assert len(text) < 10_000, "a 1 MB prompt was tokenised"
        return len(text)

    prompts = [Prompt(0, "ok", "c", "f:1"), Prompt(1, "y" * 1_000_000, "c", "f:2")]
    assert [p.id for p in keep_fitting(prompts, count, 100)] == [0]


def test_check_fits_names_the_sizes():
    check_fits(10, 20, 30)
    with pytest.raises(ValueError, match=r"--prompt \(11 tokens\) \+ max_new_tokens \(20\) exceeds .*'s 30"):
        check_fits(11, 20, 30, "--prompt")


def test_switch_rate_skips_a_1mb_prompt_line(tmp_path, capsys, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hello there", "category": "chat"}) + "\n"
                    + json.dumps({"prompt": "z" * 1_000_000, "category": "chat"}) + "\n")
    with caplog.at_level(logging.WARNING):
        code = main(["switch-rate", "tiny-random:gpt_oss", "--prompts", str(path), "--k-hat", "4",
                     "--max-new-tokens", "4", "--json", str(tmp_path / "out.json")])
    assert code == 0
    assert "1 of 2 prompts exceed" in caplog.text and f"{path}:2" in caplog.text
    assert json.loads((tmp_path / "out.json").read_text())["settings"]["num_prompts"] == 1


def test_generate_refuses_a_prompt_beyond_the_model_positions(capsys):
    assert main(["generate", "--model", "tiny", "--prompt", "word " * 3000, "--max-new-tokens", "4"]) == 2
    assert "exceeds the model's 2048 positions" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["directory", "under_a_file"])
def test_eval_output_paths_are_checked_before_the_evaluation(tmp_path, monkeypatch, capsys, kind):
    def never(*a, **k):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr("temoe.eval.tasks.load_task", never)
    if kind == "directory":
        target = tmp_path
    else:
        (tmp_path / "file").write_text("")  # no folder can be made there (root ignores permission bits)
        target = tmp_path / "file" / "summary.json"
    assert main(["eval", "--task", "math", "--k-hat", "4", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert ("is a directory" if kind == "directory" else "cannot write there") in err
