"""`temoe serve`: OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models, /v1/stats)
over the offloading engine. See docs/serving.md.

Residency: without --offload every expert is resident (full). With --offload and --checkpoint the trained
controller's options decide residency (--expert-budget slots per layer, default k̂; concurrent requests are
capped at budget // k̂ because the union of their options must fit). With --offload and no checkpoint the base
router runs with an LRU cache of --expert-budget experts per layer.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from temoe.validation import PORT, POSITIVE_INT


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible server with expert offloading",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="`tiny`, a local HF directory, tiny-random:<model_type>, or gpt-oss-20b-random",
    )
    p.add_argument("--checkpoint", help="controller checkpoint directory (temoe train output)")
    p.add_argument(
        "--offload", action="store_true", help="keep only --expert-budget experts per layer on device"
    )
    p.add_argument(
        "--expert-budget",
        type=POSITIVE_INT.arg,
        help="expert slots per MoE layer (default k̂ with a checkpoint)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT.arg, default=8000)
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument(
        "--num-layers",
        type=POSITIVE_INT.arg,
        help="shrink tiny-random / gpt-oss-20b-random models to N layers",
    )
    p.add_argument(
        "--max-active",
        type=POSITIVE_INT.arg,
        help="concurrent requests (default: budget // k̂ in option mode, else 4)",
    )
    p.add_argument("--max-queue", type=POSITIVE_INT.arg, default=16, help="waiting requests before HTTP 429")
    p.add_argument(
        "--max-body-bytes",
        type=POSITIVE_INT.arg,
        help="largest request body accepted, HTTP 413 beyond (default 2 MiB)",
    )
    p.add_argument(
        "--chat-template",
        help="Jinja chat template file for a tokenizer without one (the embedded `tiny` model "
        "gets a plain one: the messages' contents, one per line)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TEMOE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every /v1 request (default: $TEMOE_API_KEY)",
    )
    p.add_argument("--served-name", help="model id clients send (default: --model)")
    p.set_defaults(func=run)


def build_engine(args):
    """(engine, tokenizer, controller) for the serve/generate flags."""
    import torch

    import temoe
    from temoe.loading import GPT_OSS_20B_RANDOM
    from temoe.serve.engine import OffloadEngine, make_policy

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The offloading engine places the weights itself; only the random gpt-oss-20b is built on the device.
    on_device = device if args.model.startswith(GPT_OSS_20B_RANDOM) else None
    model, tokenizer = temoe.load_model(args.model, device=on_device, num_layers=args.num_layers)
    controller = None
    if args.checkpoint:
        from temoe.inference import load_for_inference

        model, handle, controller = load_for_inference(model, args.checkpoint)
    else:
        handle = temoe.wrap(model)
    if not args.offload:
        if args.expert_budget is not None:
            raise ValueError("--expert-budget needs --offload")
        mode, budget = "full", None
    elif controller is not None:
        mode, budget = "option", args.expert_budget or controller.k_hat
        if budget < controller.k_hat:
            raise ValueError(f"--expert-budget {budget} is below the controller's k̂={controller.k_hat}")
    else:
        if args.expert_budget is None:
            raise ValueError(
                "--offload without --checkpoint runs the base router with an LRU cache: "
                "pass --expert-budget N"
            )
        mode, budget = "lru", args.expert_budget
    policy = make_policy(mode, handle.num_layers, handle.num_experts, expert_budget=budget)
    engine = OffloadEngine(handle, policy, device=device)
    if controller is not None:
        controller.to(device)
    return engine, tokenizer, controller


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    import uvicorn

    from temoe.serve.server import DEFAULT_MAX_BODY_BYTES, PLAIN_CHAT_TEMPLATE, App

    if args.chat_template:
        with open(args.chat_template, encoding="utf-8") as fh:
            template = fh.read()
    else:
        template = PLAIN_CHAT_TEMPLATE if args.model == "tiny" else None
    if not _loopback(args.host):
        print(
            f"temoe serve: warning: binding {args.host} exposes the server beyond this machine"
            + ("" if args.api_key else "; anyone who can reach it may use it (set --api-key)"),
            file=sys.stderr,
            flush=True,
        )
    engine, tokenizer, controller = build_engine(args)
    app = App(
        engine,
        tokenizer,
        args.served_name or args.model,
        controller=controller,
        max_active=args.max_active,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        chat_template=template,
        api_key=args.api_key,
    )
    print(
        f"temoe serve: {args.served_name or args.model} on http://{args.host}:{args.port}/v1 "
        f"(mode {engine.policy.name}, {engine.policy.num_slots}/{engine.num_experts} experts per layer on "
        f"{engine.device}, at most {app.max_active} concurrent requests)",
        flush=True,
    )
    uvicorn.run(app.starlette, host=args.host, port=args.port, log_level="info")
    return 0
