"""LoRA setup: adapters on experts + attention, trainable routers, a teacher equal to the original model."""

import torch

import temoe
from temoe.moe.lora import add_lora, snapshot_routers, teacher_mode
from temoe.testing import tiny_model


def _ids():
    return torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))


def test_add_lora_targets_and_trainable_set():
    model = tiny_model("gpt_oss", seed=0)
    handle = temoe.wrap(model)
    pm = add_lora(model, handle, rank=4, alpha=4)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert any("experts" in n and "lora_A" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable)
    assert {n for n in trainable if "router" in n} == {n for n, _ in pm.named_parameters() if "router" in n}
    assert all(("lora_" in n) or ("router" in n) for n in trainable)


def test_teacher_mode_is_the_original_model_after_training_changes():
    model = tiny_model("gpt_oss", seed=0)
    ids = _ids()
    with torch.no_grad():
        reference = model(ids).logits.clone()
    handle = temoe.wrap(model)
    pm = add_lora(model, handle, rank=4, alpha=4)
    original = snapshot_routers(handle)
    # Simulate training: perturb every trainable tensor (LoRA B and routers).
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
        student = pm(ids).logits
        assert not torch.allclose(student, reference)
        with teacher_mode(pm, handle, original):
            teacher = pm(ids).logits
        after = pm(ids).logits
    torch.testing.assert_close(teacher, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, student, rtol=0, atol=0)  # student restored on exit
