"""Can LoRA + routers undo a fixed expert mask, and does that carry over to new prompts?

    PYTHONPATH=src python benchmarks/bench_lora_fit.py --model tiny --k-hat 16 --steps 40

Self-distillation under one fixed random k̂-subset of experts per layer (the same subset for every token), on
fixed text: `--train-prompts` prompts of the embedded prompt file, truncated to `--max-tokens` tokens, as
teacher-forced sequences. The student is the model with LoRA (the trainer's `add_lora`: rank 16, α 16,
experts + attention, trainable routers) and the mask; the teacher is the same weights with adapters off and
the original routers (`teacher_mode`). Full-batch AdamW on the full-vocabulary KL(student ‖ teacher) per token
(`temoe.rl.token_kl_loss`, the `policy_loss=token_kl` objective). Every `--every` steps it prints the KL on
the training prompts and on `--held-out` other prompts of the same file.

This isolates the LoRA half of the method from the RL noise: if the KL on the training prompts falls but the
held-out KL does not, the adapters memorise rather than learn to compensate for the mask, and no amount of
on-policy RL with the same data budget will make the reward rise through the LoRA.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--k-hat", type=int, default=None, help="default N/2")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-prompts", type=int, default=64)
    p.add_argument("--held-out", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import temoe
    from temoe.embedded import data_path
    from temoe.moe.lora import add_lora, snapshot_routers, teacher_mode
    from temoe.rl import token_kl_loss

    model, tokenizer = temoe.load_model(args.model)
    handle = temoe.wrap(model)
    N = handle.num_experts
    k_hat = args.k_hat or N // 2
    if not handle.top_k <= k_hat <= N:
        raise SystemExit(f"--k-hat must be in [{handle.top_k}, {N}], got {k_hat}")
    original = snapshot_routers(handle)
    peft_model = add_lora(model, handle, rank=16, alpha=16.0)
    prompts = [json.loads(line)["prompt"] for line in open(data_path("prompts.jsonl")) if line.strip()]
    order = torch.randperm(len(prompts)).tolist()
    if args.train_prompts + args.held_out > len(prompts):
        raise SystemExit(f"--train-prompts + --held-out must be <= {len(prompts)} prompts")

    def batch(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = [tokenizer(prompts[i])["input_ids"][: args.max_tokens] for i in idx]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), tokenizer.pad_token_id or 0)
        attn = torch.zeros(len(enc), width, dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, width - len(e):] = torch.tensor(e)
            attn[r, width - len(e):] = 1
        return ids, attn

    train_ids, train_attn = batch(order[: args.train_prompts])
    held_ids, held_attn = batch(order[args.train_prompts: args.train_prompts + args.held_out])
    masks = torch.zeros(handle.num_layers, N, dtype=torch.bool)
    for i in range(handle.num_layers):
        masks[i, torch.randperm(N)[:k_hat]] = True

    def mask_fn(i: int, hidden: torch.Tensor) -> torch.Tensor:
        return masks[i].expand(hidden.shape[0], hidden.shape[1], N)

    with torch.no_grad(), teacher_mode(peft_model, handle, original):
        teacher_train = peft_model(input_ids=train_ids, attention_mask=train_attn).logits
        teacher_held = peft_model(input_ids=held_ids, attention_mask=held_attn).logits

    def held_kl() -> float:
        with torch.no_grad(), handle.restrict(mask_fn):
            logits = peft_model(input_ids=held_ids, attention_mask=held_attn).logits
        return float(token_kl_loss(logits, teacher_held, held_attn.bool())[0])

    params = [q for q in peft_model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rows, t0 = [], time.perf_counter()
    for step in range(args.steps + 1):
        with handle.restrict(mask_fn):
            logits = peft_model(input_ids=train_ids, attention_mask=train_attn).logits
        loss, _ = token_kl_loss(logits, teacher_train, train_attn.bool())
        if step % args.every == 0 or step == args.steps:
            rows.append((step, loss.item(), held_kl()))
        if step == args.steps:
            break
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"hardware: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model {args.model} (L={handle.num_layers}, N={N}, "
          f"k={handle.top_k}), k̂={k_hat}, lr {args.lr}, {args.train_prompts} training / {args.held_out} "
          f"held-out prompts of <= {args.max_tokens} tokens, {time.perf_counter() - t0:.0f} s")
    print(f"{'step':>6}{'KL train':>12}{'KL held-out':>14}")
    for step, train_kl, held in rows:
        print(f"{step:>6}{train_kl:>12.4f}{held:>14.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
