"""Pruning baselines on a tiny gpt_oss model: exact k̂ per layer (random: per token), reconstruction
beats random subsets on its own objective, padding never counts, Wanda is n:m and reversible, and every
baseline's masks run through the shared routing path (`handle.restrict`, checked with `handle.trace()`)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import temoe
from temoe.baselines import CalibrationConfig, baseline_source
from temoe.baselines import reconstruction as R
from temoe.baselines.calibration import calibration_sequences, collect_routing
from temoe.baselines.frequency import expert_counts, frequency_masks
from temoe.baselines.random import RandomPerTokenMasks
from temoe.baselines.wanda import nm_for, nm_prune_, wanda_pruned
from temoe.rollout.runner import GenerationConfig, generate
from temoe.testing import tiny_model

K_HAT = 4  # of N = 8 experts, k̃ = 2


@pytest.fixture(scope="module")
def handle():
    h = temoe.wrap(tiny_model("gpt_oss", seed=0))
    yield h
    h.unwrap()


def _sequences(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (int(torch.randint(5, 20, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.fixture
def calib(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.dumps({"prompt": f"prompt number {i} about things"}) for i in range(10)]
    prompts.write_text("\n".join(rows) + "\n")
    return CalibrationConfig(num_prompts=4, max_total_tokens=40, batch_size=2, prompts_file=str(prompts))


def test_frequency_keeps_k_hat_most_used_and_ignores_padding(handle):
    seqs = _sequences()
    batched = expert_counts(collect_routing(handle, seqs, batch_size=3), 8)
    one_by_one = sum(expert_counts(collect_routing(handle, [s], batch_size=1), 8) for s in seqs)
    # Batches of mixed length are padded; with padding excluded the counts equal unpadded single runs.
    assert torch.equal(batched, one_by_one)
    assert int(batched.sum()) == sum(len(s) for s in seqs) * handle.num_layers * handle.top_k
    masks = frequency_masks(batched, K_HAT)
    assert masks.shape == (2, 8) and masks.sum(-1).tolist() == [K_HAT, K_HAT]
    for i in range(2):  # every kept expert is used at least as often as every dropped one
        assert batched[i][masks[i]].min() >= batched[i][~masks[i]].max()


def test_frequency_tie_break_is_deterministic():
    counts = torch.tensor([[5, 1, 5, 5, 0, 0, 0, 0]])
    assert torch.nonzero(frequency_masks(counts, 2)[0]).flatten().tolist() == [0, 2]


def test_restricted_output_equals_the_real_block_under_restrict(handle):
    x = torch.randn(1, 12, handle.hidden_size, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [1, 3, 5, 6]] = True
    with torch.no_grad(), handle.restrict(mask):
        block_out = handle.blocks[0](x)
    block_out = block_out[0] if isinstance(block_out, tuple) else block_out
    logits = R.router_logits(handle, 0, x[0])
    outputs = R.expert_outputs(handle, 0, x[0])
    ours = R.restricted_output(outputs, *R.route_restricted(handle, 0, logits, mask[0]))
    torch.testing.assert_close(ours, block_out[0].float(), atol=1e-5, rtol=1e-5)


def test_reconstruction_beats_random_subsets_on_its_objective(handle):
    x = collect_routing(handle, _sequences(8), batch_size=4, hidden_states=True).hidden[0]
    chosen, history = R.greedy_reconstruction(handle, 0, x, K_HAT)
    assert int(chosen.sum()) == K_HAT and len(history) == K_HAT
    logits, outputs = R.router_logits(handle, 0, x), R.expert_outputs(handle, 0, x)
    errs = []
    for subset in itertools.combinations(range(8), K_HAT):  # all 70 subsets: the exact distribution of random
        m = torch.zeros(8, dtype=torch.bool)
        m[list(subset)] = True
        errs.append(R.reconstruction_error(handle, 0, logits, outputs, m))
    greedy = R.reconstruction_error(handle, 0, logits, outputs, chosen)
    errs = torch.tensor(errs)
    assert greedy == pytest.approx(history[-1], rel=1e-5)
    assert greedy < float(errs.mean())  # better than a random subset in expectation
    assert float((errs < greedy - 1e-6).float().mean()) <= 0.1  # and within the best 10% of all subsets


def test_random_per_token_masks_have_k_hat_per_token_and_change():
    fn = RandomPerTokenMasks(2, 8, K_HAT, torch.Generator().manual_seed(0))
    m = fn(0, torch.zeros(3, 50, 16))
    assert m.shape == (3, 50, 8) and bool((m.sum(-1) == K_HAT).all())
    assert float((m[:, 1:] != m[:, :-1]).any(-1).float().mean()) > 0.9  # fresh set almost every token
    assert torch.equal(fn.recorded(0), m.reshape(150, 8))
    again = RandomPerTokenMasks(2, 8, K_HAT, torch.Generator().manual_seed(0))(0, torch.zeros(3, 50, 16))
    assert torch.equal(m, again)  # the explicit generator makes it reproducible


def test_nm_pruning_zeroes_lowest_scores_per_group():
    assert nm_for(16, 32) == (2, 4) and nm_for(8, 32) == (1, 4) and nm_for(24, 32) == (3, 4)
    assert nm_for(12, 32) == (3, 8) and nm_for(4, 8) == (2, 4)
    w = torch.tensor([[4.0, -1.0, 3.0, 2.0, 1.0, 1.0, -5.0, 0.5]])
    nm_prune_(w, w.abs(), 2, 4)  # groups [4,-1,3,2] -> keep 4,3 ; [1,1,-5,.5] -> keep -5 and one 1
    assert w[0, :4].tolist() == [4.0, 0.0, 3.0, 0.0]
    assert w[0, 6] == -5.0 and w[0, 7] == 0.0 and int((w[0, 4:6] != 0).sum()) == 1


@pytest.mark.parametrize("name", ["frequency", "reconstruction", "random", "wanda"])
def test_every_baseline_runs_through_the_shared_routing_path(handle, tokenizer, calib, tmp_path, name):
    before = [p.detach().clone() for p in handle.model.parameters()]
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2, seed=0)
    with baseline_source(name, handle, tokenizer, K_HAT, calibration=calib, cache_dir=tmp_path / "cache",
                         reconstruction_tokens=64) as source:
        assert source.k_hat == K_HAT
        masks = source.start(2)
        if name in ("frequency", "reconstruction"):
            assert masks.shape == (2, 8) and masks.sum(-1).tolist() == [K_HAT, K_HAT]
        if name == "wanda":
            assert masks is None  # all experts stay routable
            zeroed = sum(int((e.gate_up_proj == 0).sum() + (e.down_proj == 0).sum()) for e in handle.experts)
            total = sum(e.gate_up_proj.numel() + e.down_proj.numel() for e in handle.experts)
            assert zeroed / total >= 1 - K_HAT / 8 - 1e-6  # (N − k̂)/N of the expert weights pruned
        with handle.trace() as trace:
            gens = generate(handle, tokenizer, ["hello there", "a longer prompt here"], source, cfg,
                            torch.Generator().manual_seed(0))
        for i in range(handle.num_layers):
            ids = trace.expert_ids(i)  # (T_total, k) routed ids, after the mask
            if name in ("frequency", "reconstruction"):
                assert bool(masks[i][ids].all()), "a routed expert is outside the baseline's mask"
            if name == "random":
                allowed = source.fn.recorded(i)  # (T_total, N), same rows as the trace
                assert bool((allowed.sum(-1) == K_HAT).all())
                assert bool(allowed.gather(1, ids).all()), "a routed expert is outside the per-token mask"
        for g in gens:
            if g.switch_rate is not None:
                if name in ("frequency", "reconstruction"):
                    assert g.switch_rate == 0.0  # a static k̂-mask never switches
                if name == "random":
                    assert g.switch_rate > 0.5
    after = list(handle.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "weights must be restored afterwards"


def test_calibration_is_cached_and_excludes_nothing_real(handle, tokenizer, calib, tmp_path):
    seqs = calibration_sequences(handle, tokenizer, calib, tmp_path)
    assert len(seqs) == calib.num_prompts and all(2 <= len(s) <= calib.max_total_tokens for s in seqs)
    files = list(tmp_path.glob("calibration-*.json"))
    assert len(files) == 1
    assert calibration_sequences(handle, tokenizer, calib, tmp_path) == seqs  # read back from the cache


def test_wanda_restores_weights_after_an_error(handle):
    before = handle.experts[0].gate_up_proj.detach().clone()
    with pytest.raises(RuntimeError, match="boom"), wanda_pruned(handle, _sequences(2), K_HAT, 2):
        assert not torch.equal(handle.experts[0].gate_up_proj, before)
        raise RuntimeError("boom")
    assert torch.equal(handle.experts[0].gate_up_proj, before)
