"""The termination's demand term (`ControllerConfig.termination_demand`): logit β_t gets s · (m_t − τ), m_t
the router's probability mass outside ω_{t-1}; m_t is recorded, the replay reproduces the rollout's β, and s
and τ learn."""

import pytest
import torch
from test_controller_policy import H, K, L, N
from test_controller_policy import make_controller as make_base_controller
from test_selection_context import rollout

from temoe.controller import ControllerConfig
from temoe.controller.networks import outside_mass
from temoe.train.config import load_config


def make_controller(scale: float = 20.0, threshold: float = 0.5, bias: float = 0.0):
    return make_base_controller(bias=bias, selection_context_decay=0.8, termination_demand=scale,
                                termination_demand_threshold=threshold)


def test_outside_mass_is_the_softmax_mass_of_the_experts_not_in_the_option():
    logits = torch.randn(4, N)
    option = torch.stack([torch.randperm(N)[:K] for _ in range(4)])
    probs = logits.softmax(-1)
    expected = torch.stack([probs[b, [j for j in range(N) if j not in option[b].tolist()]].sum()
                            for b in range(4)])
    torch.testing.assert_close(outside_mass(logits, option), expected)
    everything = torch.arange(N).expand(4, N)  # an option holding every expert leaves no mass outside
    torch.testing.assert_close(outside_mass(logits, everything), torch.zeros(4), atol=1e-6, rtol=0)


def test_recorded_mass_and_beta_match_the_formula_and_the_replay():
    c, router_w = make_controller()
    state, decode = rollout(c, torch.randn(3, 5, H), torch.ones(3, 5, dtype=torch.bool), 30)
    traj = state.trajectory()
    assert traj.outside_mass.shape == traj.betas.shape == (3, 31, L)
    dec = traj.decision_mask  # (B, T)
    # m_t is the router's mass outside ω_{t-1} at h_t
    for i in range(L):
        logits = traj.hidden[:, :, i] @ router_w[i].T
        expected = outside_mass(logits, traj.options_prev[:, :, i])
        torch.testing.assert_close(traj.outside_mass[:, :, i][dec], expected[dec], atol=1e-5, rtol=1e-5)
        assert bool((traj.outside_mass[:, 0, i] == 0).all())  # initial columns hold zeros
    out = c.replay_trajectory(traj)
    torch.testing.assert_close(out.beta[dec], traj.betas[dec], atol=1e-5, rtol=1e-5)
    # the demand term matters: without it the replayed β differs
    plain = c.replay(traj.hidden, traj.options_prev, traj.decisions, traj.selected, traj.selection_input,
                     torch.full_like(traj.outside_mass, c.config.termination_demand_threshold))
    assert not torch.allclose(plain.beta[dec], traj.betas[dec], atol=1e-3)


def test_a_sharp_demand_term_terminates_exactly_when_the_mass_outside_exceeds_the_threshold():
    c, _ = make_controller(scale=1e4, threshold=0.4)
    g = torch.Generator().manual_seed(0)
    greedy = c.new_state(4, generator=g, mode="greedy")
    fn = c.mask_fn(greedy)
    hidden = torch.randn(4, 5, H)
    for i in range(L):
        fn(i, hidden)
    greedy.begin_generation()
    for _ in range(25):
        h = torch.randn(4, 1, H)
        for i in range(L):
            fn(i, h)
    traj = greedy.trajectory()
    dec = traj.decision_mask[..., None].expand_as(traj.decisions)
    expected = traj.outside_mass > 0.4
    assert bool(expected[dec].any()) and bool((~expected[dec]).any())
    assert torch.equal(traj.decisions[dec], expected[dec])


def test_scale_and_threshold_are_learned_parameters():
    c, _ = make_controller()
    state, _ = rollout(c, torch.randn(2, 5, H), torch.ones(2, 5, dtype=torch.bool), 10)
    out = c.replay_trajectory(state.trajectory())
    out.beta[state.trajectory().decision_mask].sum().backward()
    for layer in c.layers:
        assert layer.demand_scale.grad is not None and layer.demand_scale.grad.abs() > 0
        assert layer.demand_threshold.grad is not None and layer.demand_threshold.grad.abs() > 0


def test_off_by_default_records_nothing_and_a_missing_mass_is_an_error():
    c, _ = make_base_controller(selection_context_decay=0.8)
    state, _ = rollout(c, torch.randn(2, 5, H), torch.ones(2, 5, dtype=torch.bool), 5)
    assert state.trajectory().outside_mass is None
    assert not any("demand" in name for name, _ in c.named_parameters())
    on, _ = make_controller()
    with pytest.raises(ValueError, match="outside_mass"):
        on.layers[0].termination_logit(torch.randn(2, H), torch.zeros(2, K, dtype=torch.long))


@pytest.mark.parametrize("field, value, match", [
    ("termination_demand", -1.0, "termination_demand=-1.0: must be >= 0"),
    ("termination_demand_threshold", 1.0, r"must be in \(0, 1\)"),
    ("termination_demand_threshold", 0.0, r"must be in \(0, 1\)"),
])
def test_bad_demand_settings_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        ControllerConfig(k_hat=K, **{field: value})
    with pytest.raises(ValueError, match=f"config key controller.{field}={value}"):
        load_config(None, {f"controller.{field}": value})
