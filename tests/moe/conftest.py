"""Tiny models of every architecture in `temoe.moe.arch.ARCHITECTURES` (the shared six plus three extras)."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from temoe.testing import _COMMON, TINY_MODEL_TYPES, tiny_model

# Extra architectures covered here only (temoe.testing holds the six shared tiny configs).
_EXTRA = {
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "glm4_moe": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2,
                     topk_group=1, first_k_dense_replace=1, num_hidden_layers=3, n_shared_experts=1,
                     norm_topk_prob=True, partial_rotary_factor=0.5),
    "qwen3_next": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=32, norm_topk_prob=True, num_hidden_layers=4,
                       linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                       linear_value_head_dim=16, linear_conv_kernel_dim=4),
}
ALL_MODEL_TYPES = TINY_MODEL_TYPES + tuple(_EXTRA)


def build(model_type: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """A seeded tiny model of any supported architecture, in eval mode, with structured router weights."""
    if model_type in TINY_MODEL_TYPES:
        return tiny_model(model_type, seed=seed, dtype=dtype)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**_COMMON, **_EXTRA[model_type]})
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # as temoe.testing.tiny_model: spread router weights so routing has structure
        for name, p in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")) and p.dim() == 2:
                p.normal_(0.0, 1.0)
    return model.eval()


def random_masks(shape: tuple[int, ...], num_experts: int, k_hat: int, seed: int) -> torch.Tensor:
    """bool (*shape, N) with exactly k_hat random experts allowed per row."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(*shape, num_experts, generator=g)
    picks = keys.topk(k_hat, dim=-1).indices
    return torch.zeros(*shape, num_experts, dtype=torch.bool).scatter_(-1, picks, True)
