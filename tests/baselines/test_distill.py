"""Self-distillation baselines: the recency reward by hand; router-only fine-tuning changes only the routers;
static-mask LoRA distillation changes only LoRA and router weights; both move what they train."""

import pytest
import torch

import temoe
from temoe.baselines.distill import DistillConfig, recency_reward, train_recency, train_static_distill
from temoe.testing import tiny_model

SEQUENCES = [[1, 5, 9, 13, 17, 21, 25], [1, 40, 41, 42], [1, 7, 7, 7, 7, 7]]
CFG = DistillConfig(steps=2, batch_size=2, lr=1e-2)


def test_recency_reward_by_hand():
    # One layer, one sequence, S = 3, N = 2. s=1: p = softmax(0, 0) = (0.5, 0.5), predecessor routed 0 -> 0.5.
    # s=2: p = softmax(ln 3, 0) = (0.75, 0.25), predecessor routed 1 -> 0.25. Mean 0.375.
    logits = torch.tensor([[[[5.0, 0.0], [0.0, 0.0], [float(torch.log(torch.tensor(3.0))), 0.0]]]])
    ids = torch.tensor([[[[0], [1], [0]]]])
    assert float(recency_reward(logits, ids, torch.ones(1, 3, dtype=torch.bool))) == pytest.approx(0.375)
    # Position 2 is padding: only s = 1 counts.
    valid = torch.tensor([[True, True, False]])
    assert float(recency_reward(logits, ids, valid)) == pytest.approx(0.5)


def _snapshot(model):
    return [(p, p.detach().clone()) for p in model.parameters()]


def test_recency_trains_only_the_routers():
    handle = temoe.wrap(tiny_model("gpt_oss", seed=5))
    before = _snapshot(handle.model)
    routers = {id(p) for r in handle.routers for p in r.parameters()}
    stats = train_recency(handle, SEQUENCES, DistillConfig(steps=2, batch_size=2, lr=1e-2, recency=1.0))
    assert "loss/recency_reward" in stats[-1]
    changed = {id(p) for p, old in before if not torch.equal(p.detach(), old)}
    assert changed and changed <= routers


def test_static_distill_trains_only_lora_and_routers():
    handle = temoe.wrap(tiny_model("mixtral", seed=5))
    before = _snapshot(handle.model)
    routers = {id(p) for r in handle.routers for p in r.parameters()}
    masks = torch.zeros(handle.num_layers, handle.num_experts, dtype=torch.bool)
    masks[:, :4] = True
    peft_model, stats = train_static_distill(handle, SEQUENCES, masks, CFG, rank=4, alpha=4.0)
    changed_base = {id(p) for p, old in before if not torch.equal(p.detach(), old)}
    assert changed_base <= routers  # no original weight moves except the trainable routers
    lora = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora and any(bool(p.detach().abs().sum() > 0) for p in lora)  # lora_B starts at 0 and moved
    assert all(torch.isfinite(torch.tensor(s["loss/token_kl"])) for s in stats)


@pytest.mark.parametrize("method", ["recency", "static-distill"])
def test_peer_source_trains_then_restores_the_model(method, tokenizer):
    from temoe.baselines.calibration import CalibrationConfig
    from temoe.baselines.peers import peer_source

    handle = temoe.wrap(tiny_model("gpt_oss", seed=6))
    ids = torch.tensor([[1, 9, 8, 7, 6]])
    with torch.no_grad():
        reference = handle.model(input_ids=ids).logits
    calibration = CalibrationConfig(num_prompts=2, max_total_tokens=12, batch_size=2)
    with peer_source(method, handle, tokenizer, 4, distill=CFG, calibration=calibration) as source:
        assert source.name == method and source.residency == ("lru" if method == "recency" else "static")
        with torch.no_grad():
            assert not torch.equal(handle.model(input_ids=ids).logits, reference)  # training changed it
    with torch.no_grad():
        torch.testing.assert_close(handle.model(input_ids=ids).logits, reference, rtol=0, atol=0)
