"""Opening a run directory is as safe as opening a safetensors file: no code runs from a checkpoint, the
`latest` pointer stays inside the run, and a damaged file is named with the previous good checkpoint."""

import json
import os
import shutil

import pytest
import torch

from temoe.inference import CheckpointError, _sha256, load_for_inference, resolve_checkpoint
from temoe.testing import TINY_TRAIN, tiny_model
from temoe.train.checkpoint import save_checkpoint
from temoe.train.config import load_config
from temoe.train.trainer import train


def _config(out, **kw):
    return load_config(None, {**TINY_TRAIN, "steps": 2, "checkpoint_every": 1, "keep_checkpoints": 0,
                              "out_dir": str(out), **kw})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine") / "run"
    train(_config(out))
    return out


@pytest.fixture
def run(pristine, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(pristine, out)
    return out


class _Payload:
    """Unpickling this creates `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _plant(ckpt, name, obj):
    """Replace `ckpt/name` with `obj` and re-sign meta.json, as an attacker who controls the files can."""
    torch.save(obj, ckpt / name)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = _sha256(ckpt / name)
    (ckpt / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["optimizers.pt", "rng_rank0.pt"])
def test_a_pickle_payload_in_a_checkpoint_never_runs_on_resume(run, tmp_path, name):
    marker = tmp_path / "pwned"
    _plant(run / "checkpoints" / "step_000002", name, {"controller": _Payload(marker)})
    with pytest.raises(CheckpointError, match=f"{name} holds objects other than tensors"):
        train(_config(run, steps=3), resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("pointer", ["../../..", "/tmp", "step_000002/../../..", "step_x"])
def test_latest_may_only_name_a_step_directory_of_the_run(run, pointer):
    (run / "checkpoints" / "latest").write_text(pointer + "\n")
    with pytest.raises(CheckpointError, match="not a step_NNNNNN directory"):
        resolve_checkpoint(run)


def test_latest_symlinked_out_of_the_run_is_refused(run, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(run / "checkpoints" / "step_000002", outside)
    (run / "checkpoints" / "step_000009").symlink_to(outside)
    (run / "checkpoints" / "latest").write_text("step_000009\n")
    with pytest.raises(CheckpointError, match="not a step_NNNNNN directory"):
        resolve_checkpoint(run)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_last_byte(path):  # tensor data sits at the end of a safetensors file: a header-valid corruption
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_last_byte])
@pytest.mark.parametrize("name", ["controller.safetensors", "adapter/adapter_model.safetensors",
                                  "optimizers.pt"])
def test_a_damaged_file_is_named_with_the_previous_good_checkpoint(run, damage, name):
    damaged = run / "checkpoints" / "step_000002" / name
    damage(damaged)
    previous = run / "checkpoints" / "step_000001"
    with pytest.raises(CheckpointError, match=f"{damaged}.*previous good checkpoint is {previous}"):
        load_for_inference(tiny_model("gpt_oss", seed=0), run)
    with pytest.raises(CheckpointError, match=str(damaged)):
        train(_config(run, steps=3), resume=True)
    load_for_inference(tiny_model("gpt_oss", seed=0), previous)  # the suggested checkpoint does load


def test_a_missing_file_is_named(run):
    (run / "checkpoints" / "step_000002" / "routers.safetensors").unlink()
    with pytest.raises(CheckpointError, match="routers.safetensors is missing"):
        load_for_inference(tiny_model("gpt_oss", seed=0), run)


def test_a_controller_with_nan_is_never_saved(tmp_path):
    controller = torch.nn.Linear(2, 2)
    with torch.no_grad():
        controller.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values in 1 of 2 tensors \(weight\)"):
        save_checkpoint(tmp_path, 1, peft_model=None, handle=None, controller=controller, optimizers={},
                        generators={}, train_config=None, controller_config=None, accelerator=None)
    assert not (tmp_path / "checkpoints").exists()


def test_the_embedded_pretraining_checkpoint_never_runs_code(tmp_path):
    from temoe.embedded.pretrain import load_checkpoint

    marker = tmp_path / "pwned"
    torch.save({"model": {}, "step": _Payload(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt holds objects other than tensors"):
        load_checkpoint(tmp_path / "checkpoint.pt", "cpu")
    assert not marker.exists()
    torch.save({"model": {"w": torch.ones(2)}, "step": 3, "config": {"lr": 1e-3}}, tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt", "cpu")["step"] == 3
