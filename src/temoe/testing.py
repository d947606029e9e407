"""Tiny from-config MoE models of every supported architecture, for tests and CPU examples.

No weights are downloaded: each model is built with `AutoModelForCausalLM.from_config` and seeded.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

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


#: `temoe.train.load_config` overrides that make a training run on `tiny_model("gpt_oss")` take seconds:
#: the paper's algorithm at toy widths (tests and CPU examples; merge your own keys on top).
TINY_TRAIN = {
    "model": "testing:gpt_oss",
    "controller.k_hat": 4,
    "prompts_per_step": 2,
    "max_new_tokens": 4,
    "controller.hidden": 16,
    "controller.expert_embed_dim": 8,
    "lora_rank": 2,
    "lora_alpha": 2,
    "progress": False,
    "cpu_threads": 1,
}
