"""`temoe info MODEL`: MoE facts of a model (layers, experts, top-k, parameter counts, expert memory at k̂)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="print MoE facts of a model: layers, experts, top-k, parameters, expert memory at k̂",
        description="MODEL is 'tiny' (the embedded model), a local Hugging Face directory, "
        "'tiny-random:<model_type>' or 'gpt-oss-20b-random'.",
    )
    p.add_argument("model", help="'tiny', a local HF model directory or 'tiny-random:<model_type>'")
    p.add_argument("--k-hat", type=int, default=None, help="allowed experts k̂ per layer (default: N/2)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def model_info(model, k_hat: int | None = None) -> dict:
    """MoE facts of a loaded model; expert memory = routed experts' parameter bytes, all MoE layers."""
    import temoe

    handle = temoe.wrap(model)
    try:
        n, k, layers = handle.num_experts, handle.top_k, handle.num_layers
        k_hat = n // 2 if k_hat is None else k_hat
        if not k <= k_hat <= n:
            raise ValueError(
                f"--k-hat {k_hat} is out of range; need top_k = {k} <= k_hat <= num_experts = {n}"
            )
        total = sum(p.numel() for p in model.parameters())
        expert_params = sum(p.numel() for e in handle.experts for p in e.parameters())
        expert_bytes = sum(p.numel() * p.element_size() for e in handle.experts for p in e.parameters())
        return {
            "model_type": handle.model_type,
            "num_layers": layers,
            "num_experts": n,
            "top_k": k,
            "k_hat": k_hat,
            "total_params": total,
            "expert_params": expert_params,
            "non_expert_params": total - expert_params,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "expert_bytes_all": expert_bytes,
            # Experts are equal-sized, so k̂ of N resident experts per layer take k̂/N of the expert bytes.
            "expert_bytes_at_k_hat": expert_bytes * k_hat // n,
            "expert_bytes_saved_fraction": 1 - k_hat / n,
        }
    finally:
        handle.unwrap()


def run(args: argparse.Namespace) -> int:
    from temoe.loading import load_model

    model, _ = load_model(args.model)
    info = model_info(model, args.k_hat)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value:,}" if isinstance(value, int) else f"{key:<{width}}  {value}")
    return 0
