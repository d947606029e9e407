"""Directional learning tests: a few controller updates move the termination probability the way the
option-critic objective says, through the trainer's own phase (`controller_update`) or the loss functions.

No language model: the controller runs on random hidden states (the MaskFn sees only hidden states), and the
rollout record is wrapped in a `RolloutBatch` with the reward the test wants.
"""

from types import SimpleNamespace

import torch
from accelerate import Accelerator

from temoe.controller import ControllerConfig, OptionController
from temoe.rl import termination_loss
from temoe.rollout.generate import RolloutBatch
from temoe.train.config import load_config
from temoe.train.trainer import ControllerReplay, controller_update

L, N, TOPK, H, K, B, STEPS, UPDATES = 2, 8, 2, 12, 3, 8, 12, 8


def make_controller(eta: float) -> OptionController:
    torch.manual_seed(0)
    config = ControllerConfig(k_hat=K, eta=eta, expert_embed_dim=8, hidden=16, termination_bias_init=-1.0)
    controller = OptionController(L, N, TOPK, H, config)
    router_w = torch.randn(L, N, H)
    for i, layer in enumerate(controller.layers):
        layer.init_selection_from_router(router_w[i], None)
    controller.router_logits = lambda i, h: h.float() @ router_w[i].T
    return controller


def collect(controller: OptionController, seed: int) -> RolloutBatch:
    """A prompt call, begin_generation and STEPS decode calls on random hidden states; zero reward."""
    g = torch.Generator().manual_seed(seed)
    state = controller.new_state(B, generator=torch.Generator().manual_seed(seed + 1))
    fn = controller.mask_fn(state)
    for i in range(L):
        fn(i, torch.randn(B, 4, H, generator=g))
    state.begin_generation()
    for _ in range(STEPS):
        h = torch.randn(B, 1, H, generator=g)
        for i in range(L):
            fn(i, h)
    T = STEPS + 1  # one token a_t per controlled position t = 0..STEPS
    zeros = torch.zeros(B, T)
    return RolloutBatch(prompt_ids=torch.zeros(B, 4, dtype=torch.long),
                        prompt_mask=torch.ones(B, 4, dtype=torch.bool),
                        tokens=torch.zeros(B, T, dtype=torch.long), valid=torch.ones(B, T, dtype=torch.bool),
                        terminated=torch.ones(B, dtype=torch.bool), logp_student=zeros, logp_teacher=zeros,
                        logp_sampled=zeros, weights=torch.ones(B, T), kl=zeros, trajectory=state.trajectory())


def mean_beta(controller: OptionController) -> float:
    """β over the decision positions of a fixed held-out rollout (the same hidden states every time)."""
    traj = collect(controller, seed=999).trajectory
    with torch.no_grad():
        beta = controller.replay_trajectory(traj).beta
    return float(beta[traj.decision_mask].mean())


def test_a_large_deliberation_cost_lowers_the_termination_probability():
    # Zero reward: the critics stay near 0, so A^term = Q - V + η ≈ η > 0 and minimising β · Â lowers β
    # (Alg. 2 continued, line 13). With the sign of η flipped, β would rise and this test fail.
    config = load_config(None, {"controller.eta": 1.0, "lr_controller": 1e-2, "reward_scale": 1.0})
    controller = make_controller(config.controller.eta)
    run = SimpleNamespace(config=config, eta=config.controller.initial_eta, controller=controller,
                          ddp_replay=ControllerReplay(controller), accelerator=Accelerator(cpu=True),
                          optimizers={"controller": torch.optim.AdamW(controller.parameters(), lr=1e-2)})
    before = mean_beta(controller)
    for update in range(UPDATES):
        stats = controller_update(run, collect(controller, seed=update))
        assert stats["termination/frac_keep_preferred"] > 0.5  # keeping is preferred at most positions
    after = mean_beta(controller)
    assert before > 0.2 and after < 0.7 * before, (before, after)


def test_a_reward_that_pays_for_switching_raises_the_termination_probability_at_zero_cost():
    # A reward of c per termination (r_t = c · d_t) under the behaviour policy gives, at position t,
    # V(h_t) = β_t · c + (the same future) and Q(h_t, ω_{t-1}) = 0 + (the same future) for keeping the option,
    # so A^term = Q - V + η = -c · β_t with η = 0: terminating pays, and minimising β · Â raises β.
    c, eta = 1.0, 0.0
    controller = make_controller(eta)
    optimizer = torch.optim.AdamW(controller.parameters(), lr=1e-2)
    before = mean_beta(controller)
    for update in range(UPDATES):
        traj = collect(controller, seed=update).trajectory
        out = controller.replay_trajectory(traj)
        values = torch.zeros_like(out.beta)  # V(h_t): only Q - V enters the advantage
        q_keep = values - c * out.beta.detach()  # Q(h_t, ω_{t-1}) of the reward above
        loss, _ = termination_loss(out.beta, q_keep, values, traj.decision_mask, eta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_beta(controller)
    assert after > before + 0.15, (before, after)
