"""`temoe generate`: generate with temporally extended routing from a trained checkpoint (or the base router),
reporting the switch rate; `--offload` runs the expert-offloading engine (`temoe.serve.generate_offloaded`).
"""

from __future__ import annotations

import json
import math

from temoe.validation import POSITIVE_INT, SEED, TEMPERATURE, TOP_P


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a trained controller and report the switch rate")
    p.add_argument("--model", required=True, help="model name (`tiny`) or local HF directory")
    p.add_argument("--checkpoint", help="training run or checkpoint directory (omit: base model routing)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=POSITIVE_INT.arg, default=128)
    p.add_argument("--temperature", type=TEMPERATURE.arg, default=0.5,
                   help="token temperature, 0 = greedy (§5: 0.5)")
    p.add_argument("--top-p", type=TOP_P.arg, default=0.95, help="nucleus (§5: 0.95)")
    p.add_argument("--seed", type=SEED.arg, default=42)
    p.add_argument(
        "--controller-mode",
        choices=("sample", "greedy"),
        default="sample",
        help="sample d_t and options (the trained stochastic policy) or act greedily",
    )
    p.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt text")
    p.add_argument("--offload", action="store_true", help="run through the expert-offloading engine")
    p.add_argument("--expert-budget", type=POSITIVE_INT.arg,
                   help="resident experts per layer with --offload (default k̂)")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, switch_rate[, stats])")
    p.set_defaults(func=run)


def run(args) -> int:
    import temoe
    from temoe.inference import load_for_inference
    from temoe.prompts import check_fits
    from temoe.rollout.inference import generate_text
    from temoe.rollout.text import encode_prompt

    model, tokenizer = temoe.load_model(args.model)
    prompt_tokens = len(encode_prompt(tokenizer, args.prompt, not args.no_chat_template))
    check_fits(prompt_tokens, args.max_new_tokens, getattr(model.config, "max_position_embeddings", None),
               "--prompt")
    controller = None
    if args.checkpoint:
        model, handle, controller = load_for_inference(model, args.checkpoint)
    else:
        handle = temoe.wrap(model)
    record: dict = {}
    if args.offload:
        import torch

        from temoe.serve import generate_offloaded

        generator = torch.Generator().manual_seed(args.seed)
        if controller is not None:
            mode = "option"  # resident set = the current option
        else:
            mode = "lru" if args.expert_budget else "full"  # base router: LRU cache of routed experts
        text, stats = generate_offloaded(
            model,
            tokenizer,
            args.prompt,
            args.max_new_tokens,
            controller=controller,
            expert_budget=args.expert_budget,
            mode=mode,
            temperature=args.temperature,
            top_p=args.top_p,
            handle=handle,
            generator=generator,
            chat_template=not args.no_chat_template,
        )
        record = {"text": text, "switch_rate": stats.get("serve/switch_rate", float("nan")), "stats": stats}
    else:
        gen = generate_text(
            model,
            tokenizer,
            handle,
            args.prompt,
            args.max_new_tokens,
            controller=controller,
            controller_mode=args.controller_mode,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            chat_template=not args.no_chat_template,
        )
        record = {"text": gen.text, "switch_rate": gen.switch_rate, "num_tokens": gen.num_tokens}
    record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    if args.json:
        print(json.dumps(record))
    else:
        print(record["text"])
        print(f"\n[switch rate {record['switch_rate']}]")
    return 0
