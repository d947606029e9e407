"""Controller networks: DeepSets invariance, intended initialisation, state_dict round trip, size."""

import io

import torch

from temoe.controller import ControllerConfig, LayerController, OptionController

SMALL = ControllerConfig(k_hat=3, expert_embed_dim=8, hidden=16)


def expected_layer_params(H: int, N: int, d_e: int, D: int) -> int:
    embed = N * d_e
    phi = d_e * D + D + D * D + D
    norms = H + D
    head = (H + D) * D + D + D + 1  # termination and Q: Linear(H + D -> D), Linear(D -> 1)
    return embed + phi + norms + 2 * head + (H + 1) + (H * N + N)


def test_deepsets_permutation_invariance():
    torch.manual_seed(0)
    layer = LayerController(num_experts=6, hidden_size=10, config=SMALL)
    ids = torch.tensor([[0, 4, 5], [2, 1, 3]])
    z = layer.set_encoder(ids)
    for perm in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):
        torch.testing.assert_close(layer.set_encoder(ids[:, perm]), z)
    h = torch.randn(2, 10)
    torch.testing.assert_close(layer.option_value(h, ids[:, [2, 0, 1]]), layer.option_value(h, ids))
    # ... and it is the mean of φ(e_i) over the members: a set of different experts gives another z.
    phi = layer.set_encoder.phi(layer.set_encoder.expert_embedding.weight)
    torch.testing.assert_close(z[0], phi[[0, 4, 5]].mean(0))
    assert not torch.allclose(z[0], z[1])


def test_initialisation_is_the_intended_one():
    torch.manual_seed(0)
    layer = LayerController(num_experts=6, hidden_size=10, config=SMALL)
    h, ids = torch.randn(5, 10) * 3, torch.randint(0, 6, (5, 3))
    beta = torch.sigmoid(layer.termination_logit(h, ids))
    # last layer weights x0.01 -> β within a hair of σ(-3) = 0.0474 for any input
    assert torch.allclose(beta, torch.full_like(beta, 0.04743), atol=2e-3)
    assert torch.equal(layer.state_value(h), torch.zeros(5))
    assert layer.option_value(h, ids).abs().max() < 0.05
    router_w, router_b = torch.randn(6, 10), torch.randn(6)
    layer.init_selection_from_router(router_w, router_b)
    torch.testing.assert_close(layer.selection_logits(h), h @ router_w.T + router_b)
    layer.init_selection_from_router(router_w, None)
    torch.testing.assert_close(layer.selection_logits(h), h @ router_w.T)


def test_state_dict_round_trip_keeps_init():
    torch.manual_seed(0)
    a = OptionController(num_layers=2, num_experts=6, top_k=2, hidden_size=10, config=SMALL)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    torch.manual_seed(123)  # a differently initialised twin
    b = OptionController(num_layers=2, num_experts=6, top_k=2, hidden_size=10, config=SMALL)
    assert not torch.equal(a.layers[0].selection.weight, b.layers[0].selection.weight)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert b.layers[1].termination[-1].bias.item() == -3.0
    assert b.layers[1].value.weight.abs().sum() == 0
    assert all(p.dtype == torch.float32 for p in b.parameters())


def test_layers_have_separate_parameters_and_count():
    c = OptionController(num_layers=3, num_experts=6, top_k=2, hidden_size=10, config=SMALL)
    ptrs = [{p.data_ptr() for p in layer.parameters()} for layer in c.layers]
    assert not (ptrs[0] & ptrs[1]) and not (ptrs[1] & ptrs[2])
    per_layer = expected_layer_params(H=10, N=6, d_e=8, D=16)
    assert c.num_parameters(per_layer=True) == per_layer
    assert c.num_parameters() == 3 * per_layer


def test_default_size_gpt_oss_20b_layer():
    # gpt-oss-20b: H = 2880, N = 32, top-4; paper defaults d_e = 128, hidden 1024.
    c = OptionController(num_layers=1, num_experts=32, top_k=4, hidden_size=2880,
                         config=ControllerConfig(k_hat=8))
    # digest §1.2: "about 9.28 M parameters per layer"
    assert c.num_parameters() == expected_layer_params(H=2880, N=32, d_e=128, D=1024) == 9_284_259


def test_k_hat_out_of_range_fails_with_key_name():
    import pytest

    with pytest.raises(ValueError, match="k_hat"):
        OptionController(num_layers=1, num_experts=6, top_k=4, hidden_size=10, config=SMALL)
