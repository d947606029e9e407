"""`train(config)`: the paper's Algorithm 2 as a loop over named phases, on one CPU, one GPU, or several
processes through `accelerate launch`.

Each step: `collect` (rollout with the controller online, Alg. 2 lines 2–13) -> `controller_update` (critics,
termination, selection; continued lines 3–16) -> `policy_update` (intra-option LoRA; lines 17–19) -> log and
checkpoint. `setup` builds what the loop needs once; `Probe` is the held-out evaluation.

Shapes: B prompts per process, P prompt tokens, T generated tokens (+1 bootstrap column, see
`temoe.rollout.generate`), L MoE layers, N experts, V vocab.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import Tensor, nn

import temoe
from temoe.controller import OptionController, recorded_mask_fn
from temoe.controller.options import indices_to_mask
from temoe.inference import read_meta, resolve_checkpoint
from temoe.metrics import switch_rate
from temoe.moe.lora import add_lora, snapshot_routers, teacher_mode
from temoe.rl import (
    counted_positions,
    critic_loss,
    discounted_returns,
    ema_update,
    expert_loads,
    intra_option_loss,
    loads_switch_cost,
    option_critic_targets,
    pi_dual_update,
    selection_loss,
    standardize,
    termination_loss,
    token_log_probs,
)
from temoe.rollout.generate import RolloutBatch, position_ids_from_mask, rollout
from temoe.rollout.text import eos_token_ids
from temoe.train.checkpoint import load_training_state, save_checkpoint
from temoe.train.config import TrainConfig
from temoe.train.data import PromptSource
from temoe.train.logging import MetricsLogger
from temoe.train.rundir import open_run

log = logging.getLogger("temoe.train")



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


@dataclass
class Run:
    """Everything the loop's phases share, built once by `setup`."""

    config: TrainConfig
    accelerator: Accelerator
    handle: Any
    """`temoe.wrap` handle of the student's MoE layers."""
    controller: OptionController
    peft_model: Any
    """The student: base + LoRA (+ trainable routers); with its adapters off and the original routers
    swapped in (`teacher()`) it is the teacher."""
    ddp_model: Any
    """`peft_model` as prepared by accelerate (DDP/FSDP wrapper), for the policy update."""
    ddp_replay: ControllerReplay
    rollout_model: Any
    """The module rollouts run through: `peft_model`, or `ddp_model` when sharded (FSDP)."""
    teacher: Any
    """Context-manager factory that turns the student into the teacher."""
    optimizers: dict[str, torch.optim.Optimizer]
    """"controller" (termination, selection, critics) and "policy" (LoRA + routers)."""
    policy_params: list[nn.Parameter]
    prompts: PromptSource
    generators: dict[str, torch.Generator]
    """"sample" (token sampling) and "controller" (d_t and Plackett–Luce draws), per process."""
    rollout_settings: dict[str, Any]
    """The keyword arguments every `temoe.rollout.rollout` call of the run shares (`rollout_settings`)."""
    logger: MetricsLogger
    eta: float = 0.0
    """η of the next step's termination and selection losses (`ControllerConfig.eta`, or the dual variable
    with `eta: auto`, updated by `update_eta` and stored in every checkpoint)."""
    eta_integral: float = 0.0
    """With `eta: auto`: η_I, the integral (dual-ascent) term of η's PI update; η itself when `eta_kp` = 0."""
    loads_ema: float | None = None
    """With `eta: auto`: the moving average of the per-step loads per token (`eta_ema`); None before
    step 1."""
    start_step: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None

    @property
    def rank_world(self) -> tuple[int, int]:
        return self.accelerator.process_index, self.accelerator.num_processes


# ---------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train option controllers + LoRA on `config.model` (Alg. 2); see docs/training.md.

    Writes `config.out_dir/{config.yaml, metrics.jsonl, checkpoints/}`, holding the run's lock. With
    `resume=True` continues from `checkpoints/latest` (same config except `rundir.RESUMABLE_CHANGES`), with no
    step lost or repeated; a directory holding an earlier run is refused unless `resume` or `overwrite`.
    """
    config.validate()
    with open_run(config, resume=resume, overwrite=overwrite) as ckpt:
        return _train(config, resume=ckpt is not None)


def _train(config: TrainConfig, *, resume: bool) -> RunResult:
    """The loop of Alg. 2 over named phases, in a run directory `train` owns."""
    run = setup(config, resume)
    probe = Probe(run) if config.eval_every else None
    if probe is not None and run.start_step == 0:
        probe(0)
    for step in range(run.start_step + 1, config.steps + 1):  # Alg. 2 line 1
        t_start = time.perf_counter()
        batch = collect(run, step)  # lines 2–13
        t_rollout = time.perf_counter() - t_start
        stats = controller_update(run, batch)  # continued, lines 3–16 (and the ν, ψ, ϕ half of line 20)
        stats |= policy_update(run, batch)  # lines 17–19 (and the θ half of line 20)
        stats |= update_eta(run, batch)  # η for the next step (dual ascent with `eta: auto`)
        log_step(run, step, batch, stats, time.perf_counter() - t_start, t_rollout)
        if probe is not None and (step % config.eval_every == 0 or step == config.steps):
            probe(step)
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps:
            save(run, step)
    run.logger.close()
    run.accelerator.end_training()
    return RunResult(run_dir=Path(config.out_dir), steps=config.steps, metrics=run.records,
                     checkpoint=run.checkpoint, model=run.peft_model, handle=run.handle,
                     controller=run.controller)


# ---------------------------------------------------------------------------------------------------------
# the phases of one step
# ---------------------------------------------------------------------------------------------------------
def collect(run: Run, step: int) -> RolloutBatch:
    """Alg. 2 lines 2–13: sample step's prompts, roll out with the controller online (β_t, d_t, PL selection,
    masked router at every decode step: lines 4–9) and teacher-mixed sampling (lines 10–12); the rewards
    r_t (line 13) are `rollout_rewards` of the batch."""
    rank, world = run.rank_world
    prompt_ids, prompt_mask = (x.to(run.accelerator.device) for x in run.prompts.batch(step - 1, rank, world))
    run.peft_model.eval()
    return run_rollout(run, prompt_ids, prompt_mask, run.generators["sample"], run.generators["controller"])


def controller_update(run: Run, batch: RolloutBatch) -> dict[str, float]:
    """Alg. 2 continued, lines 3–16, then the controller's step of line 20.

    One batched replay gives β_t, Q(h_t, ω_{t-1}), Q(h_t, ω_t), V(h_t) and log π_sel with gradients;
    GAE(λ) targets (lines 4–12); termination loss with η (line 13); selection loss at switches
    (lines 14–15); critic loss (line 16). One backward, clip, AdamW step.
    """
    config, traj = run.config, batch.trajectory
    width = traj.valid.shape[1]  # T or T + 1 (bootstrap column)
    rewards = _pad_columns(rollout_rewards(batch, config.reward_scale), width)
    weights = _pad_columns(batch.weights, width)  # w_t (line 12); the bootstrap column carries none
    beta, q_prev, q_exec, value, log_prob = run.ddp_replay(traj.hidden, traj.options_prev, traj.decisions,
                                                           traj.selected, traj.selection_input,
                                                           traj.outside_mass)
    targets = option_critic_targets(rewards, value, q_prev, q_exec, beta, traj.valid, batch.terminated,
                                    gamma=config.gamma, lam=config.lam)  # lines 4–12
    loss_critic, s_critic = critic_loss(value, q_exec, targets.v_target, targets.q_target, traj.valid,
                                        coef=config.value_coef)  # line 16
    cost = switch_cost(run, batch)  # η, or c_t (B, T', L) in expert loads
    loss_term, s_term = termination_loss(beta, q_prev, value, traj.decision_mask, cost, weights)  # line 13
    switches = traj.decisions & traj.decision_mask[..., None]
    loss_sel, s_sel = selection_loss(log_prob, q_exec, value, switches, weights,
                                     cost=cost if isinstance(cost, Tensor) else None)  # lines 14–15
    loss = loss_term + loss_sel + loss_critic
    grad = _optimizer_step(run, "controller", loss, run.controller.parameters())  # line 20
    return {"loss/value": s_critic["loss/critic"], "loss/termination": float(loss_term.detach()),
            "loss/selection": float(loss_sel.detach()),
            "loss/controller_policy": float((loss_term + loss_sel).detach()),
            "loss/controller": float(loss.detach()), "grad/controller_norm": grad,
            "termination/adv_mean": s_term["termination/adv_mean"],
            "termination/frac_keep_preferred": s_term["termination/frac_keep_preferred"],
            "selection/num_switches": s_sel["selection/num_switches"]}


def switch_cost(run: Run, batch: RolloutBatch) -> float | Tensor:
    """The deliberation cost of this step: η (`switch_cost: flat`, the paper), or with `switch_cost: loads`
    c_t = η · |ω̃_t \\ ω_{t-1}| / k̂ (B, T', L), ω̃_t the candidate the selection head drew at t for every row
    (`Trajectory.selected`; executed only where d_t = 1)."""
    ctrl = run.config.controller
    if ctrl.switch_cost == "flat":
        return run.eta
    traj, n = batch.trajectory, run.handle.num_experts
    return loads_switch_cost(indices_to_mask(traj.options_prev, n), indices_to_mask(traj.selected, n),
                             run.eta, ctrl.k_hat)


def update_eta(run: Run, batch: RolloutBatch) -> dict[str, float]:
    """Measure this step's expert loads per generated token (summed over layers and processes) and, with
    `eta: auto`, take η's dual step towards the load budget (`pi_dual_update`: plain dual ascent when
    `eta_kp` = 0); returns the `controller/` metrics.

    The logged η is the one this step's losses used; `run.eta` becomes the next step's.
    """
    ctrl, traj = run.config.controller, batch.trajectory
    T = batch.tokens.shape[1]
    masks = traj.option_masks(run.handle.num_experts)[:, :T]  # (B, T, L, N): the options of generated tokens
    answer = answer_positions(batch, run.rollout_settings["eos_token_ids"])
    totals = torch.stack([expert_loads(masks, answer).sum(),
                          counted_positions(answer).sum().float()]).to(run.accelerator.device)
    if run.accelerator.num_processes > 1:
        totals = run.accelerator.reduce(totals, reduction="sum")
    measured = float(totals[0] / totals[1].clamp_min(1))
    stats = {"controller/eta": run.eta, "controller/loads_per_token": measured}
    per_load = ctrl.stall_ms_per_load()
    if per_load is not None:
        stats["controller/stall_ms_per_token"] = measured * per_load
    if ctrl.eta_auto:
        stats["controller/load_budget"] = ctrl.load_budget_per_token()
        run.loads_ema = ema_update(run.loads_ema, measured, ctrl.eta_ema)
        budget = stats["controller/load_budget"]
        run.eta_integral, run.eta = pi_dual_update(run.eta_integral, measured, budget, ctrl.eta_lr,
                                                   ctrl.eta_kp, run.loads_ema)
        if ctrl.eta_kp > 0:
            stats["controller/loads_ema"] = run.loads_ema
    return stats


def answer_positions(batch: RolloutBatch, eos_ids) -> Tensor:
    """(B, T) bool: the positions of a response's answer tokens, its valid positions less the one that
    emitted EOS; the loads are counted over these, as `temoe eval --records` counts them (`experts_loaded`
    over the `n_generated` tokens before EOS)."""
    eos = torch.as_tensor(list(eos_ids), dtype=batch.tokens.dtype, device=batch.tokens.device)
    return batch.valid & ~torch.isin(batch.tokens, eos)


def policy_update(run: Run, batch: RolloutBatch) -> dict[str, float]:
    """Alg. 2 continued, lines 17–19, then the intra-option step of line 20.

    Ḡ_t = Σ_j γ^j r_{t+j} (line 18), standardised over the response tokens (A2); the gradient of
    w_t log π_θ(a_t) Ḡ_t (line 19) through a teacher-forced replay under the recorded option masks
    (`_policy_backward`); clip, AdamW step on LoRA + routers.
    """
    config = run.config
    returns = discounted_returns(rollout_rewards(batch, config.reward_scale), batch.valid, config.gamma)
    advantages = standardize(returns, batch.valid)
    run.peft_model.train()
    loss = _policy_backward(run, batch, advantages)
    grad = _optimizer_step(run, "policy", None, run.policy_params)
    run.peft_model.eval()
    return {"loss/policy": loss, "grad/policy_norm": grad}


def log_step(run: Run, step: int, batch: RolloutBatch, losses: dict[str, float], step_s: float,
             rollout_s: float) -> None:
    """Append the step's record (`step_record`) to metrics.jsonl and to `run.records`."""
    record = step_record(run.accelerator, step, batch, run.handle.num_experts, losses, step_s, rollout_s)
    run.logger.log(record)
    run.records.append(record)


def save(run: Run, step: int) -> None:
    """A checkpoint of everything the run needs to continue exactly (`temoe.train.checkpoint`)."""
    config = run.config
    run.checkpoint = save_checkpoint(
        Path(config.out_dir), step, peft_model=run.peft_model, handle=run.handle, controller=run.controller,
        optimizers=run.optimizers, generators=run.generators, train_config=config,
        controller_config=config.controller, accelerator=run.accelerator, keep=config.keep_checkpoints,
        trainer_state=_trainer_state(run))


def _trainer_state(run: Run) -> dict[str, float]:
    """The loop's scalars a resume needs: η, and with `eta: auto` the PI update's integral and average."""
    state = {"eta": run.eta}
    if run.config.controller.eta_auto:
        state["eta_integral"] = run.eta_integral
        if run.loads_ema is not None:
            state["loads_ema"] = run.loads_ema
    return state


def _restore_trainer_state(run: Run, state: dict[str, float]) -> None:
    """Set η, η_I and the loads average from a checkpoint's `trainer_state` (η_I = η when absent)."""
    run.eta = float(state.get("eta", run.eta))
    run.eta_integral = float(state.get("eta_integral", run.eta))
    run.loads_ema = float(state["loads_ema"]) if "loads_ema" in state else None


def _optimizer_step(run: Run, name: str, loss: Tensor | None, params) -> float:
    """Backward of `loss` (None: already done), clip to `grad_clip`, step and zero optimizer `name`;
    returns the gradient norm before clipping."""
    if loss is not None:
        run.accelerator.backward(loss)
    grad = run.accelerator.clip_grad_norm_(params, run.config.grad_clip)
    run.optimizers[name].step()
    run.optimizers[name].zero_grad(set_to_none=True)
    return float(grad)


def _pad_columns(x: Tensor, width: int) -> Tensor:
    """(B, T) -> (B, width) with zero columns appended: the bootstrap column carries no reward or weight."""
    return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], dim=1)


def _policy_backward(run: Run, batch: RolloutBatch, advantages: Tensor) -> float:
    """Backward of −Σ w_t Ĝ_t log π_θ(a_t) / Σ w_t (Alg. 2 line 19) in micro-batches; returns the loss.

    Teacher-forced forward over prompt + response[:-1] with the recorded option masks at the controlled
    positions (`recorded_mask_fn`), so π_θ is the distribution the tokens were sampled under.
    """
    config, accelerator = run.config, run.accelerator
    B, P = batch.prompt_ids.shape
    T = batch.tokens.shape[1]
    ids = torch.cat([batch.prompt_ids, batch.tokens[:, :-1]], dim=1)  # (B, P + T − 1)
    attn = torch.cat([batch.prompt_mask, torch.ones_like(batch.tokens[:, :-1], dtype=torch.bool)], dim=1)
    positions = position_ids_from_mask(attn)
    option_masks = batch.trajectory.option_masks(run.handle.num_experts)[:, :T]  # (B, T, L, N)
    w = batch.weights * batch.valid
    w_total = w.sum().clamp_min(1e-12)
    mb = config.micro_batch_size or B
    starts = list(range(0, B, mb))
    total = 0.0
    for start in starts:
        sl = slice(start, start + mb)
        last = start == starts[-1]  # gradients are all-reduced once, after the last micro-batch
        with (nullcontext() if last else accelerator.no_sync(run.ddp_model)), \
                run.handle.restrict(recorded_mask_fn(option_masks[sl], start=P - 1)):
            logits = run.ddp_model(input_ids=ids[sl], attention_mask=attn[sl].long(),
                                   position_ids=positions[sl], use_cache=False,
                                   logits_to_keep=T).logits  # (b, T, V): predicts a_0..a_{T−1}
            logp = token_log_probs(logits / config.temperature, batch.tokens[sl])
            loss, _ = intra_option_loss(logp, advantages[sl], batch.valid[sl], batch.weights[sl])
            loss = loss * (w[sl].sum() / w_total)  # micro-batch share of the batch's normaliser
            accelerator.backward(loss)
        total += float(loss.detach())
    return total


# ---------------------------------------------------------------------------------------------------------
# rollouts and rewards
# ---------------------------------------------------------------------------------------------------------
def rollout_settings(config: TrainConfig, eos_ids: list[int], pad_id: int,
                     early_stop: bool) -> dict[str, Any]:
    """The `temoe.rollout.rollout` keyword arguments every rollout of a run shares (§5: τ = 0.2, temperature
    1.0, top-p 0.95, T = max_new_tokens)."""
    return dict(max_new_tokens=config.max_new_tokens, tau=config.tau, temperature=config.temperature,
                top_p=config.top_p, eos_token_ids=eos_ids, pad_token_id=pad_id, early_stop=early_stop)


def run_rollout(run: Run, ids: Tensor, mask: Tensor, generator: torch.Generator,
                controller_generator: torch.Generator, **changes) -> RolloutBatch:
    """`temoe.rollout.rollout` of the student with the controller online, with the run's settings; `changes`
    overrides some (`tau`, `forced_tokens`)."""
    return rollout(run.rollout_model, run.handle, run.controller, run.teacher, ids, mask, generator=generator,
                   controller_generator=controller_generator, **{**run.rollout_settings, **changes})


def rollout_rewards(batch: RolloutBatch, scale: float) -> Tensor:
    """r_t = log p_teacher(a_t) − log π(a_t) (Alg. 2 line 13) times `reward_scale`, 0 past a row's end;
    (B, T) float32. The critics, the termination and the intra-option returns all read this."""
    return batch.rewards * scale


# ---------------------------------------------------------------------------------------------------------
# held-out probes
# ---------------------------------------------------------------------------------------------------------
class Probe:
    """Held-out probes without updates (`eval_every`), appended to eval.jsonl.

    (1) An on-policy rollout with fixed seeds (reward, exact KL, switch rate) and (2) the exact KL on fixed
    text, the teacher's own continuations of the same prompts (sampled once, with a fixed seed), with the
    controller online. (2) visits the same states at every probe, so its change is what training did, free
    of sampling noise. The prompts are the last of the first epoch's order (`PromptSource.probe_indices`).
    """

    def __init__(self, run: Run):
        self.run = run
        config, prompts, world = run.config, run.prompts, run.accelerator.num_processes
        self.count = config.eval_prompts
        if self.count > len(prompts.prompts):
            self.count = len(prompts.prompts) - len(prompts.prompts) % world
            log.warning("eval_prompts=%d exceeds the %d usable prompts: probing %d", config.eval_prompts,
                        len(prompts.prompts), self.count)
        if not prompts.probe_held_out(self.count, config.steps) and run.accelerator.is_main_process:
            log.warning("the %d probe prompts are also trained on: %d steps x %d prompts exceed the %d "
                        "usable prompts minus the probes", self.count, config.steps, config.prompts_per_step,
                        len(prompts.prompts))
        self.fixed_text: Tensor | None = None  # the teacher's continuations (made at the first probe)

    def _rollout(self, ids: Tensor, mask: Tensor, **changes) -> RolloutBatch:
        """A rollout with the probe's own fixed generators (the same draws at every probe)."""
        run, (rank, _) = self.run, self.run.rank_world
        device = run.accelerator.device
        sample, ctrl = (_generator(device, run.config.seed * 7919 + 104729 * k + rank) for k in (1, 2))
        return run_rollout(run, ids, mask, sample, ctrl, **changes)

    def __call__(self, step: int) -> None:
        run = self.run
        device = run.accelerator.device
        ids, mask = (x.to(device) for x in run.prompts.probe_batch(self.count, *run.rank_world))
        run.peft_model.eval()
        if self.fixed_text is None:
            self.fixed_text = self._rollout(ids, mask, tau=1.0).tokens
        per_seq = {}
        for prefix, batch in (("", self._rollout(ids, mask)),
                              ("fixed_", self._rollout(ids, mask, forced_tokens=self.fixed_text))):
            stats = rollout_stats(batch, run.handle.num_experts, run.rollout_settings["eos_token_ids"])
            stats.pop("betas")
            per_seq.update({prefix + k: run.accelerator.gather(v.to(device)).cpu() for k, v in stats.items()})
        means = {f"eval/{k}": _nanmean(per_seq[k]) for k in ("reward", "kl", "switch_rate", "teacher_ppl",
                                                              "fixed_kl", "fixed_switch_rate")}
        means["eval/response_tokens"] = _nanmean(per_seq["length"])
        loads, positions = per_seq["loads"].sum(), per_seq["load_positions"].sum()
        means["eval/loads_per_token"] = float(loads / positions.clamp_min(1))  # expert loads per token
        lists = {f"{k}_per_prompt": per_seq[k].tolist() for k in ("reward", "kl", "switch_rate", "fixed_kl")}
        run.logger.log_eval({"step": step, **means, **lists})


# ---------------------------------------------------------------------------------------------------------
# metrics of one rollout (per sequence, gathered over processes)
# ---------------------------------------------------------------------------------------------------------
def rollout_stats(batch: RolloutBatch, num_experts: int, eos_ids=()) -> dict[str, Tensor]:
    """Per-sequence statistics (B,) float32 and the pooled β values at decision positions; `loads` and
    `load_positions` count the answer tokens (`answer_positions`, EOS left out)."""
    valid = batch.valid
    answer = answer_positions(batch, eos_ids)
    n = valid.sum(1).clamp_min(1).float()
    reward = batch.rewards.sum(1) / n  # neg. KL per token (r_t is zero outside valid)
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
        "loads": expert_loads(masks[:, :valid.shape[1]], answer).sum(1),  # Σ_ℓ |ω_t \ ω_{t-1}| over t >= 1
        "load_positions": counted_positions(answer).sum(1).float(),
        "betas": traj.betas[dec].flatten(),
    }


#: Per-sequence rollout statistics logged as `rollout/<key>` (mean over sequences, NaN ones left out).
_ROLLOUT_KEYS = ("reward", "kl", "switch_rate", "repeat_fraction", "teacher_ppl", "termination_rate",
                 "importance_weight")


def step_record(accelerator: Accelerator, step: int, batch: RolloutBatch, num_experts: int,
                losses: dict[str, float], step_s: float, rollout_s: float) -> dict[str, Any]:
    """The step's metrics record (docs/training.md lists every key): losses and β statistics averaged over
    processes, per-sequence rollout statistics gathered from every process, throughput."""
    stats = rollout_stats(batch, num_experts)
    betas = stats.pop("betas")
    per_seq = {k: accelerator.gather(v.to(accelerator.device)) for k, v in stats.items()}
    local = {**losses,
             "rollout/switch_prob_mean": float(betas.mean()) if betas.numel() else float("nan"),
             "rollout/switch_prob_p95": float(betas.quantile(0.95)) if betas.numel() else float("nan"),
             "rollout/switch_prob_std": float(betas.std()) if betas.numel() > 1 else float("nan")}
    record = {"step": step, **_mean_over_processes(accelerator, local)}
    record.update({f"rollout/{k}": _nanmean(per_seq[k]) for k in _ROLLOUT_KEYS})
    tokens = float(per_seq["length"].sum())
    record["rollout/response_tokens"] = float(per_seq["length"].mean())
    record["perf/tokens_per_s"] = tokens / step_s
    record["perf/rollout_tokens_per_s"] = tokens / rollout_s
    record["perf/step_s"] = step_s
    return record


def _nanmean(v: Tensor) -> float:
    v = v[~v.isnan()]
    return float(v.mean()) if v.numel() else float("nan")


def _mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


# ---------------------------------------------------------------------------------------------------------
# set-up: model, dtype policy, prompts
# ---------------------------------------------------------------------------------------------------------
def setup(config: TrainConfig, resume: bool) -> Run:
    """Everything the loop needs: the student (base + LoRA + trainable routers), the controller, the teacher
    (the same weights, adapters off, original routers), optimisers, prompts, generators, logger; with
    `resume`, the state of `checkpoints/latest` restored."""
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    config.validate(accelerator.num_processes)
    rank = accelerator.process_index
    set_seed(config.seed)  # same on every process: identical controller and LoRA initialisation
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    model, tokenizer, eos_ids, pad_id = load_model_for_training(config, accelerator)
    model.to(accelerator.device)
    handle, controller, peft_model, teacher = build_student(config, model, accelerator.device)
    policy_params = [p for p in peft_model.parameters() if p.requires_grad]
    opt_ctrl = torch.optim.AdamW(controller.parameters(), lr=config.lr_controller,
                                 weight_decay=config.weight_decay)  # §5: controller lr 1e-4
    opt_policy = torch.optim.AdamW(policy_params, lr=config.lr_policy,
                                   weight_decay=config.weight_decay)  # §5: intra-option lr 2e-4
    ddp_model, ddp_replay, opt_ctrl, opt_policy = accelerator.prepare(
        peft_model, ControllerReplay(controller), opt_ctrl, opt_policy)
    # DDP replicas hold full weights: roll out on the unwrapped module (no collectives, so processes may stop
    # at different lengths). Sharded FSDP must run the wrapped module and the same number of steps everywhere.
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded:
        log.warning("FSDP path: rollouts through the sharded model, no early stop (untested without GPUs)")
    device = accelerator.device
    run = Run(config=config, accelerator=accelerator, handle=handle, controller=controller,
              peft_model=peft_model, ddp_model=ddp_model, ddp_replay=ddp_replay,
              rollout_model=ddp_model if sharded else peft_model, teacher=teacher,
              optimizers={"controller": opt_ctrl, "policy": opt_policy}, policy_params=policy_params,
              prompts=load_prompts(config, tokenizer, model.config.vocab_size, pad_id, eos_ids),
              generators={"sample": _generator(device, config.seed * 7919 + rank),
                          "controller": _generator(device, config.seed * 104729 + rank)},
              rollout_settings=rollout_settings(config, eos_ids, pad_id, early_stop=not sharded), logger=None,
              eta=config.controller.initial_eta, eta_integral=config.controller.initial_eta)
    if resume:
        run.checkpoint = resolve_checkpoint(config.out_dir)
        run.start_step = load_training_state(run.checkpoint, peft_model=peft_model, handle=handle,
                                             controller=controller, optimizers=run.optimizers,
                                             generators=run.generators, process_index=rank)
        _restore_trainer_state(run, read_meta(run.checkpoint).get("trainer_state", {}))
    if accelerator.is_main_process:
        config.save(Path(config.out_dir) / "config.yaml")
    run.logger = MetricsLogger(config.out_dir, total_steps=config.steps, start_step=run.start_step,
                               enabled=accelerator.is_main_process, progress=config.progress,
                               report_to=config.report_to, config=config.to_dict())
    return run


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def build_student(config: TrainConfig, model, device: torch.device):
    """(handle, controller, peft_model, teacher) for `model`: MoE wrapper, controllers with selection heads
    copied from the routers (A2), LoRA on experts and attention (+ trainable routers, §5), and the teacher
    context (adapters off, the routers as they were before any update)."""
    handle = temoe.wrap(model)
    k_hat = config.controller.k_hat
    if not handle.top_k <= k_hat <= handle.num_experts:
        raise ValueError(f"config key controller.k_hat={k_hat}: must satisfy top-k={handle.top_k} <= k_hat "
                         f"<= N={handle.num_experts} for {config.model}")
    original_routers = snapshot_routers(handle)  # the teacher's routing, frozen before any update
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    controller = OptionController.from_handle(handle, config.controller).to(device)
    peft_model = add_lora(model, handle, rank=config.lora_rank, alpha=config.lora_alpha,
                          attention=config.lora_attention, train_routers=config.train_routers)
    if config.mixed_precision != "no":  # trainable routers keep float32 master weights under autocast
        for router in handle.routers:
            router.float()
    return handle, controller, peft_model, lambda: teacher_mode(peft_model, handle, original_routers)


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


