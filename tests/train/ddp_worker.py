"""Run by `accelerate launch` in test_distributed.py: train two steps (selection context and held-out probes
on), write this process's parameters."""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from temoe.testing import TINY_TRAIN
from temoe.train.config import load_config
from temoe.train.trainer import train

out = Path(sys.argv[1])
config = load_config(
    None,
    {**TINY_TRAIN, "prompts_per_step": 4, "max_new_tokens": 5, "steps": 2, "checkpoint_every": 0,
     "out_dir": str(out), "controller.selection_context_decay": 0.9, "eval_every": 1, "eval_prompts": 4},
)
result = train(config)
rank = int(os.environ.get("RANK", "0"))  # the process group is closed after train()
params = {f"controller.{n}": p.detach().clone() for n, p in result.controller.named_parameters()}
params.update(
    {f"model.{n}": p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}
)
save_file({k: v.contiguous() for k, v in params.items()}, str(out / f"params_rank{rank}.safetensors"))
torch.save(result.metrics, out / f"metrics_rank{rank}.pt")
