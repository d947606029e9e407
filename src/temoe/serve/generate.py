"""Token-level generation through the offloading engine: `decode_steps` (one request as a generator of tokens,
used by the server to interleave requests) and `generate_offloaded` (one prompt, text and statistics out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from transformers import DynamicCache

from temoe.rollout.sampling import sample_next
from temoe.rollout.text import encode_prompt
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.stats import TokenTimer


def decode_steps(
    engine: OffloadEngine,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    masks=None,
    stream: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    on_prefill_done: Callable[[], None] | None = None,
) -> Iterator[int]:
    """Generate up to `max_new_tokens` for one sequence input_ids (1, S) through `engine`, yielding token ids.

    Each `next()` runs one forward call (the prefill, then one cached decode step), so a scheduler can
    interleave several requests token by token; the engine keeps the union of their options resident.
    `masks`: routing masks or a MaskFn (option/static/full), None for the base router (lru/full).
    `on_prefill_done` runs after the prompt's forward (a controller marks its first generated position there).
    The caller must `engine.release(stream)` when done (also on early exit).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, S), got {tuple(input_ids.shape)}")
    model = engine.handle.model
    cache = DynamicCache(config=model.config)
    x = input_ids.to(engine.device)
    for step in range(max_new_tokens):
        # Grad mode is entered per step, never held across a `yield`: the server interleaves several of these
        # generators on one thread, and a context held across yields would be restored out of order.
        with torch.inference_mode():
            with engine.step(stream, masks, batch_shape=(1, x.shape[1]), prefill=step == 0):
                logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1]  # (1, V)
            if step == 0 and on_prefill_done is not None:
                on_prefill_done()
            x = sample_next(logits, temperature, top_p, generator)[:, None]  # (1, 1)
        if step > 0:
            engine.decode_tokens += 1
        engine.last_cache = cache
        token = int(x)  # the one host read of a decode step outside the MoE layers; the stop check uses it
        yield token
        if eos_token_id is not None and token == eos_token_id:
            return


def resolve_masks(
    handle, controller=None, masks=None, *, temperature: float = 0.0, generator: torch.Generator | None = None
):
    """(masks_or_mask_fn, k_hat, controller_state) from either a controller or explicit masks."""
    if controller is not None and masks is not None:
        raise ValueError("pass either controller or masks, not both")
    if controller is not None:
        state = controller.new_state(1, generator=generator, mode="greedy" if temperature <= 0 else "sample")
        return controller.mask_fn(state), controller_k_hat(controller), state
    if masks is None:
        return None, None, None
    if callable(masks):
        return masks, None, None
    return masks, int(masks.sum(-1).max()), None


def controller_k_hat(controller) -> int:
    """k̂ of an OptionController (its config field)."""
    return int(controller.k_hat)


def generate_offloaded(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    controller=None,
    masks=None,
    expert_budget: int | None = None,
    mode: str = "option",
    device=None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stream_callback: Callable[[str], None] | None = None,
    handle=None,
    generator: torch.Generator | None = None,
    sim_bandwidth_gbps: float | None = None,
    chat_template: bool = True,
) -> tuple[str, dict]:
    """Generate from `prompt` with only `expert_budget` experts per MoE layer on `device`; returns
    (text, stats).

    mode: "option" (resident set = the current option; routing masks come from `controller` or `masks`),
    "lru" (reactive cache of the routed experts, base router unless `masks`), "full" (all experts resident).
    expert_budget: slots per layer; defaults to k̂ in option mode and is required in lru mode.
    masks: bool (L, N) / (1, L, N) or a MaskFn (see `MoEHandle.restrict`). stats: flat `serve/*` metrics
    (docs/serving.md). The model is restored (experts back in their parameters) before returning.
    `handle`: an existing `temoe.wrap(model)` handle; otherwise the model is wrapped here and unwrapped after.
    `chat_template`: encode the prompt with the tokenizer's chat template when it has one (`encode_prompt`,
    the encoder every command uses).
    """
    import temoe

    if mode not in ("option", "lru", "full"):
        raise ValueError(f"mode must be one of option, lru, full; got {mode!r}")
    own_handle = handle is None
    if own_handle:
        try:
            handle = temoe.wrap(model)
        except RuntimeError as err:
            raise RuntimeError(
                f"{err}; pass its handle as generate_offloaded(..., handle=handle) (e.g. the one "
                "returned by temoe.inference.load_for_inference)"
            ) from None
    try:
        route, k_hat, state = resolve_masks(
            handle, controller, masks, temperature=temperature, generator=generator
        )
        if mode == "option":
            if route is None:
                raise ValueError(
                    "mode='option' needs a controller or masks; use mode='lru' or 'full' for the base router"
                )
            expert_budget = expert_budget or k_hat
            if expert_budget is None:
                raise ValueError("mode='option' with a MaskFn needs expert_budget (k̂)")
        if mode == "lru" and expert_budget is None:
            raise ValueError("mode='lru' needs expert_budget (experts per layer kept on the device)")
        policy = make_policy(mode, handle.num_layers, handle.num_experts, expert_budget=expert_budget)
        engine = OffloadEngine(handle, policy, device=device, sim_bandwidth_gbps=sim_bandwidth_gbps)
        try:
            text, stats = _run_one(
                engine,
                tokenizer,
                prompt,
                max_new_tokens,
                route,
                state,
                temperature,
                top_p,
                generator,
                stream_callback,
                chat_template,
            )
        finally:
            engine.release(0)
            engine.detach()
        stats.update(
            {
                "serve/mode": mode,
                "serve/expert_budget": policy.num_slots,
                "serve/controller": controller is not None,
            }
        )
        return text, stats
    finally:
        if own_handle:
            handle.unwrap()


def _run_one(
    engine, tokenizer, prompt, max_new_tokens, route, state, temperature, top_p, generator, stream_callback,
    chat_template=True,
) -> tuple[str, dict]:
    input_ids = torch.tensor([encode_prompt(tokenizer, prompt, chat_template)])  # (1, P)
    timer = TokenTimer(prompt_tokens=input_ids.shape[1])
    begin = getattr(state, "begin_generation", None)
    tokens: list[int] = []
    emitted = ""
    for token in decode_steps(
        engine,
        input_ids,
        max_new_tokens,
        masks=route,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        eos_token_id=tokenizer.eos_token_id,
        on_prefill_done=begin,
    ):
        timer.token()
        tokens.append(token)
        if stream_callback is not None:
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if len(text) > len(emitted) and not text.endswith("\ufffd"):  # wait for complete UTF-8 characters
                stream_callback(text[len(emitted) :])
                emitted = text
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if stream_callback is not None and len(text) > len(emitted):
        stream_callback(text[len(emitted) :])
    stats = timer.summary()
    stats.update(engine.summary())
    stats.update(engine.memory_report(getattr(engine, "last_cache", None)))
    stats["serve/token_ids"] = tokens
    return text, stats
