"""`train(config)`: the paper's Algorithm 2 as one loop (rollout → rewards → returns/advantages → losses →
backward → clip → step → log), on one CPU, one GPU, or several processes through `accelerate launch`.

Shapes: B prompts per process, P prompt tokens, T generated tokens (+1 bootstrap column, see
`temoe.rollout.generate`), L MoE layers, N experts, V vocab.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import Tensor, nn

import temoe
from temoe.controller import ControllerConfig, OptionController, recorded_mask_fn
from temoe.metrics import switch_rate
from temoe.moe.lora import add_lora, snapshot_routers, teacher_mode
from temoe.rl import (
    critic_loss,
    discounted_returns,
    intra_option_loss,
    option_critic_targets,
    selection_loss,
    standardize,
    termination_loss,
    token_kl_loss,
    token_log_probs,
)
from temoe.rollout.generate import RolloutBatch, position_ids_from_mask, rollout
from temoe.rollout.text import eos_token_ids
from temoe.train.checkpoint import load_training_state, read_meta, resolve_checkpoint, save_checkpoint
from temoe.train.config import TrainConfig
from temoe.train.data import PromptSource
from temoe.train.logging import MetricsLogger

log = logging.getLogger("temoe.train")

#: Config keys that may change when resuming (everything else must match the saved run).
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "progress", "report_to", "eval_every"}


@dataclass
class RunResult:
    """What `train` returns."""

    run_dir: Path
    steps: int
    """The last completed step (1-based)."""
    metrics: list[dict[str, Any]]
    """The per-step records written by this call (also in run_dir/metrics.jsonl)."""
    checkpoint: Path | None
    """The newest checkpoint written."""
    model: Any = None
    """The trained student (PeftModel, unwrapped from DDP), for inspection and tests."""
    handle: Any = None
    """Its `temoe.wrap` handle."""
    controller: OptionController | None = None
    """The trained controller."""


class ControllerReplay(nn.Module):
    """Puts `OptionController.replay` behind `forward`, so DDP sees the call and all-reduces the gradients."""

    def __init__(self, controller: OptionController):
        super().__init__()
        self.controller = controller

    def forward(self, hidden: Tensor, options_prev: Tensor, decisions: Tensor, selected: Tensor,
                selection_input: Tensor | None = None, outside_mass: Tensor | None = None):
        return tuple(self.controller.replay(hidden, options_prev, decisions, selected, selection_input,
                                            outside_mass))


# ---------------------------------------------------------------------------------------------------------
# set-up: model, dtype policy, prompts
# ---------------------------------------------------------------------------------------------------------
def load_model_for_training(config: TrainConfig, accelerator: Accelerator):
    """(model, tokenizer, eos ids, pad id) from `temoe.load_model`, the one resolver of model names.

    `testing:MODEL_TYPE` trains on synthetic prompts (tokenizer None); `gpt-oss-20b-random[:LAYERS]` is built
    on the accelerator's device (`benchmarks/bench_train_step.py`; CPU needs a layer count).
    """
    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    model, tokenizer = temoe.load_model(config.model, dtype=dtype, device=accelerator.device)
    eos_ids, pad = eos_token_ids(model, tokenizer), tokenizer.pad_token_id
    log.info(
        "dtype policy: weights %s (config dtype=%s), mixed precision %s, RL arithmetic float32",
        next(model.parameters()).dtype,
        config.dtype,
        accelerator.mixed_precision,
    )
    return model, None if config.model.startswith("testing:") else tokenizer, eos_ids, pad


def load_prompts(
    config: TrainConfig, tokenizer, vocab_size: int, pad_id: int, eos_ids: list[int]
) -> PromptSource:
    if tokenizer is None:  # tiny test model: 64 seeded random prompts of 4..12 non-special tokens
        g = torch.Generator().manual_seed(config.seed)
        special = set(eos_ids) | {pad_id}
        ids = [t for t in range(vocab_size) if t not in special]
        prompts = [
            [ids[int(i)] for i in torch.randint(len(ids), (int(n),), generator=g)]
            for n in torch.randint(4, 13, (64,), generator=g)
        ]
        return PromptSource(prompts, config.prompts_per_step, config.seed, pad_id)
    return PromptSource.from_jsonl(
        config.prompts,
        tokenizer,
        per_step=config.prompts_per_step,
        seed=config.seed,
        max_prompt_tokens=config.max_prompt_tokens,
        chat_template=config.chat_template,
        pad_token_id=pad_id,
    )


def _check_resume(config: TrainConfig, ckpt: Path) -> None:
    saved = read_meta(ckpt)["train_config"]
    now = config.to_dict()
    diffs = [
        f"{k}: saved {saved.get(k)!r} vs now {now[k]!r}"
        for k in now
        if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]
    ]
    if diffs:
        raise ValueError(f"cannot resume {ckpt} with a different config: " + "; ".join(diffs))


# ---------------------------------------------------------------------------------------------------------
# metrics of one rollout (per sequence, gathered over processes)
# ---------------------------------------------------------------------------------------------------------
def rollout_stats(batch: RolloutBatch, num_experts: int) -> dict[str, Tensor]:
    """Per-sequence statistics (B,) float32 and the pooled β values at decision positions."""
    valid = batch.valid
    n = valid.sum(1).clamp_min(1).float()
    reward = (batch.logp_teacher - batch.logp_student).mul(valid).sum(1) / n  # neg. KL per token
    kl = (batch.kl * valid).sum(1) / n  # exact KL per token at the visited states
    teacher_ppl = torch.exp(-(batch.logp_teacher * valid).sum(1) / n)
    traj = batch.trajectory
    masks = traj.option_masks(num_experts)  # (B, T', L, N)
    switch, repeat = [], []
    for b in range(valid.shape[0]):
        t_b = int(valid[b].sum())
        switch.append(switch_rate(masks[b, :t_b]) if t_b >= 2 else float("nan"))
        toks = batch.tokens[b, :t_b]
        repeat.append(1.0 - toks.unique().numel() / max(t_b, 1))
    dec = traj.decision_mask  # (B, T')
    return {
        "reward": reward,
        "kl": kl,
        "teacher_ppl": teacher_ppl,
        "length": valid.sum(1).float(),
        "switch_rate": torch.tensor(switch),
        "repeat_fraction": torch.tensor(repeat),
        "termination_rate": (traj.decisions.float().mean(-1) * dec).sum(1) / dec.sum(1).clamp_min(1),
        "importance_weight": (batch.weights * valid).sum(1) / n,
        "betas": traj.betas[dec].flatten(),
    }


def _mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


# ---------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False) -> RunResult:
    """Train option controllers + LoRA on `config.model` (Alg. 2); see docs/training.md.

    Writes `config.out_dir/{config.yaml, metrics.jsonl, checkpoints/}`. With `resume=True` continues from
    `checkpoints/latest` (same config except the keys in `_RESUMABLE_CHANGES`), with no step lost or repeated.
    """
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    config.validate(accelerator.num_processes)
    run_dir = Path(config.out_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(config.seed)  # same on every process: identical controller and LoRA initialisation
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)

    # ---- model: student = base + LoRA + controller; teacher = same weights, adapters off, original routers
    model, tokenizer, eos_ids, pad_id = load_model_for_training(config, accelerator)
    model.to(accelerator.device)
    handle = temoe.wrap(model)
    if not handle.top_k <= config.k_hat <= handle.num_experts:
        raise ValueError(
            f"config key k_hat={config.k_hat}: must satisfy top-k={handle.top_k} <= k_hat <= "
            f"N={handle.num_experts} for {config.model}"
        )
    original_routers = snapshot_routers(handle)  # the teacher's routing, frozen before any update
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ctrl_config = ControllerConfig(
        k_hat=config.k_hat,
        expert_embed_dim=config.expert_embed_dim,
        hidden=config.controller_hidden,
        termination_bias_init=config.termination_bias_init,
        selection_context_decay=config.selection_context_decay,
        initial_option=config.initial_option,
        selection_temperature=config.selection_temperature,
        termination_demand=config.termination_demand,
        termination_demand_threshold=config.termination_demand_threshold,
    )
    controller = OptionController.from_handle(handle, ctrl_config).to(accelerator.device)
    peft_model = add_lora(
        model,
        handle,
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        attention=config.lora_attention,
        train_routers=config.train_routers,
    )
    if config.mixed_precision != "no":  # trainable routers keep float32 master weights under autocast
        for router in handle.routers:
            router.float()
    policy_params = [p for p in peft_model.parameters() if p.requires_grad]
    opt_ctrl = torch.optim.AdamW(
        controller.parameters(), lr=config.lr_controller, weight_decay=config.weight_decay
    )  # §5: controller lr 1e-4
    opt_policy = torch.optim.AdamW(
        policy_params, lr=config.lr_policy, weight_decay=config.weight_decay
    )  # §5: intra-option lr 2e-4
    ddp_model, ddp_replay, opt_ctrl, opt_policy = accelerator.prepare(
        peft_model, ControllerReplay(controller), opt_ctrl, opt_policy
    )
    optimizers = {"controller": opt_ctrl, "policy": opt_policy}

    prompts = load_prompts(config, tokenizer, model.config.vocab_size, pad_id, eos_ids)
    sample_gen = torch.Generator(device=accelerator.device).manual_seed(config.seed * 7919 + rank)
    ctrl_gen = torch.Generator(device=accelerator.device).manual_seed(config.seed * 104729 + rank)
    generators = {"sample": sample_gen, "controller": ctrl_gen}

    start_step, ckpt = 0, None
    if resume:
        ckpt = resolve_checkpoint(run_dir)
        _check_resume(config, ckpt)
        start_step = load_training_state(
            ckpt,
            peft_model=peft_model,
            handle=handle,
            controller=controller,
            optimizers=optimizers,
            generators=generators,
            process_index=rank,
        )
    if accelerator.is_main_process:
        config.save(run_dir / "config.yaml")
    logger = MetricsLogger(
        run_dir,
        total_steps=config.steps,
        start_step=start_step,
        enabled=accelerator.is_main_process,
        progress=config.progress,
        report_to=config.report_to,
        config=config.to_dict(),
    )
    teacher = lambda: teacher_mode(peft_model, handle, original_routers)  # noqa: E731
    # DDP replicas hold full weights: roll out on the unwrapped module (no collectives, so processes may stop
    # at different lengths). Sharded FSDP must run the wrapped module and the same number of steps everywhere.
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded:
        log.warning("FSDP path: rollouts through the sharded model, no early stop (untested without GPUs)")
    rollout_model = ddp_model if sharded else peft_model
    records: list[dict[str, Any]] = []

    probe_text: dict[str, Tensor] = {}  # the teacher's continuations of the probe prompts (fixed: made once)

    def probe(step: int) -> None:
        """Held-out probes without updates (`eval_every`), appended to eval.jsonl: (1) an on-policy rollout
        with fixed seeds (reward, exact KL, switch rate) and (2) the exact KL on fixed text, the teacher's own
        continuations of the same prompts (sampled once, with a fixed seed), with the controller online. (2)
        visits the same states at every probe, so its change is what training did, free of sampling noise."""
        ids, mask = prompts.probe_batch(num_probes, rank, world)
        ids, mask = ids.to(accelerator.device), mask.to(accelerator.device)
        device = accelerator.device

        def gens() -> list[torch.Generator]:
            return [torch.Generator(device=device).manual_seed(config.seed * 7919 + 104729 * k + rank)
                    for k in (1, 2)]

        common = dict(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                      top_p=config.top_p, eos_token_ids=eos_ids, pad_token_id=pad_id, early_stop=not sharded)
        peft_model.eval()
        if "tokens" not in probe_text:
            g = gens()
            probe_text["tokens"] = rollout(rollout_model, handle, controller, teacher, ids, mask, tau=1.0,
                                           generator=g[0], controller_generator=g[1], **common).tokens
        g = gens()
        batch = rollout(rollout_model, handle, controller, teacher, ids, mask, tau=config.tau, generator=g[0],
                        controller_generator=g[1], **common)
        g = gens()
        fixed = rollout(rollout_model, handle, controller, teacher, ids, mask, tau=config.tau, generator=g[0],
                        controller_generator=g[1], forced_tokens=probe_text["tokens"], **common)
        per_seq = {}
        for prefix, b in (("", batch), ("fixed_", fixed)):
            stats = rollout_stats(b, handle.num_experts)
            stats.pop("betas")
            per_seq.update({prefix + k: accelerator.gather(v.to(device)).cpu() for k, v in stats.items()})

        def mean(v: Tensor) -> float:
            v = v[~v.isnan()]
            return float(v.mean()) if v.numel() else float("nan")

        logger.log_eval({"step": step, "eval/reward": mean(per_seq["reward"]), "eval/kl": mean(per_seq["kl"]),
                         "eval/switch_rate": mean(per_seq["switch_rate"]),
                         "eval/teacher_ppl": mean(per_seq["teacher_ppl"]),
                         "eval/response_tokens": mean(per_seq["length"]),
                         "eval/fixed_kl": mean(per_seq["fixed_kl"]),
                         "eval/fixed_switch_rate": mean(per_seq["fixed_switch_rate"]),
                         "reward_per_prompt": per_seq["reward"].tolist(),
                         "kl_per_prompt": per_seq["kl"].tolist(),
                         "switch_rate_per_prompt": per_seq["switch_rate"].tolist(),
                         "fixed_kl_per_prompt": per_seq["fixed_kl"].tolist()})

    num_probes = config.eval_prompts
    if config.eval_every:
        if num_probes > len(prompts.prompts):
            num_probes = len(prompts.prompts) - len(prompts.prompts) % world
            log.warning("eval_prompts=%d exceeds the %d usable prompts: probing %d", config.eval_prompts,
                        len(prompts.prompts), num_probes)
        if not prompts.probe_held_out(num_probes, config.steps) and accelerator.is_main_process:
            log.warning("the %d probe prompts are also trained on: %d steps x %d prompts exceed the %d "
                        "usable prompts minus the probes", num_probes, config.steps, config.prompts_per_step,
                        len(prompts.prompts))
        if start_step == 0:
            probe(0)

    for step in range(start_step + 1, config.steps + 1):
        t_start = time.perf_counter()
        # ---- Alg. 2 lines 2–13: rollout with the controller online and teacher-mixed sampling ------------
        prompt_ids, prompt_mask = (x.to(accelerator.device) for x in prompts.batch(step - 1, rank, world))
        peft_model.eval()
        batch = rollout(
            rollout_model,
            handle,
            controller,
            teacher,
            prompt_ids,
            prompt_mask,
            max_new_tokens=config.max_new_tokens,
            tau=config.tau,
            temperature=config.temperature,
            top_p=config.top_p,
            eos_token_ids=eos_ids,
            pad_token_id=pad_id,
            generator=sample_gen,
            controller_generator=ctrl_gen,
            early_stop=not sharded,
        )
        t_rollout = time.perf_counter() - t_start
        traj = batch.trajectory
        T, Tc = batch.tokens.shape[1], traj.valid.shape[1]  # Tc = T or T + 1 (bootstrap column)

        # ---- rewards r_t = log p_teacher − log π (line 13), scaled for the critics; weights w_t (line 12)
        rewards = _pad_columns(batch.rewards, Tc) * config.reward_scale
        weights = _pad_columns(batch.weights, Tc)
        valid = traj.valid  # equals _pad_columns(batch.valid, Tc)

        # ---- controller losses (lines 3–16 of "Algorithm 2 continued"), one batched replay --------------
        out = ddp_replay(traj.hidden, traj.options_prev, traj.decisions, traj.selected, traj.selection_input,
                         traj.outside_mass)
        beta, q_prev, q_exec, value, log_prob = out
        targets = option_critic_targets(
            rewards, value, q_prev, q_exec, beta, valid, batch.terminated, gamma=config.gamma, lam=config.lam
        )  # GAE(λ), lines 4–12
        loss_critic, s_critic = critic_loss(
            value, q_exec, targets.v_target, targets.q_target, valid, coef=config.value_coef
        )  # line 16
        loss_term, s_term = termination_loss(
            beta, q_prev, value, traj.decision_mask, config.eta, weights
        )  # line 13
        switches = traj.decisions & traj.decision_mask[..., None]
        loss_sel, s_sel = selection_loss(log_prob, q_exec, value, switches, weights)  # lines 14–15
        loss_ctrl = loss_term + loss_sel + loss_critic
        accelerator.backward(loss_ctrl)
        grad_ctrl = accelerator.clip_grad_norm_(controller.parameters(), config.grad_clip)
        opt_ctrl.step()
        opt_ctrl.zero_grad(set_to_none=True)

        # ---- intra-option policy gradient (lines 17–19): teacher-forced replay with the recorded masks ---
        loss_policy_value, grad_policy = float("nan"), torch.tensor(float("nan"))
        if config.update_policy:
            returns = discounted_returns(batch.rewards * config.reward_scale, batch.valid, config.gamma)
            advantages = standardize(returns, batch.valid)  # Ḡ standardised over the response tokens (A2)
            peft_model.train()
            loss_policy_value = _policy_update(
                ddp_model,
                handle,
                accelerator,
                batch,
                advantages,
                config,
                traj.option_masks(handle.num_experts)[:, :T],
                teacher_model=rollout_model,
                teacher=teacher,
            )
            grad_policy = accelerator.clip_grad_norm_(policy_params, config.grad_clip)
            opt_policy.step()
            opt_policy.zero_grad(set_to_none=True)
            peft_model.eval()

        # ---- log ------------------------------------------------------------------------------------------
        step_time = time.perf_counter() - t_start
        stats = rollout_stats(batch, handle.num_experts)
        betas = stats.pop("betas")
        per_seq = {k: accelerator.gather(v.to(accelerator.device)) for k, v in stats.items()}
        tokens_all = float(per_seq["length"].sum())
        local = {
            "loss/value": s_critic["loss/critic"],
            "loss/termination": float(loss_term.detach()),
            "loss/selection": float(loss_sel.detach()),
            "loss/controller_policy": float((loss_term + loss_sel).detach()),
            "loss/controller": float(loss_ctrl.detach()),
            "loss/policy": loss_policy_value,
            "rollout/switch_prob_mean": float(betas.mean()) if betas.numel() else float("nan"),
            "rollout/switch_prob_p95": float(betas.quantile(0.95)) if betas.numel() else float("nan"),
            "rollout/switch_prob_std": float(betas.std()) if betas.numel() > 1 else float("nan"),
            "grad/controller_norm": float(grad_ctrl),
            "grad/policy_norm": float(grad_policy),
            "termination/adv_mean": s_term["termination/adv_mean"],
            "termination/frac_keep_preferred": s_term["termination/frac_keep_preferred"],
            "selection/num_switches": s_sel["selection/num_switches"],
        }
        record = {"step": step, **_mean_over_processes(accelerator, local)}
        for key in (
            "reward",
            "kl",
            "switch_rate",
            "repeat_fraction",
            "teacher_ppl",
            "termination_rate",
            "importance_weight",
        ):
            v = per_seq[key]
            record[f"rollout/{key}"] = (
                float(v[~v.isnan()].mean()) if bool((~v.isnan()).any()) else float("nan")
            )
        record["rollout/response_tokens"] = float(per_seq["length"].mean())
        record["perf/tokens_per_s"] = tokens_all / step_time
        record["perf/rollout_tokens_per_s"] = tokens_all / t_rollout
        record["perf/step_s"] = step_time
        logger.log(record)
        records.append(record)

        if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
            probe(step)

        if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps:
            ckpt = save_checkpoint(
                run_dir,
                step,
                peft_model=peft_model,
                handle=handle,
                controller=controller,
                optimizers=optimizers,
                generators=generators,
                train_config=config,
                controller_config=ctrl_config,
                accelerator=accelerator,
                keep=config.keep_checkpoints,
            )
    logger.close()
    accelerator.end_training()
    return RunResult(
        run_dir=run_dir,
        steps=config.steps,
        metrics=records,
        checkpoint=ckpt,
        model=peft_model,
        handle=handle,
        controller=controller,
    )


def _pad_columns(x: Tensor, width: int) -> Tensor:
    """(B, T) -> (B, width) with zero columns appended: the bootstrap column carries no reward or weight."""
    return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], dim=1)


def _policy_update(
    ddp_model,
    handle,
    accelerator: Accelerator,
    batch: RolloutBatch,
    advantages: Tensor,
    config: TrainConfig,
    option_masks: Tensor,
    teacher_model=None,
    teacher=None,
) -> float:
    """Backward of −Σ w_t Ĝ_t log π_θ(a_t) / Σ w_t (Alg. 2 line 19) in micro-batches; returns the loss.

    Teacher-forced forward over prompt + response[:-1] with the recorded option masks at the controlled
    positions (`recorded_mask_fn`), so π_θ is the distribution the tokens were sampled under.
    With `config.policy_loss == "token_kl"` the loss is instead the full-vocabulary KL(π_θ ‖ teacher) at the
    same positions (`token_kl_loss`); the teacher's logits come from `teacher_model` (the same weights) under
    the `teacher()` context, without gradients.
    """
    B, P = batch.prompt_ids.shape
    T = batch.tokens.shape[1]
    ids = torch.cat([batch.prompt_ids, batch.tokens[:, :-1]], dim=1)  # (B, P + T − 1)
    attn = torch.cat([batch.prompt_mask, torch.ones_like(batch.tokens[:, :-1], dtype=torch.bool)], dim=1)
    positions = position_ids_from_mask(attn)
    # each micro-batch's share of the loss normaliser: Σ w (reinforce) or the token count (token_kl)
    w = batch.weights * batch.valid if config.policy_loss == "reinforce" else batch.valid.float()
    w_total = w.sum().clamp_min(1e-12)
    mb = config.micro_batch_size or B
    chunks = list(range(0, B, mb))
    total = 0.0
    for n, start in enumerate(chunks):
        sl = slice(start, start + mb)
        sync = n == len(chunks) - 1
        ctx = accelerator.no_sync(ddp_model) if not sync else nullcontext()
        inputs = dict(input_ids=ids[sl], attention_mask=attn[sl].long(), position_ids=positions[sl],
                      use_cache=False, logits_to_keep=T)
        teacher_logits = None
        if config.policy_loss == "token_kl":
            with torch.no_grad(), teacher():
                teacher_logits = teacher_model(**inputs).logits
        with ctx, handle.restrict(recorded_mask_fn(option_masks[sl], start=P - 1)):
            logits = ddp_model(**inputs).logits  # (b, T, V): predicts a_0..a_{T−1}
            if teacher_logits is None:
                logp = token_log_probs(logits / config.temperature, batch.tokens[sl])
                loss, _ = intra_option_loss(logp, advantages[sl], batch.valid[sl], batch.weights[sl])
            else:
                loss, _ = token_kl_loss(logits / config.temperature, teacher_logits / config.temperature,
                                        batch.valid[sl])
            loss = loss * (w[sl].sum() / w_total)  # micro-batch share of the batch's normaliser
            accelerator.backward(loss)
        total += float(loss.detach())
    return total
