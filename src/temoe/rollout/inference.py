"""Inference generation with temporally extended routing: one prompt, KV cache, the trained controller online.

Without a controller the model routes freely and the reported switch rate is the base model's (§2, router as
option policy with k̂ = k̃ by default). Shapes: P prompt tokens, T generated tokens, L MoE layers, N experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from temoe.controller import OptionController
from temoe.metrics import router_switch_rate, switch_rate
from temoe.rollout.sampling import nucleus


@dataclass
class Generation:
    """Result of `generate_text`."""

    text: str
    token_ids: list[int]
    switch_rate: float
    """§2 switch rate over the generated positions (controller: its option masks; base: the router's options
    with k̂ = `k_hat`, k̃ by default). NaN with fewer than 2 generated tokens."""
    num_tokens: int


def encode_prompt(tokenizer, text: str, chat_template: bool) -> list[int]:
    """Token ids of one prompt: a user turn plus the generation prompt if the tokenizer has a template."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in some tokenizer versions
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def _next_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """logits (1, V) -> (1,) greedy at temperature 0, else a draw from the tempered nucleus."""
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = nucleus(torch.softmax(logits.float() / temperature, dim=-1), top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_text(
    model,
    tokenizer,
    handle,
    prompt: str,
    max_new_tokens: int,
    *,
    controller: OptionController | None = None,
    controller_mode: str = "sample",
    temperature: float = 0.5,
    top_p: float = 0.95,
    seed: int = 42,
    chat_template: bool = True,
    k_hat: int | None = None,
) -> Generation:
    """Generate from `prompt` with the controller deciding online per token and layer (or the plain router).

    Defaults follow the paper's evaluation (§5: temperature 0.5, top-p 0.95, seed 42).
    """
    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, prompt, chat_template)], device=device)  # (1, P)
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list | tuple) else [eos])
    state = None
    if controller is not None:
        state = controller.new_state(1, generator, mode=controller_mode, record_hidden=False)
        restrict = lambda: handle.restrict(controller.mask_fn(state))  # noqa: E731
    else:
        from contextlib import nullcontext

        restrict = nullcontext
    out_ids: list[int] = []
    with handle.trace() as trace:
        with restrict():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        if state is not None:
            state.begin_generation()
        cache = out.past_key_values
        for t in range(max_new_tokens):
            if t > 0:
                with restrict():
                    out = model(
                        input_ids=torch.tensor([[out_ids[-1]]], device=device),
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                cache = out.past_key_values
            token = int(_next_token(out.logits[:, -1], temperature, top_p, generator))
            out_ids.append(token)
            if token in eos_ids:
                break
    n = len(out_ids)
    if n < 2:
        rate = float("nan")
    elif state is not None:
        rate = switch_rate(state.option_masks()[0, :n])  # (T, L, N) option masks of the generated tokens
    else:
        # Trace rows: the prompt call (P rows), then one row per decode call; controlled position t = 0 is
        # the last prompt row. (T, L, N) logits and (T, L, k) ids over the generated positions.
        P = ids.shape[1]
        rows = slice(P - 1, P - 1 + n)
        logits = torch.stack([trace.router_logits(i)[rows] for i in range(handle.num_layers)], dim=1)
        routed = torch.stack([trace.expert_ids(i)[rows] for i in range(handle.num_layers)], dim=1)
        rate = router_switch_rate(logits, routed, k_hat or handle.top_k)
    text = tokenizer.decode(out_ids, skip_special_tokens=True)
    return Generation(text=text, token_ids=out_ids, switch_rate=float(rate), num_tokens=n)
