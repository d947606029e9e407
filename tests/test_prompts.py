"""Prompt files: the good case and every bad one gets a clear error."""

import pytest

from temoe.prompts import load_prompts


def test_load_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "category": "chat"}\n\n{"prompt": "b", "id": "x7"}\n'
                    '{"prompt": "c", "category": "chat"}\n')
    prompts = load_prompts(path)
    assert [(p.id, p.prompt, p.category) for p in prompts] == [
        (0, "a", "chat"), ("x7", "b", "uncategorised"), (2, "c", "chat")]
    assert [p.prompt for p in load_prompts(path, per_category=1)] == ["a", "b"]


@pytest.mark.parametrize("content, error, message", [
    (None, FileNotFoundError, "does not exist"),
    ("\n \n", ValueError, "is empty"),
    ('{"text": "hi"}\n', ValueError, r"p.jsonl:1: needs a string 'prompt' field .*found \['text'\]"),
    ('{"prompt": "ok"}\n{"prompt": 3}\n', ValueError, r"p.jsonl:2: needs a string 'prompt'"),
    ('{"prompt": "ok"}\nnot json\n', ValueError, r"p.jsonl:2: not valid JSON"),
])
def test_bad_prompt_files(tmp_path, content, error, message):
    path = tmp_path / "p.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=message):
        load_prompts(path)
