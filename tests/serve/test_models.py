"""Serving model names: the gpt-oss-20b config has the real dimensions; the char tokenizer round-trips."""

from __future__ import annotations

from temoe.models import char_tokenizer, gpt_oss_20b_config


def test_gpt_oss_20b_config_matches_the_real_model():
    cfg = gpt_oss_20b_config()
    assert (cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_experts_per_tok) == (24, 32, 4)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (2880, 2880, 201088)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 8, 64)
    assert gpt_oss_20b_config(2).layer_types == ["sliding_attention", "full_attention"]


def test_char_tokenizer_round_trip_and_chat_template():
    tok = char_tokenizer()
    ids = tok("Hi, you!\n").input_ids
    assert len(ids) == 9 and tok.unk_token_id not in ids
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "Hi, you!\n"
    messages = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "user: Hi\nassistant:"
