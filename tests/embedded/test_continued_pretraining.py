"""Continued pretraining pieces: causal context masks, the masked-step plan, dead-expert revival, and a
`temoe pretrain --init-from` run that uses all three."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from temoe.embedded.pretrain import (
    PretrainConfig,
    context_masks,
    masked_step_plan,
    pretrain,
    revive_dead_experts,
    segment_masks,
    segment_starts,
)
from temoe.testing import tiny_model

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _pretrain(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "temoe.cli.main", "pretrain", "--size", "ci", "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_context_masks_are_causal_and_pick_k_hat():
    torch.manual_seed(0)
    logits = torch.randn(2, 12, 8)
    masks = context_masks(logits, k_hat=3, decay=0.9)
    assert masks.shape == (2, 12, 8) and masks.dtype == torch.bool
    assert bool((masks.sum(-1) == 3).all())
    # Changing a later position never changes an earlier position's mask.
    changed = logits.clone()
    changed[:, 7:] = torch.randn(2, 5, 8) * 10
    assert torch.equal(context_masks(changed, 3, 0.9)[:, :7], masks[:, :7])
    # Position 0 has only itself: its mask is its own top-3.
    assert torch.equal(masks[:, 0], torch.zeros(2, 8, dtype=torch.bool).scatter_(
        -1, logits[:, 0].topk(3, -1).indices, True))


def test_context_masks_follow_a_moving_average():
    # Experts 0-1 dominate the first 10 positions, experts 6-7 one later position: with a long memory the
    # mask at that position keeps 0-1; with no memory (decay 0) it is the position's own top-2.
    logits = torch.zeros(1, 11, 8)
    logits[0, :10, :2] = 5.0
    logits[0, 10, 6:] = 5.0
    long = context_masks(logits, 2, decay=0.99)[0, 10]
    short = context_masks(logits, 2, decay=0.0)[0, 10]
    assert long[:2].all() and not long[6:].any()
    assert short[6:].all() and not short[:2].any()


def test_segment_masks_hold_the_router_top_k_of_each_segment_start():
    starts = segment_starts(3, 200, mean=16.0, generator=torch.Generator().manual_seed(0))
    assert bool((starts[:, 0] == 0).all()) and bool((starts <= torch.arange(200)).all())
    assert bool((starts[:, 1:] >= starts[:, :-1]).all())
    lengths = [int((starts[b] == s).sum()) for b in range(3) for s in starts[b].unique().tolist()]
    assert 8 < sum(lengths) / len(lengths) < 32  # geometric with mean 16
    logits = torch.randn(3, 200, 8)
    masks = segment_masks(logits, 3, starts)
    assert bool((masks.sum(-1) == 3).all())
    for b in range(3):
        for t in (0, 57, 199):
            s = int(starts[b, t])
            assert set(masks[b, t].nonzero().flatten().tolist()) == set(logits[b, s].topk(3).indices.tolist())


def test_sampled_segment_masks_are_plackett_luce_draws_held_per_segment():
    starts = segment_starts(2, 120, mean=10.0, generator=torch.Generator().manual_seed(1))
    logits = torch.randn(2, 120, 16) * 3
    top = segment_masks(logits, 6, starts)
    drawn = segment_masks(logits, 6, starts, torch.Generator().manual_seed(2))
    assert bool((drawn.sum(-1) == 6).all())
    same_segment = starts[:, 1:] == starts[:, :-1]
    assert torch.equal(drawn[:, 1:][same_segment], drawn[:, :-1][same_segment])  # held within a segment
    assert not torch.equal(drawn, top)  # noise changes some sets...
    overlap = (drawn & top).sum(-1).float().mean()
    assert overlap > 3.5  # ...but keeps far more of the top-6 than uniform draws would (6 * 6 / 16 = 2.25)
    again = segment_masks(logits, 6, starts, torch.Generator().manual_seed(2))
    assert torch.equal(drawn, again)


def test_masked_step_plan_is_deterministic_and_respects_the_fraction():
    cfg = PretrainConfig(context_mask_fraction=0.5, context_mask_k_hats=(12, 16),
                         context_mask_segment_sample=0.5)
    plan = [masked_step_plan(cfg, s) for s in range(400)]
    again = [masked_step_plan(cfg, s) for s in range(400)]
    for a, b in zip(plan, again):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a.k_hat, a.kind) == (b.k_hat, b.kind)
            assert (a.starts is None and b.starts is None) or torch.equal(a.starts, b.starts)
    masked = [p for p in plan if p is not None]
    assert 150 < len(masked) < 250 and {p.k_hat for p in masked} == {12, 16}
    kinds = [p.kind for p in masked]
    segments = kinds.count("segment") + kinds.count("segment-sampled")
    assert 0.3 < segments / len(kinds) < 0.7 and 0.2 < kinds.count("segment-sampled") / segments < 0.8
    assert all((p.noise_seed is not None) == (p.kind == "segment-sampled") for p in masked)
    assert all(p.starts.shape == (cfg.batch_size, cfg.seq_len) for p in masked if p.kind != "ema")
    assert all(masked_step_plan(PretrainConfig(), s) is None for s in range(50))


def test_revive_dead_experts_copies_the_busiest_expert():
    model = tiny_model("gpt_oss", seed=0)
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.router.bias[3] = -1e4  # expert 3 can never be routed
    batches = [torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(i))
               for i in range(2)]
    revived = revive_dead_experts(model, batches)
    assert [(layer, dead) for layer, dead, _ in revived] == [(0, 3)]
    src = revived[0][2]
    for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
        param = getattr(mlp.experts, name)
        assert torch.equal(param[3], param[src])
    assert float(mlp.router.bias[3].detach()) == pytest.approx(float(mlp.router.bias[src].detach()))
    assert not torch.equal(mlp.router.weight[3], mlp.router.weight[src])  # jittered
    assert revive_dead_experts(model, batches) == []  # nothing dead any more
    # min_share: experts under that fraction of the uniform share count as dead too. Routing over a few
    # batches is never exactly uniform, so with min_share = 1 some expert is below its share.
    assert revive_dead_experts(model, batches, min_share=0.0) == []
    assert revive_dead_experts(model, batches, min_share=1.0)


def test_pretrain_init_from_with_context_masks(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    proc = _pretrain("--out", str(first), "--steps", "2", "--export", str(tmp_path / "export"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _pretrain("--out", str(second), "--steps", "6", "--init-from", str(tmp_path / "export"),
                     "--data-offset", "2", "--context-mask-fraction", "0.5", "--revive-dead-experts",
                     "--shares", "math=0.3,mc=0.3,bio=0.2,natural=0.1,drill=0.1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 7))
    assert any(x["masked_k_hat"] is not None for x in lines) and any(x["masked_k_hat"] is None for x in lines)
    assert {x["mask_kind"] for x in lines} <= {None, "ema", "segment", "segment-sampled"}
    cfg = json.loads((second / "config.json").read_text())
    assert cfg["init_from"] == str(tmp_path / "export") and cfg["shares"]["drill"] == 0.1


def test_pretrain_rejects_bad_shares(tmp_path):
    proc = _pretrain("--out", str(tmp_path / "x"), "--steps", "1", "--shares", "math=0.5,poetry=0.5")
    assert proc.returncode != 0 and "poetry" in proc.stderr


def test_bad_continued_pretraining_settings_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match="context_mask_fraction must be in"):
        PretrainConfig(context_mask_fraction=1.5)
    with pytest.raises(ValueError, match="context_mask_decay"):
        PretrainConfig(context_mask_decay=1.0)
    other = tmp_path / "mixtral"
    tiny_model("mixtral", seed=0).save_pretrained(other)
    out = tmp_path / "run"
    proc = _pretrain("--out", str(out), "--steps", "1", "--init-from", str(other))
    assert proc.returncode != 0 and "'mixtral' model" in proc.stderr
    assert not out.exists()
    with pytest.raises(ValueError, match=r"k̂ values \[40\] are outside \[k̃, N\] = \[4, 32\]"):
        pretrain(out, PretrainConfig(context_mask_fraction=0.5, context_mask_k_hats=(16, 40)))
    assert not out.exists()
