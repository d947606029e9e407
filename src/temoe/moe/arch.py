"""The supported MoE architectures: one table of facts per `config.model_type`.

Every architecture difference the library needs (where the router lives, which routing rule it uses, how to
read N and k from the config, which attention modules LoRA targets) is a field of `ArchSpec`, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Routing rules of transformers' routers:
#: "topk_softmax": top-k on the raw logits, then softmax over the k values (gpt_oss, granitemoe).
#: "softmax_topk": float32 softmax over all N logits, top-k, optional renormalisation (mixtral, qwen, olmoe).
#: "sigmoid_group": sigmoid scores + correction bias, group-limited top-k, weights from the unbiased scores
#: (deepseek_v3, glm4_moe).
RoutingFamily = Literal["topk_softmax", "softmax_topk", "sigmoid_group"]

_MHA = ("q_proj", "k_proj", "v_proj", "o_proj")
# DeepSeek's multi-head latent attention; q_proj exists when q_lora_rank is None, q_a/q_b_proj otherwise.
_MLA = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")


@dataclass(frozen=True)
class ArchSpec:
    """Facts about one MoE architecture in transformers 5.x (see docs/foundation.md)."""

    model_type: str
    """`config.model_type` this entry applies to."""
    block_attr: str
    """Attribute of a decoder layer holding the MoE block (its input is the pre-MLP hidden state)."""
    router_attr: str
    """Attribute of the MoE block holding the router module."""
    router_class: str
    """Class name of the router; matched through the MRO, so peft's runtime subclasses still match.
    Layers whose block has no such router are dense and are skipped."""
    family: RoutingFamily
    """Routing rule the router implements, re-applied under a mask by `temoe.moe.routing.reroute`."""
    num_experts_key: str
    """Config field holding N, the number of routed experts per MoE layer."""
    top_k_key: str
    """Config field holding k, the number of routed experts per token."""
    renormalize: bool | None
    """softmax_topk only: True if the top-k weights are always renormalised (mixtral), None if the router's
    `norm_topk_prob` attribute decides; unused by the other families."""
    attention_modules: tuple[str, ...]
    """Names of the attention projections, for LoRA's `target_modules` (§4: LoRA on attention)."""
    expert_parameters: tuple[str, ...] = ("experts.gate_up_proj", "experts.down_proj")
    """Fused 3D expert parameters, for LoRA's `target_parameters` (§4: LoRA on expert weights)."""

    @property
    def router_parameter(self) -> str:
        """Name of the router weight relative to the MoE block (e.g. `gate.weight`), for LoRA or training."""
        return f"{self.router_attr}.weight"


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec("gpt_oss", "mlp", "router", "GptOssTopKRouter", "topk_softmax",
                 "num_local_experts", "num_experts_per_tok", None, _MHA),
        ArchSpec("mixtral", "mlp", "gate", "MixtralTopKRouter", "softmax_topk",
                 "num_local_experts", "num_experts_per_tok", True, _MHA),
        ArchSpec("qwen3_moe", "mlp", "gate", "Qwen3MoeTopKRouter", "softmax_topk",
                 "num_experts", "num_experts_per_tok", None, _MHA),
        ArchSpec("qwen2_moe", "mlp", "gate", "Qwen2MoeTopKRouter", "softmax_topk",
                 "num_experts", "num_experts_per_tok", None, _MHA),
        ArchSpec("qwen3_next", "mlp", "gate", "Qwen3NextTopKRouter", "softmax_topk",
                 "num_experts", "num_experts_per_tok", None, _MHA),
        ArchSpec("olmoe", "mlp", "gate", "OlmoeTopKRouter", "softmax_topk",
                 "num_experts", "num_experts_per_tok", None, _MHA),
        ArchSpec("granitemoe", "block_sparse_moe", "router", "GraniteMoeTopKRouter", "topk_softmax",
                 "num_local_experts", "num_experts_per_tok", None, _MHA),
        ArchSpec("deepseek_v3", "mlp", "gate", "DeepseekV3TopkRouter", "sigmoid_group",
                 "n_routed_experts", "num_experts_per_tok", None, _MLA),
        ArchSpec("glm4_moe", "mlp", "gate", "Glm4MoeTopkRouter", "sigmoid_group",
                 "n_routed_experts", "num_experts_per_tok", None, _MHA),
    )
}


def arch_spec(model_type: str) -> ArchSpec:
    """The `ArchSpec` of `model_type`; raises ValueError naming it and the supported model types."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported model_type={model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
