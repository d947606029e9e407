"""Batched rollouts with the controller deciding online and teacher-mixed sampling (Alg. 2 lines 3–13).

One KV cache for the student (LoRA on, routers masked by the controller) and one for the teacher (same
weights, adapters off, original routers, unmasked routing); each generated token costs one cached decode
forward of each, never a re-prefill. Shapes: B batch, P prompt tokens (left-padded), T generated tokens,
L MoE layers, N experts, V vocab.

Time indexing follows `temoe.controller`: controlled position t is the forward position whose logits give
a_t (t = 0 is the last prompt position, with ω_0 = router top-k̂). The student's prompt forward runs under
the controller (it records ω_0 there); the teacher never sees a mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from temoe.controller import OptionController, Trajectory
from temoe.rl.reward import kl_reward
from temoe.rollout.sampling import forced_sample, mixed_sample


@dataclass
class RolloutBatch:
    """B rollouts. Per-token tensors are (B, T) float32 unless stated; 0 where `valid` is False."""

    prompt_ids: Tensor
    """(B, P) long, left-padded."""
    prompt_mask: Tensor
    """(B, P) bool, False on left padding."""
    tokens: Tensor
    """(B, T) long generated tokens a_t (pad after a row's EOS)."""
    valid: Tensor
    """(B, T) bool: a_t was generated (up to and including the row's EOS)."""
    terminated: Tensor
    """(B,) bool: the row emitted EOS within T tokens (False = truncated at max_new_tokens)."""
    logp_student: Tensor
    """log π_{ω,θ}(a_t | x, a_<t) at temperature 1 (Alg. 2 l. 12–13)."""
    logp_teacher: Tensor
    """log p_teacher(a_t | x, a_<t) at temperature 1."""
    logp_sampled: Tensor
    """log q(a_t), q the top-p-truncated mixture actually sampled from."""
    weights: Tensor
    """w_t = π(a_t) / q(a_t), the per-token importance weight (Alg. 2 l. 12)."""
    kl: Tensor
    """KL(π ‖ p_teacher) over the vocabulary at each visited state (exact; the reward is its one-sample
    estimate). Logged as `rollout/kl`; the controller and LoRA updates use the reward, as the paper does."""
    trajectory: Trajectory
    """The controller's record: options, decisions, betas, hidden states per controlled position and layer.
    Its length is T, or T + 1 when some row was truncated: the extra column (invalid for every row) holds
    h_T and β(h_T, ω_{T-1}) for bootstrapping the critics of truncated rows (`temoe.rl.next_step`)."""

    @property
    def rewards(self) -> Tensor:
        """r_t = log p_teacher(a_t) − log π(a_t) (Alg. 2 l. 13, `temoe.rl.kl_reward`), 0 where not valid.
        (B, T) float32."""
        return kl_reward(self.logp_teacher, self.logp_student, self.valid)[0]

    @property
    def num_tokens(self) -> int:
        return int(self.valid.sum())


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """(B, S) attention mask -> (B, S) positions of real tokens (left padding -> 0), as HF generate does."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def rollout(
    model,
    handle,
    controller: OptionController,
    teacher: Callable[[], AbstractContextManager],
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    tau: float,
    temperature: float,
    top_p: float,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None,
    controller_generator: torch.Generator | None = None,
    controller_mode: str = "sample",
    early_stop: bool = True,
    forced_tokens: Tensor | None = None,
) -> RolloutBatch:
    """Generate up to `max_new_tokens` tokens for each left-padded prompt with the controller online.

    model: the student (a PeftModel from `temoe.moe.lora.add_lora`, possibly DDP-wrapped); handle: its
    `temoe.wrap` handle; teacher: a context-manager factory that turns the same weights into the teacher,
    e.g. `lambda: teacher_mode(peft_model, handle, original_routers)`.
    generator drives token sampling, controller_generator (default: the same) the controller's draws.
    early_stop=False always runs max_new_tokens steps (sharded models: every process must make the same
    number of forward calls).
    forced_tokens (B, T') long: feed these tokens instead of sampling (teacher forcing of fixed text, e.g. the
    `tokens` of an earlier rollout; a row ends at its EOS as usual). The controller still decides online;
    weights are 1 and the reward and KL are those of the fixed tokens.
    """
    B = prompt_ids.shape[0]
    device = prompt_ids.device
    if forced_tokens is not None:
        max_new_tokens = min(max_new_tokens, forced_tokens.shape[1])
    prompt_mask = prompt_mask.bool()
    eos = torch.tensor(list(eos_token_ids), device=device)
    state = controller.new_state(
        B,
        controller_generator if controller_generator is not None else generator,
        mode=controller_mode,
        record_hidden=True,
        prompt_mask=prompt_mask,
    )
    mask_fn = controller.mask_fn(state)

    def forward(ids: Tensor, attn: Tensor, positions: Tensor, cache, student: bool):
        kwargs = dict(
            input_ids=ids,
            attention_mask=attn.long(),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if student:
            with handle.restrict(mask_fn):
                return model(**kwargs)
        with teacher():
            return model(**kwargs)

    positions = position_ids_from_mask(prompt_mask)
    out_s = forward(prompt_ids, prompt_mask, positions, None, student=True)
    state.begin_generation()
    out_t = forward(prompt_ids, prompt_mask, positions, None, student=False)
    cache_s, cache_t = out_s.past_key_values, out_t.past_key_values
    next_pos = positions[:, -1:] + 1  # (B, 1)
    attn = prompt_mask

    cols: dict[str, list[Tensor]] = {k: [] for k in ("tokens", "valid", "ls", "lt", "lq", "w", "kl")}
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        if t > 0:  # feed a_{t-1}: one cached decode step of each model
            ids = cols["tokens"][-1][:, None]
            attn = torch.cat([attn, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            out_s = forward(ids, attn, next_pos, cache_s, student=True)
            out_t = forward(ids, attn, next_pos, cache_t, student=False)
            cache_s, cache_t = out_s.past_key_values, out_t.past_key_values
            next_pos = next_pos + 1
        if forced_tokens is not None:
            sample = forced_sample(out_s.logits[:, -1], out_t.logits[:, -1], forced_tokens[:, t].to(device))
        else:
            sample = mixed_sample(
                out_s.logits[:, -1],
                out_t.logits[:, -1],
                tau=tau,
                temperature=temperature,
                top_p=top_p,
                generator=generator,
            )
        valid = ~done
        zero = torch.zeros((), device=device)
        cols["tokens"].append(torch.where(valid, sample.tokens, torch.full_like(sample.tokens, pad_token_id)))
        cols["valid"].append(valid)
        for key, value in (
            ("ls", sample.logp_student),
            ("lt", sample.logp_teacher),
            ("lq", sample.logp_sampled),
            ("w", sample.weight),
            ("kl", sample.kl),
        ):
            cols[key].append(torch.where(valid, value, zero))
        done = done | (valid & torch.isin(sample.tokens, eos))
        if early_stop and bool(done.all()):
            break
        state.mark_done(done)  # positions after a row's EOS are not decision points

    if not bool(done.all()):
        # Truncated rows: one more student step records h_T (left invalid) so the critics can bootstrap.
        state.mark_done(torch.ones_like(done))
        attn = torch.cat([attn, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        forward(cols["tokens"][-1][:, None], attn, next_pos, cache_s, student=True)
    stack = {k: torch.stack(v, dim=1) for k, v in cols.items()}
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        tokens=stack["tokens"],
        valid=stack["valid"],
        terminated=done,
        logp_student=stack["ls"],
        logp_teacher=stack["lt"],
        logp_sampled=stack["lq"],
        weights=stack["w"],
        kl=stack["kl"],
        trajectory=state.trajectory(),
    )
