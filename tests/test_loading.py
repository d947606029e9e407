"""`temoe.load_model` resolves every model name the commands, the trainer and the server accept."""

import pytest
import torch

import temoe
from temoe.rollout.text import encode_prompt, eos_token_ids, left_pad
from temoe.testing import tiny_model


def test_tiny_random_names_mean_the_seed_0_model_with_the_character_tokenizer():
    model, tok = temoe.load_model("testing:mixtral")
    alias, _ = temoe.load_model("tiny-random:mixtral")
    reference = tiny_model("mixtral", seed=0)
    for (name, p), q, r in zip(model.named_parameters(), alias.parameters(), reference.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r), name
    assert tok.decode(tok("Hi!")["input_ids"]) == "Hi!" and tok.pad_token_id == 0 and tok.chat_template


def test_num_layers_shrinks_a_random_model_and_is_refused_for_files():
    model, _ = temoe.load_model("tiny-random:qwen3_moe", num_layers=1)
    assert model.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="num_layers only applies"):
        temoe.load_model("tiny", num_layers=1)
    with pytest.raises(ValueError, match="no tiny config for model_type='nope'.*mixtral"):
        temoe.load_model("tiny-random:nope")


def test_gpt_oss_20b_random_layer_count_is_checked_before_building():
    with pytest.raises(ValueError, match="LAYERS a positive integer"):
        temoe.load_model("gpt-oss-20b-random:x")
    with pytest.raises(ValueError, match="names 1 layers but num_layers=2"):
        temoe.load_model("gpt-oss-20b-random:1", num_layers=2)
    with pytest.raises(ValueError, match="runs only on CUDA"):
        temoe.load_model("gpt-oss-20b-random", device="cpu")


def test_eos_rule_joins_generation_config_model_config_and_tokenizer():
    model, tok = temoe.load_model("testing:gpt_oss")
    assert eos_token_ids(model, tok) == [2]
    model.generation_config.eos_token_id = [2, 5]
    assert eos_token_ids(model, tok) == [2, 5]


def test_prompt_encoding_truncates_from_the_left_and_pads_on_the_left():
    _, tok = temoe.load_model("testing:gpt_oss")
    ids = encode_prompt(tok, "abcdef", chat=False, max_len=3)
    assert tok.decode(ids) == "def"
    chat = encode_prompt(tok, "hi", chat=True)
    assert tok.decode(chat) == "user: hi\nassistant:"
    input_ids, attn = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and attn.tolist() == [[1, 1, 1], [0, 0, 1]]
