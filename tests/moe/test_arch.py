"""The architecture table agrees with the models it describes."""

import pytest

import temoe
from conftest import ALL_MODEL_TYPES, build
from temoe.moe.arch import ARCHITECTURES, arch_spec


def test_unsupported_model_type_lists_supported():
    with pytest.raises(ValueError, match=r"unsupported model_type='llama'; supported: deepseek_v3, glm4_moe"):
        arch_spec("llama")


@pytest.mark.parametrize("model_type", ALL_MODEL_TYPES)
def test_spec_matches_model(model_type):
    assert model_type in ARCHITECTURES
    model = build(model_type)
    spec = arch_spec(model_type)
    handle = temoe.wrap(model)
    assert handle.num_experts == getattr(model.config, spec.num_experts_key) == 8
    assert handle.top_k == getattr(model.config, spec.top_k_key) == 2
    assert handle.hidden_size == 64
    dense = {"deepseek_v3": [0], "glm4_moe": [0]}.get(model_type, [])
    assert handle.layer_indices == [j for j in range(model.config.num_hidden_layers) if j not in dense]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(spec.attention_modules) & names, "no attention module of the spec exists"
    params = dict(model.named_parameters())
    block = f"model.layers.{handle.layer_indices[0]}.{spec.block_attr}"
    for name in (*spec.expert_parameters, spec.router_parameter):
        assert f"{block}.{name}" in params
    assert handle.router_weight(0).shape == (8, 64)
    bias = handle.router_bias(0)
    assert (bias is not None) == (model_type == "gpt_oss") and (bias is None or bias.shape == (8,))
