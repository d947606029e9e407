"""Memory and time of full training steps on a gpt-oss-20b-shaped model (target: fits on one 80 GB H100).

    python benchmarks/bench_train_step.py                                  # CUDA: the real shape, 24 layers
    python benchmarks/bench_train_step.py --num-layers 1 --batch 1 --prompt-tokens 8 --new-tokens 4  # CPU

Runs `temoe.train.train` with the shipped `gpt-oss-20b` config (the paper's settings: LoRA rank 16 on experts
and attention, trainable routers, 1024-wide controllers, bf16 with float32 RL arithmetic, micro-batches of 1
in the replay) on `gpt-oss-20b-random[:LAYERS]`: the real gpt-oss-20b dimensions (hidden 2880, 32 experts,
top-4, vocab 201,088) with random bf16 weights, built directly on the device, so nothing is downloaded.
Prompts are random character strings of exactly `--prompt-tokens` tokens (character tokenizer, no chat
template); random weights rarely emit EOS, so every response runs the full `--new-tokens` (the worst case
for memory). Prints the per-step time, rollout throughput and the peak CUDA memory, with the command and
hardware. `--gradient-checkpointing` is on by default as in the shipped config.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import string
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-layers", type=int, default=None, help="cut the model to this many layers (CPU)")
    p.add_argument("--batch", type=int, default=4, help="prompts per step (the paper: 16 over 4 GPUs)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="§5: prompts of at most 512 tokens")
    p.add_argument("--new-tokens", type=int, default=512, help="§5: responses of at most 512 tokens")
    p.add_argument("--steps", type=int, default=2, help="the first step includes warm-up; read the last")
    p.add_argument("--micro-batch-size", type=int, default=1, help="sequences per replay forward/backward")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--out", default="runs/bench_train_step")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from temoe.train.config import load_config
    from temoe.train.trainer import train

    cuda = torch.cuda.is_available()
    if not cuda and args.num_layers is None:
        raise SystemExit("no CUDA device: the full 24-layer model (~42 GB bf16) needs a GPU; pass "
                         "--num-layers 1 for a CPU smoke run")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    alphabet = string.ascii_lowercase + " "
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(
        json.dumps({"prompt": "".join(rng.choice(alphabet) for _ in range(args.prompt_tokens))}) + "\n"
        for _ in range(max(args.batch * args.steps, 8))))
    model = "gpt-oss-20b-random" + ("" if args.num_layers is None else f":{args.num_layers}")
    config = load_config("gpt-oss-20b", {
        "model": model, "prompts": str(prompts), "out_dir": str(out / "run"), "steps": args.steps,
        "prompts_per_step": args.batch, "max_prompt_tokens": args.prompt_tokens + 8,
        "max_new_tokens": args.new_tokens, "micro_batch_size": args.micro_batch_size, "chat_template": False,
        "checkpoint_every": 0, "eval_every": 0, "gradient_checkpointing": not args.no_gradient_checkpointing,
        "mixed_precision": "bf16" if cuda else "no",
    })
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else float("nan")
    device = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"hardware: {device}, torch {torch.__version__}; model {model} (hidden 2880, 32 experts, top-4), "
          f"k̂ = {config.controller.k_hat}, batch {args.batch} x ({args.prompt_tokens} prompt + "
          f"{args.new_tokens} new "
          f"tokens), micro-batch {args.micro_batch_size}, gradient checkpointing "
          f"{not args.no_gradient_checkpointing}, "
          f"total wall {wall:.0f} s (model build and checkpoint included)")
    print(f"{'step':>5}{'step s':>10}{'rollout tok/s':>15}{'tokens':>9}")
    for r in result.metrics:
        tokens = r["rollout/response_tokens"] * args.batch
        print(f"{r['step']:>5}{r['perf/step_s']:>10.1f}{r['perf/rollout_tokens_per_s']:>15.1f}{tokens:>9.0f}")
    print(f"peak CUDA memory: {peak:.1f} GiB allocated, {reserved:.1f} GiB reserved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
