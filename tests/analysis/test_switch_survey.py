"""The survey rates the generated tokens fed back, read from the right trace rows despite left padding."""

import torch

import temoe
from temoe.analysis.switch_survey import generate_traced, prompt_record, summarize
from temoe.prompts import Prompt
from temoe.testing import char_tokenizer, tiny_model


def test_rated_rows_match_an_unpadded_forward():
    model, tokenizer = tiny_model("qwen3_moe"), char_tokenizer()
    handle = temoe.wrap(model)
    prompts = [
        Prompt(0, "a long prompt here", "x"),
        Prompt(1, "short", "y"),
    ]  # different lengths: left padding
    gens = list(
        generate_traced(handle, tokenizer, prompts, max_new_tokens=6, temperature=0.0, chat_template=False,
                        progress=False)
    )
    for prompt, gen in zip(prompts, gens):
        prompt_ids = tokenizer(prompt.prompt, return_tensors="pt").input_ids
        new_ids = torch.tensor([gen.token_ids])
        assert gen.num_generated == 6 and 2 not in gen.token_ids  # greedy run drew no EOS (id 2)
        # Rated position j is generated token j fed back: the unpadded sequence's position len(prompt) + j.
        full = torch.cat([prompt_ids, new_ids[:, :-1]], dim=1)
        with torch.no_grad(), handle.trace() as trace:
            model(full)
        start = prompt_ids.shape[1]
        for i in range(handle.num_layers):
            expected = trace.router_logits(i)[start:]
            assert torch.allclose(gen.router_logits[:, i], expected, atol=1e-4)
            assert torch.equal(
                gen.expert_ids[:, i].sort(-1).values, trace.expert_ids(i)[start:].sort(-1).values
            )
    records = [prompt_record(g, k_tilde=2, k_hat=8) for g in gens]
    assert all(r["switch_rate_k_hat"] == 0.0 and len(r["active_experts"]) == 5 for r in records)
    summary = summarize(records)
    assert list(summary) == ["x", "y", "all"] and summary["all"]["n"] == 2
    assert summary["all"]["k_hat"] == {"mean": 0.0, "std": 0.0}
