"""Host-sync budget of offloaded decode, counted on CPU: at most one op that would force a device -> host
synchronisation on CUDA per MoE layer per decoded token (the engine's one small flag read), at most two per
token outside the MoE layers (sampling, stop check). The controller's own share is counted separately."""

from __future__ import annotations

import pytest
import torch

import temoe
from sync_counter import SyncCounter  # tests/ is on sys.path (rootdir conftest)
from temoe.controller import ControllerConfig, OptionController
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.generate import decode_steps
from temoe.serve.synthetic import SyntheticOptions
from temoe.testing import tiny_model

NEW = 9  # generated tokens: the first comes from the prefill, the other 8 from counted decode steps


def _count(handle, policy, masks, begin=None, counter=None):
    """Decode NEW tokens; returns (counter, decoded steps). Only the decode steps are counted."""
    counter = counter or SyncCounter()
    if callable(masks):
        masks = counter.scoped(masks)
    engine = OffloadEngine(handle, policy)
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(4))
    steps = decode_steps(engine, ids, NEW, masks=masks, on_prefill_done=begin)
    next(steps)
    hooks = counter.watch_blocks(handle.blocks)
    try:
        with counter:
            decoded = sum(1 for _ in steps)
    finally:
        for h in hooks:
            h.remove()
        engine.release(0)
        engine.detach()
    assert decoded == NEW - 1
    return counter, decoded


def _controller(handle, termination_bias: float):
    torch.manual_seed(0)
    config = ControllerConfig(k_hat=4, expert_embed_dim=8, hidden=16, termination_bias_init=termination_bias)
    return OptionController.from_handle(handle, config).eval()


def _assert_budget(counter, decoded, num_layers, what):
    per_layer = counter.counts["moe"] / decoded / num_layers
    outside = counter.counts["outside"] / decoded
    detail = "\n".join(f"{scope}: {where}" for scope, where in counter.where[:20])
    assert per_layer <= 1, f"{what}: {per_layer:.2f} host syncs per MoE layer per token\n{detail}"
    assert outside <= 2, f"{what}: {outside:.2f} host syncs per token outside the MoE layers\n{detail}"


@pytest.mark.parametrize("model_type", ["gpt_oss", "qwen3_moe"])
@pytest.mark.parametrize("termination_bias", [-3.0, 3.0])  # fresh (keeps its options) / switching often
def test_engine_budget_with_controller(model_type, termination_bias):
    model = tiny_model(model_type)
    handle = temoe.wrap(model)
    controller = _controller(handle, termination_bias)
    state = controller.new_state(1, mode="greedy")
    policy = make_policy("option", handle.num_layers, handle.num_experts, expert_budget=4)
    counter, decoded = _count(handle, policy, controller.mask_fn(state), state.begin_generation)
    _assert_budget(counter, decoded, handle.num_layers, "engine with a controller")
    if termination_bias > 0:
        assert state.switch_rate() > 0  # the switching path was exercised


def test_total_budget_with_controller():
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    controller = _controller(handle, -3.0)
    state = controller.new_state(1, mode="greedy")
    policy = make_policy("option", handle.num_layers, handle.num_experts, expert_budget=4)
    counter, decoded = _count(handle, policy, controller.mask_fn(state), state.begin_generation)
    total = (counter.counts["moe"] + counter.counts["controller"]) / decoded / handle.num_layers
    assert total <= 1, f"{total:.2f} host syncs per MoE layer per token, controller included"


@pytest.mark.parametrize("case", ["synthetic-random", "synthetic-router", "static-tensor", "lru", "full"])
def test_engine_budget_without_controller(case):
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    masks = None
    if case.startswith("synthetic"):
        rule = case.split("-")[1]
        masks = SyntheticOptions(handle, 4, rule=rule, switch_rate=0.5, seed=1).mask_fn()
        policy = make_policy("option", L, N, expert_budget=4)
    elif case == "static-tensor":
        masks = torch.zeros(L, N, dtype=torch.bool)
        masks[:, [0, 2, 3, 5]] = True
        policy = make_policy("option", L, N, expert_budget=4)
    elif case == "lru":
        policy = make_policy("lru", L, N, expert_budget=3)
    else:
        policy = make_policy("full", L, N)
    counter, decoded = _count(handle, policy, masks)
    _assert_budget(counter, decoded, L, case)
    assert counter.counts["controller"] == 0  # synthetic options decide without reading the device
    if case == "full":
        assert counter.counts["moe"] == 0  # every expert resident: nothing to plan


def test_counter_sees_an_extra_read_in_a_moe_layer():
    """The budget can fail: one `.item()` per layer call inside the MoE block is counted there."""
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    counter = SyncCounter()
    L, N = handle.num_layers, handle.num_experts

    def read(module, args, output):  # a forward hook of the block: runs inside the counter's "moe" scope
        args[0].sum().item()

    extra = [block.register_forward_hook(read) for block in handle.blocks]
    try:
        counter, decoded = _count(handle, make_policy("lru", L, N, expert_budget=3), None, counter=counter)
    finally:
        for h in extra:
            h.remove()
    assert counter.counts["moe"] / decoded / L == 2  # the engine's flag read + the injected item()
