"""Checkpoints: layout, atomic writes, load_for_inference, and clear errors on a mismatched model."""

import pytest
import torch

from temoe.inference import load_for_inference, read_meta, resolve_checkpoint
from temoe.testing import TINY_TRAIN, tiny_model
from temoe.train.config import load_config
from temoe.train.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(
        load_config(
            None,
            {**TINY_TRAIN, "steps": 2, "checkpoint_every": 1, "keep_checkpoints": 1, "out_dir": str(out)},
        )
    )
    return out, result


def test_layout_latest_and_no_partial_directories(trained):
    out, _ = trained
    ckpt = resolve_checkpoint(out)
    assert ckpt.name == "step_000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000002"]  # keep=1
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "meta.json",
        "controller.safetensors",
        "routers.safetensors",
        "adapter",
        "optimizers.pt",
        "rng_rank0.pt",
    } <= names
    meta = read_meta(ckpt)
    assert meta["step"] == 2 and meta["model"]["num_experts"] == 8 and meta["controller_config"]["k_hat"] == 4


def test_load_for_inference_restores_controller_routers_and_merged_lora(trained):
    out, result = trained
    model, handle, controller = load_for_inference(tiny_model("gpt_oss", seed=0), out)
    for a, b in zip(controller.state_dict().values(), result.controller.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for r_new, r_old in zip(handle.routers, result.handle.routers):
        torch.testing.assert_close(r_new.weight, r_old.weight, rtol=0, atol=0)
    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = model(ids).logits
        result.model.eval()
        adapted = result.model(ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_wrong_shape_or_architecture_fails_naming_the_difference(trained):
    out, _ = trained
    with pytest.raises(ValueError, match="num_experts: checkpoint 8 vs model 16"):
        load_for_inference(tiny_model("gpt_oss", seed=0, num_local_experts=16), out)
    with pytest.raises(ValueError, match="model_type 'gpt_oss'.*'mixtral'"):
        load_for_inference(tiny_model("mixtral", seed=0), out)
