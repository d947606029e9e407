"""Models the serving commands accept by name: `tiny-random:<model_type>` or `testing:<model_type>` (tiny
from-config model plus the character tokenizer), `gpt-oss-20b-random` (the real gpt-oss-20b shape with random
bf16 weights, CUDA only unless shrunk with `num_layers`), or anything `temoe.load_model` loads (`tiny`, a
local HF directory).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GptOssConfig, PreTrainedTokenizerFast

#: Real gpt-oss-20b dimensions (config.json of openai/gpt-oss-20b).
GPT_OSS_20B = dict(
    num_hidden_layers=24,
    num_local_experts=32,
    num_experts_per_tok=4,
    hidden_size=2880,
    intermediate_size=2880,
    num_attention_heads=64,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=201088,
    sliding_window=128,
    max_position_embeddings=131072,
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
    },
    pad_token_id=199999,
    eos_token_id=200002,
    bos_token_id=199998,
    tie_word_embeddings=False,
)

_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """The project's offline character tokenizer (`temoe.testing_tokenizer`, 100 ids, so it fits any vocab >=
    128) with a plain `role: content` chat template for /v1/chat/completions."""
    from temoe.testing_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def gpt_oss_20b_config(num_layers: int | None = None) -> GptOssConfig:
    """The gpt-oss-20b config (alternating sliding/full attention), optionally cut to `num_layers` layers."""
    layers = num_layers or GPT_OSS_20B["num_hidden_layers"]
    kinds = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    return GptOssConfig(**{**GPT_OSS_20B, "num_hidden_layers": layers, "layer_types": kinds})


def gpt_oss_20b_random(device: torch.device, num_layers: int | None = None, seed: int = 0):
    """gpt-oss-20b-shaped GptOssForCausalLM with random bf16 weights (no download) and a char tokenizer.

    Built on the meta device and materialised directly on `device`. On CPU it is refused at full depth
    (~42 GB of bf16 weights); pass `num_layers` (e.g. 2) for a smoke run.
    """
    if device.type != "cuda" and num_layers is None:
        raise ValueError(
            "gpt-oss-20b-random at full depth (24 layers, ~21B params, ~42 GB bf16) runs only on "
            "CUDA; on CPU pass --num-layers 2 for a smoke run"
        )
    cfg = gpt_oss_20b_config(num_layers)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias") or name.endswith("sinks"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    # Buffers (rotary inv_freq) were left uninitialised by to_empty: rebuild the rotary module from
    # the config.
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config).to(device)
    return model.eval(), char_tokenizer()


def load_for_serving(
    name: str, device: torch.device, *, num_layers: int | None = None, dtype: torch.dtype | None = None
):
    """(model, tokenizer) for a serving model name (see module docstring); the model stays on CPU unless the
    name builds it on `device` directly (gpt-oss-20b-random)."""
    if name.startswith(("tiny-random:", "testing:")):  # testing:<type> is the trainer CLI's name for it
        from temoe.testing import TINY_MODEL_TYPES, tiny_model

        model_type = name.split(":", 1)[1]
        if model_type not in TINY_MODEL_TYPES:
            raise ValueError(f"unknown tiny model type {model_type!r}; valid: {', '.join(TINY_MODEL_TYPES)}")
        overrides = {"num_hidden_layers": num_layers} if num_layers else {}
        return tiny_model(model_type, dtype=dtype or torch.float32, **overrides), char_tokenizer()
    if name == "gpt-oss-20b-random":
        return gpt_oss_20b_random(device, num_layers)
    if num_layers is not None:
        raise ValueError("--num-layers only applies to tiny-random:* and gpt-oss-20b-random models")
    import temoe

    return temoe.load_model(name, dtype=dtype)
