"""Rollout throughput: the online controller vs plain `model.generate` (same model, batch and length).

    PYTHONPATH=src python benchmarks/bench_rollout.py --model tiny --batch 8 --new-tokens 64 --k-hat 16

Rows (tokens/s = batch × new tokens / wall time, best of --repeats):
  hf_generate          `model.generate` (sampling, KV cache), no hooks
  loop_no_controller   our cached decode loop, router hooks installed but no mask (the loop's own cost)
  loop_controller      the same loop under `handle.restrict(controller.mask_fn(state))`: the controller
                       decides
                       per token and layer (what `temoe generate` and the student half of a rollout do)
  train_rollout        `temoe.rollout.rollout`: student + teacher (two cached forwards per token) + mixing
Controller overhead per decode step = (loop_controller − loop_no_controller) / new tokens.
Target: loop_controller ≥ 0.8 × hf_generate (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import nullcontext

import torch


def _load(name: str):
    if name.startswith("testing:"):
        from temoe.testing import tiny_model

        return tiny_model(name.split(":", 1)[1], seed=0)
    import temoe

    return temoe.load_model(name)[0]


@torch.no_grad()
def _loop(model, ids, new_tokens, restrict, begin, generator):
    """Prefill + (new_tokens − 1) cached decode steps, sampling at temperature 1."""
    with restrict():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    begin()
    cache = out.past_key_values
    for t in range(new_tokens):
        probs = torch.softmax(out.logits[:, -1].float(), dim=-1)
        tok = torch.multinomial(probs, 1, generator=generator)
        if t == new_tokens - 1:
            break
        with restrict():
            out = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--k-hat", type=int, default=None, help="default N/2")
    p.add_argument("--controller-hidden", type=int, default=1024)
    p.add_argument("--selection-context-decay", type=float, default=0.0,
                   help="ControllerConfig.selection_context_decay (the tiny trainer config uses 0.9)")
    p.add_argument("--termination-demand", type=float, default=0.0,
                   help="ControllerConfig.termination_demand (the tiny config: 20, threshold 0.6)")
    p.add_argument("--termination-demand-threshold", type=float, default=0.6)
    p.add_argument("--termination-bias-init", type=float, default=-3.0,
                   help="ControllerConfig.termination_bias_init (the tiny config: 0, with the demand term)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import temoe
    from temoe.controller import ControllerConfig, OptionController
    from temoe.moe.lora import add_lora, snapshot_routers, teacher_mode
    from temoe.rollout.generate import rollout

    model = _load(args.model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (args.batch, args.prompt_tokens), generator=g)
    B, T = args.batch, args.new_tokens

    def hf():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            max_new_tokens=T,
            min_new_tokens=T,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
        )

    t_hf = _best(hf, args.repeats)
    handle = temoe.wrap(model)
    k_hat = args.k_hat or handle.num_experts // 2
    controller = OptionController.from_handle(
        handle, ControllerConfig(k_hat=k_hat, hidden=args.controller_hidden,
                                 selection_context_decay=args.selection_context_decay,
                                 termination_demand=args.termination_demand,
                                 termination_demand_threshold=args.termination_demand_threshold,
                                 termination_bias_init=args.termination_bias_init)
    )
    t_plain = _best(lambda: _loop(model, ids, T, nullcontext, lambda: None, g), args.repeats)

    def with_controller():
        state = controller.new_state(B, g, mode="sample", record_hidden=False)
        _loop(model, ids, T, lambda: handle.restrict(controller.mask_fn(state)), state.begin_generation, g)

    t_ctrl = _best(with_controller, args.repeats)
    peft_model = add_lora(model, handle)
    original = snapshot_routers(handle)
    mask = torch.ones_like(ids, dtype=torch.bool)
    t_roll = _best(
        lambda: rollout(
            peft_model,
            handle,
            controller,
            lambda: teacher_mode(peft_model, handle, original),
            ids,
            mask,
            max_new_tokens=T,
            tau=0.2,
            temperature=1.0,
            top_p=0.95,
            eos_token_ids=[-1],
            pad_token_id=0,
            generator=g,
        ),
        args.repeats,
    )
    n = B * T
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(
        f"hardware: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, model {args.model} "
        f"(L={handle.num_layers}, N={handle.num_experts}, "
        f"k={handle.top_k}), k̂={k_hat}, controller hidden {args.controller_hidden}, batch {B}, "
        f"prompt {args.prompt_tokens}, new tokens {T}"
    )
    print(f"{'path':<22}{'tokens/s':>12}{'vs hf_generate':>16}")
    for name, t in (
        ("hf_generate", t_hf),
        ("loop_no_controller", t_plain),
        ("loop_controller", t_ctrl),
        ("train_rollout", t_roll),
    ):
        print(f"{name:<22}{n / t:>12.1f}{t_hf / t:>15.2f}x")
    print(
        f"controller overhead per decode step: {(t_ctrl - t_plain) / T * 1e3:.2f} ms "
        f"({(t_ctrl - t_plain) / t_plain * 100:.0f}% of the loop)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
