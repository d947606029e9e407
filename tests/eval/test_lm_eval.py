"""lm-eval-harness adapter: logits equal the masked model's, controller state is fresh per batch, and a local
task file (multiple choice + generate_until) runs offline through `lm_eval.simple_evaluate`."""

from __future__ import annotations

import json
import os

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'temoe[eval]')")

import temoe  # noqa: E402
from temoe.controller import ControllerConfig, OptionController  # noqa: E402
from temoe.eval.lm_eval import TemoeLM  # noqa: E402
from temoe.rollout.masks import BaseSource, ControllerSource, StaticMaskSource  # noqa: E402
from temoe.testing import char_tokenizer, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def handle():
    h = temoe.wrap(tiny_model("gpt_oss", seed=0))
    yield h
    h.unwrap()


def _inputs():
    return torch.randint(4, 99, (2, 7), generator=torch.Generator().manual_seed(0))


def test_model_call_matches_the_masked_model(handle):
    inps = _inputs()
    with torch.no_grad():
        plain = handle.model(inps).logits
    lm = TemoeLM(handle, char_tokenizer(), BaseSource(4), batch_size=2, max_length=64)
    torch.testing.assert_close(lm._model_call(inps), plain)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :4] = True
    with torch.no_grad(), handle.restrict(mask):
        restricted = handle.model(inps).logits
    lm = TemoeLM(handle, char_tokenizer(), StaticMaskSource(mask, "frequency"), batch_size=2, max_length=64)
    out = lm._model_call(inps)
    torch.testing.assert_close(out, restricted)
    assert not torch.allclose(out, plain)  # the mask really changed the computation


def test_controller_state_is_reset_per_batch(handle):
    ctrl = OptionController.from_handle(handle, ControllerConfig(k_hat=4, hidden=16, expert_embed_dim=8))
    source = ControllerSource(ctrl, torch.Generator().manual_seed(0), mode="greedy")
    lm = TemoeLM(handle, char_tokenizer(), source, batch_size=2, max_length=64)
    inps = _inputs()
    with handle.trace() as trace:
        lm._model_call(inps)
    first_state = source.state
    # Position 0 is the prompt, positions 1..6 are controlled: T = 7 columns, one option per row and layer.
    masks = first_state.option_masks()  # (B, T, L, N)
    assert masks.shape == (2, 7, 2, 8) and bool((masks.sum(-1) == 4).all())
    ids = trace.expert_ids(0)  # rows: call 0 (B x 1), then call 1 (B x 6) in (batch, position) order
    controlled = ids[2:].reshape(2, 6, 2)
    assert bool(masks[:, 1:, 0].gather(-1, controlled).all()), "routed expert outside the option"
    lm._model_call(inps)
    assert source.state is not first_state and source.state.num_steps == 7  # fresh state each batch


@pytest.mark.slow
def test_simple_evaluate_on_a_local_task(handle, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": ["x", "y", "z"], "label": i}) + "\n"
                            for i, q in enumerate(["abc", "def", "ghi"])))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "doc_to_text: 'Q: {{question}} A:'\n")
    (tmp_path / "mc.yaml").write_text("task: temoe_test_mc\n" + common + "output_type: multiple_choice\n"
                                      "doc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
                                      "metric_list:\n  - metric: acc\n")
    (tmp_path / "gen.yaml").write_text("task: temoe_test_gen\n" + common + "output_type: generate_until\n"
                                       "doc_to_target: '{{choices[label]}}'\ngeneration_kwargs:\n"
                                       "  until: ['\\n']\n  max_gen_toks: 3\n  do_sample: false\n"
                                       "metric_list:\n  - metric: exact_match\n")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    ctrl = OptionController.from_handle(handle, ControllerConfig(k_hat=4, hidden=16, expert_embed_dim=8))
    lm = TemoeLM(handle, char_tokenizer(), ControllerSource(ctrl, torch.Generator().manual_seed(0)),
                 batch_size=2, max_length=64)
    res = lm_eval.simple_evaluate(model=lm, tasks=["temoe_test_mc", "temoe_test_gen"],
                                  task_manager=lm_eval.tasks.TaskManager(include_path=str(tmp_path)))
    assert res["results"]["temoe_test_mc"]["sample_len"] == 3
    assert 0.0 <= res["results"]["temoe_test_mc"]["acc,none"] <= 1.0
    assert "exact_match,none" in res["results"]["temoe_test_gen"]
