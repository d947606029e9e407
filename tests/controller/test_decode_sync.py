"""A controller decode step forces no device -> host sync, whether rows terminate or not (counted on CPU with
`tests/sync_counter.py`; on CUDA each counted op would stall the host until the device catches up)."""

import pytest
import torch
from test_controller_policy import H, L, make_controller

import temoe
from sync_counter import SyncCounter
from temoe.controller import ControllerConfig, OptionController
from temoe.testing import tiny_model

B = 4
EXTENSIONS = dict(selection_context_decay=0.8, termination_demand=20.0, termination_demand_threshold=0.5,
                  initial_option="selection", selection_temperature=0.5)


def test_the_counter_counts_each_kind_of_host_read():
    x = torch.randn(6)
    mask = x > 0
    reads = [lambda: x[0].item(), lambda: bool(mask.any()), lambda: int(mask.sum()), lambda: x.tolist(),
             lambda: mask.nonzero(), lambda: x[mask], lambda: x.unique(), lambda: x.masked_select(mask),
             lambda: 1 if mask.all() else 0]
    for read in reads:
        with SyncCounter() as sync:
            read()
        assert sync.count == 1, sync.ops
    with SyncCounter() as sync:
        torch.where(mask, x, 0.0).topk(2)
    assert sync.count == 0


@pytest.mark.parametrize("bias", [-30.0, 30.0])  # no row terminates / every row terminates
@pytest.mark.parametrize("mode, selection_mode", [("sample", None), ("greedy", None), ("sample", "greedy")])
@pytest.mark.parametrize("extensions", [False, True])
def test_a_decode_step_has_no_host_sync(bias, mode, selection_mode, extensions):
    c, _ = make_controller(bias=bias, **(EXTENSIONS if extensions else {}))
    state = c.new_state(B, generator=torch.Generator().manual_seed(0), mode=mode,
                        selection_mode=selection_mode, prompt_mask=torch.ones(B, 5, dtype=torch.bool))
    fn = c.mask_fn(state)
    for i in range(L):
        fn(i, torch.randn(B, 5, H))
    state.begin_generation()
    state.mark_done(torch.tensor([False, True, False, False]))
    hidden = torch.randn(3, B, 1, H)
    for i in range(L):  # the first decode call may move state to the device; the budget is for later ones
        fn(i, hidden[0])
    with SyncCounter() as sync:
        for t in (1, 2):
            for i in range(L):
                fn(i, hidden[t])
    assert sync.count == 0, sync.ops
    traj = state.trajectory()
    decided = traj.decisions[:, -1][traj.decision_mask[:, -1]]
    assert bool(decided.all()) if bias > 0 else not bool(decided.any())  # both branches were exercised
    out = c.replay_trajectory(traj)  # and the record still replays exactly
    switched = traj.decisions
    torch.testing.assert_close(out.log_prob[switched], traj.log_probs[switched], rtol=0, atol=1e-5)


def test_controller_inside_a_tiny_model_decode_step_has_no_host_sync():
    model = tiny_model("gpt_oss", seed=0)
    handle = temoe.wrap(model)
    torch.manual_seed(0)
    config = ControllerConfig(k_hat=4, expert_embed_dim=8, hidden=16, termination_bias_init=0.0, **EXTENSIONS)
    controller = OptionController.from_handle(handle, config)
    state = controller.new_state(2, generator=torch.Generator().manual_seed(0))
    inner = controller.mask_fn(state)
    counted = {"calls": 0, "syncs": 0}

    def fn(i, hidden):  # count inside the controller's own calls only (the model is not under test here)
        if not state.controlled:
            return inner(i, hidden)
        with SyncCounter() as sync:
            mask = inner(i, hidden)
        counted["calls"] += 1
        counted["syncs"] += sync.count
        return mask

    fn.temoe_counts_checked = True
    prompt = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    with handle.restrict(fn), torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        state.begin_generation()
        for _ in range(6):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values,
                        use_cache=True)
    assert counted["calls"] == 6 * handle.num_layers and counted["syncs"] == 0
    assert state.trajectory().decisions.any()  # β = 1/2 at the start: some rows switched
    handle.unwrap()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bias", [-30.0, 30.0])
def test_a_cuda_decode_step_passes_the_sync_debug_mode(bias):
    """On CUDA, torch's own sync detector raises on any synchronising call inside the decode steps."""
    device = torch.device("cuda")
    c, router_w = make_controller(bias=bias, **EXTENSIONS)
    c.to(device)
    router_w = router_w.to(device)
    c.router_logits = lambda i, h: h.float() @ router_w[i].T
    state = c.new_state(B, generator=torch.Generator(device=device).manual_seed(0),
                        prompt_mask=torch.ones(B, 5, dtype=torch.bool, device=device))
    fn = c.mask_fn(state)
    for i in range(L):
        fn(i, torch.randn(B, 5, H, device=device))
    state.begin_generation()
    hidden = torch.randn(4, B, 1, H, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(4):
            for i in range(L):
                fn(i, hidden[t])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    traj = state.trajectory()
    out = c.replay_trajectory(traj)
    switched = traj.decisions
    torch.testing.assert_close(out.log_prob[switched], traj.log_probs[switched], rtol=0, atol=1e-5)
