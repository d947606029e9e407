"""Two CPU processes (gloo) through `accelerate launch`: the run completes and the replicas stay in sync."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.slow
def test_two_process_accelerate_launch_keeps_replicas_in_sync(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    # accelerate's --cpu path needs MPI for several processes; --multi_gpu with ACCELERATE_USE_CPU=1 runs
    # torchrun with the gloo backend on CPU (DistributedType.MULTI_CPU).
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        str(worker),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = load_file(str(tmp_path / "params_rank0.safetensors"))
    b = load_file(str(tmp_path / "params_rank1.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"replicas differ at {k}")
    # the two processes sampled different rollouts (different prompts and RNG streams) ...
    m0 = torch.load(tmp_path / "metrics_rank0.pt")
    # ... and logged the same globally reduced metrics; only the main process wrote metrics.jsonl
    m1 = torch.load(tmp_path / "metrics_rank1.pt")
    assert m0[-1]["rollout/reward"] == m1[-1]["rollout/reward"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    # the held-out probes ran on both processes (2 prompts each) and were gathered into one record per probe
    probes = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes] == [0, 1, 2]
    assert all(len(p["fixed_kl_per_prompt"]) == len(p["reward_per_prompt"]) == 4 for p in probes)
    # the step changed the weights (the sync is not trivially "nothing moved")
    assert any("lora_B" in k and bool(a[k].abs().sum() > 0) for k in a)
