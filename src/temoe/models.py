"""Model factories built in code, no files: tiny from-config MoE models of every supported architecture, the
gpt-oss-20b shape with random weights, and the offline character tokenizer that goes with both.

`temoe.load_model` resolves the names `tiny-random:<model_type>` and `gpt-oss-20b-random[:LAYERS]` to these.
"""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GptOssConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

#: Architectures with a tiny config here; every one is also in `temoe.moe.arch.ARCHITECTURES`.
TINY_MODEL_TYPES = ("gpt_oss", "mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v3")

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)

_PER_TYPE: dict[str, dict] = {
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, sliding_window=16,
                    layer_types=["sliding_attention", "full_attention"],
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, norm_topk_prob=False),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=False),
    "deepseek_v3": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2,
                        topk_group=1, first_k_dense_replace=1, num_hidden_layers=3, n_shared_experts=1,
                        q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                        v_head_dim=16, head_dim=8, num_key_value_heads=4, norm_topk_prob=True,
                        rope_interleave=True),
}


def tiny_config(model_type: str, **overrides) -> PretrainedConfig:
    """A small config of `model_type` (hidden 64, 8 experts, top-2); `overrides` replace any field."""
    if model_type not in _PER_TYPE:
        raise ValueError(
            f"no tiny config for model_type={model_type!r}; available: {', '.join(TINY_MODEL_TYPES)}"
        )
    kwargs = {**_COMMON, **_PER_TYPE[model_type], **overrides}
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "gpt_oss", seed: int = 0, dtype: torch.dtype = torch.float32,
               **overrides) -> PreTrainedModel:
    """A seeded, randomly initialised tiny causal LM of `model_type` in eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=dtype)
    # Random init leaves router weights near zero, so every expert ties; scale them up so routing
    # has structure (distinct top-k per token) as in a trained model.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")) and p.dim() == 2:
                p.normal_(0.0, 1.0)
    return model.eval()


# ----------------------------------------------------------------------------- the character tokenizer

_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """The offline character tokenizer of the factory models: built in code, no files, no network.

    Ids: 0 `<pad>`, 1 `<s>`, 2 `</s>` (matching the tiny configs' pad/bos/eos), 3 `<unk>`, then the 95
    printable ASCII characters and newline (100 ids, so it fits any vocabulary >= 128); anything else maps to
    `<unk>`. Pads on the left; a plain `role: content` chat template serves /v1/chat/completions.
    """
    vocab = {token: i for i, token in enumerate((*_SPECIALS, *_CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # concatenate characters back without separators
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", padding_side="left")
    out.chat_template = _CHAT_TEMPLATE
    return out


# ----------------------------------------------------------------------------- gpt-oss-20b, random weights

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
