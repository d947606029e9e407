"""Pretraining loop of the embedded gpt-oss MoE: corpus -> tokenizer -> model -> AdamW with cosine LR.

Resumable: `DIR/checkpoint.pt` holds model, optimizer, step and RNG states and is replaced atomically;
`DIR/metrics.jsonl` gets one line per logged step; `DIR/export/` (and `export_path`) get the HF directory.
Batches are a pure function of (seed, step) (see `corpus.Corpus.sample`), so resuming replays nothing.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, GenerationConfig, GptOssConfig, GptOssForCausalLM

from temoe.embedded.corpus import DRILL_SHARES, Corpus
from temoe.embedded.tokenizer import train_tokenizer


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pretraining run (written to DIR/config.json)."""

    steps: int = 2000
    """Optimizer steps (the cosine schedule spans exactly these)."""
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    """Cosine decays to lr * min_lr_ratio."""
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    vocab_size: int = 2048
    num_layers: int = 4
    hidden_size: int = 96
    intermediate_size: int = 96
    num_experts: int = 32
    top_k: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 24
    router_aux_loss_coef: float = 0.02
    """Switch-Transformer load-balancing loss weight (GptOssForCausalLM adds it with output_router_logits)."""
    drill_from_step: int | None = 5400
    """From this step on the mixture is `corpus.DRILL_SHARES` (adds letter lookup drills); None = never.
    Math and the facts are learnt before the letter lookup, so the drills start late (docs/embedded.md)."""
    natural_chars: int = 1_500_000
    """Characters read per natural-text source; small values make a quick CI corpus."""
    require_sources: bool = True
    """Fail with the `apt-get install` line when a Debian text source of the corpus is missing (False: build
    from the installed sources only, a different corpus). Nothing is installed."""
    tokenizer_task_docs: int = 20_000
    log_every: int = 10
    checkpoint_every: int = 50
    export_every: int = 100
    device: str = "cpu"
    time_budget_s: float | None = None
    """Wall-clock budget: when set, the cosine runs over min(steps, budget) and training stops at whichever
    ends first (for shared CPUs whose speed is unknown in advance); the reached step count is logged."""
    threads: int | None = None
    """torch CPU threads (1 avoids OpenMP spin-waiting on an oversubscribed machine); None = torch default."""
    init_from: str | None = None
    """Continued pretraining: start from this HF directory (or `tiny`) and its tokenizer instead of a fresh
    model; the optimizer, warmup and cosine start anew. The architecture fields above are then ignored."""
    data_offset: int = 0
    """Batch index = step + data_offset, so a continuation draws fresh batches after an earlier run's steps
    (the corpus split depends on `seed` only, so the held-out test items stay held out)."""
    shares: dict | None = None
    """Mixture for the whole run (keys of `corpus.DEFAULT_SHARES`, optionally `drill`); overrides the
    default / `drill_from_step` schedule."""
    revive_dead_experts: bool = False
    """Before training, give every expert that routes no token of a few batches a copy of its layer's
    busiest expert (weights, router row with small noise; both copies' router bias lowered by log 2)."""
    revive_min_share: float = 0.0
    """With `revive_dead_experts`: also revive experts below this fraction of the uniform routing share."""
    context_mask_fraction: float = 0.0
    """Share of steps run under *context masks*: per layer and position only the k̂ experts with the
    highest causal moving average of router probabilities may be routed (see `context_masks`)."""
    context_mask_k_hats: tuple[int, ...] = (12, 16, 20)
    """k̂ of a masked step, drawn uniformly from these."""
    context_mask_decay: float = 0.95
    """Decay of the causal moving average behind the context masks (0.95: ~20-token memory)."""
    context_mask_segment_share: float = 0.5
    """Share of masked steps whose masks are *segment* masks instead (`segment_masks`: the router's top-k̂ at
    a segment's first position, held for a random segment length, as an untrained controller's options)."""
    context_mask_segment_mean: float = 32.0
    """Mean segment length (geometric) of segment masks, in tokens."""
    context_mask_segment_sample: float = 0.0
    """Share of segment-masked steps whose sets are Plackett–Luce draws (Gumbel-top-k̂ of the router logits at
    the segment start) instead of the top-k̂, as a controller's sampled selections are."""

    def __post_init__(self) -> None:
        for key in ("context_mask_fraction", "context_mask_segment_share", "context_mask_segment_sample"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"PretrainConfig.{key} must be in [0, 1], got {getattr(self, key)}")
        if not 0.0 <= self.context_mask_decay < 1.0:
            raise ValueError("PretrainConfig.context_mask_decay must be in [0, 1), "
                             f"got {self.context_mask_decay}")
        if self.context_mask_segment_mean < 1.0:
            raise ValueError(f"PretrainConfig.context_mask_segment_mean must be >= 1 token, "
                             f"got {self.context_mask_segment_mean}")
        if self.revive_min_share < 0.0:
            raise ValueError(f"PretrainConfig.revive_min_share must be >= 0, got {self.revive_min_share}")
        if self.data_offset < 0:
            raise ValueError(f"PretrainConfig.data_offset must be >= 0, got {self.data_offset}")
        if self.context_mask_fraction > 0 and not self.context_mask_k_hats:
            raise ValueError("PretrainConfig.context_mask_k_hats is empty; give at least one k̂")


def _check_init_from(cfg: PretrainConfig) -> None:
    """Fail before anything is written when `init_from` is not a gpt-oss model or a k̂ does not fit it."""
    from transformers import AutoConfig

    from temoe.loading import resolve_model_path

    src = cfg.init_from
    num_experts, top_k = cfg.num_experts, cfg.top_k
    if src is not None:
        config = AutoConfig.from_pretrained(resolve_model_path(src))
        if config.model_type != "gpt_oss":
            raise ValueError(f"--init-from {src!r} is a {config.model_type!r} model; continued pretraining "
                             "of the embedded model supports gpt_oss only")
        num_experts, top_k = config.num_local_experts, config.num_experts_per_tok
    if cfg.context_mask_fraction > 0:
        bad = [k for k in cfg.context_mask_k_hats if not top_k <= k <= num_experts]
        if bad:
            raise ValueError(f"context-mask k̂ values {bad} are outside [k̃, N] = [{top_k}, {num_experts}]")


def model_config(cfg: PretrainConfig, tokenizer) -> GptOssConfig:
    """The gpt-oss configuration of the embedded model (paper-like routing: 32 experts, top-4)."""
    return GptOssConfig(
        num_hidden_layers=cfg.num_layers,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k,
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        sliding_window=128,
        max_position_embeddings=2048,
        # Plain RoPE: the default yarn scaling of gpt-oss is meant for 131k contexts.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        router_aux_loss_coef=cfg.router_aux_loss_coef,
        output_router_logits=True,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def make_batch(corpus: Corpus, tokenizer, cfg: PretrainConfig, step: int,
               late_corpus: Corpus | None = None) -> torch.Tensor:
    """Packed batch (B, S) of <|bos|> doc <|eos|> sequences; a pure function of (seed, step + data_offset).

    From `cfg.drill_from_step` on, documents come from `late_corpus` (the same corpus with DRILL_SHARES).
    """
    if late_corpus is not None and cfg.drill_from_step is not None and step >= cfg.drill_from_step:
        corpus = late_corpus
    rng = random.Random(f"batch-{cfg.seed}-{step + cfg.data_offset}")
    need = cfg.batch_size * cfg.seq_len
    ids: list[int] = []
    while len(ids) < need:
        docs = [corpus.sample(rng)[1] for _ in range(32)]
        for enc in tokenizer(docs)["input_ids"]:  # post-processor prepends <|bos|>
            ids.extend(enc)
            ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids[:need], dtype=torch.long).view(cfg.batch_size, cfg.seq_len)


def context_masks(logits: torch.Tensor, k_hat: int, decay: float) -> torch.Tensor:
    """Allowed experts (B, S, N) bool: per position the k̂ experts with the highest causal moving average
    m_t = Σ_{s≤t} decay^(t−s) p_s / Σ_{s≤t} decay^(t−s) of the router probabilities p_s = softmax(logits_s).

    Training part of the steps under these masks teaches the model what a large MoE has by redundancy and
    specialisation: a context's recent experts suffice for its next tokens, as they must for a rarely
    switching option (the paper's §2). Causal, so no later token leaks into an earlier position's mask.
    """
    B, S, N = logits.shape
    t = torch.arange(S, device=logits.device, dtype=torch.float32)
    lag = t[:, None] - t[None, :]
    w = torch.where(lag >= 0, decay ** lag.clamp(min=0), torch.zeros((), device=logits.device))
    w = w / w.sum(-1, keepdim=True)
    avg = torch.einsum("ts,bsn->btn", w, logits.float().softmax(-1))
    allowed = torch.zeros(B, S, N, dtype=torch.bool, device=logits.device)
    return allowed.scatter_(-1, avg.topk(k_hat, dim=-1).indices, True)


def segment_starts(batch: int, length: int, mean: float, generator: torch.Generator) -> torch.Tensor:
    """(B, S) index of the first position of each position's segment; boundaries are i.i.d. Bernoulli(1/mean)
    per position (geometric segment lengths), position 0 always starts one."""
    boundary = torch.rand(batch, length, generator=generator) < 1.0 / mean
    boundary[:, 0] = True
    idx = torch.arange(length).expand(batch, length)
    return torch.where(boundary, idx, torch.zeros_like(idx)).cummax(dim=1).values


def segment_masks(logits: torch.Tensor, k_hat: int, starts: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Allowed experts (B, S, N): at each position the router's top-k̂ at its segment's first position
    (`starts` from `segment_starts`); causal, since a segment starts at or before every position in it.

    With `generator`, each segment's set is a Plackett–Luce draw instead: the top-k̂ of the segment start's
    logits plus Gumbel(0, 1) noise (one draw per segment start, shared by the segment's positions).
    """
    B, S, N = logits.shape
    logits = logits.float()
    if generator is not None:
        noise = torch.empty(B, S, N).exponential_(generator=generator).clamp_min(1e-30).log().neg()
        logits = logits + noise.to(logits.device)
    first = logits.gather(1, starts.to(logits.device)[..., None].expand(B, S, N))
    allowed = torch.zeros(B, S, N, dtype=torch.bool, device=logits.device)
    return allowed.scatter_(-1, first.topk(k_hat, dim=-1).indices, True)


class MaskPlan(NamedTuple):
    """How one pretraining step is masked: k̂, kind ("ema" or "segment") and the segment starts (or None)."""

    k_hat: int
    kind: str
    starts: torch.Tensor | None
    noise_seed: int | None = None
    """Seed of the Gumbel noise of sampled segment sets (None: top-k̂ sets)."""


def masked_step_plan(cfg: PretrainConfig, step: int) -> MaskPlan | None:
    """The context-mask plan of step `step`, or None for an unmasked step; a pure function of (seed, step)."""
    if cfg.context_mask_fraction <= 0:
        return None
    rng = random.Random(f"mask-{cfg.seed}-{step + cfg.data_offset}")
    masked = rng.random() < cfg.context_mask_fraction
    k_hat = rng.choice(list(cfg.context_mask_k_hats))
    segment = rng.random() < cfg.context_mask_segment_share
    if not masked:
        return None
    if not segment:
        return MaskPlan(k_hat, "ema", None)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    starts = segment_starts(cfg.batch_size, cfg.seq_len, cfg.context_mask_segment_mean, gen)
    if rng.random() < cfg.context_mask_segment_sample:
        return MaskPlan(k_hat, "segment-sampled", starts, rng.randrange(2**31))
    return MaskPlan(k_hat, "segment", starts)


@torch.no_grad()
def revive_dead_experts(model: GptOssForCausalLM, batches: list[torch.Tensor], noise: float = 0.01,
                        seed: int = 0, min_share: float = 0.0) -> list[tuple[int, int, int]]:
    """Copy each layer's busiest expert into its experts that route no token of `batches` (or, with
    `min_share` > 0, fewer than `min_share` × the uniform share N⁻¹ of the layer's routings).

    Returns (layer, dead expert, source expert) triples. The copy's router row gets Gaussian noise of std
    `noise` × the row's RMS so the two copies can diverge; both biases drop by log 2, so when both are
    routed their summed weight matches the source's alone.
    """
    from temoe.moe.wrap import wrap

    handle = wrap(model)
    counts = torch.zeros(handle.num_layers, handle.num_experts)
    try:
        with handle.trace() as trace:
            for batch in batches:
                model(input_ids=batch)
        for i in range(handle.num_layers):
            ids = trace.expert_ids(i).reshape(-1)
            counts[i] += torch.bincount(ids.cpu(), minlength=handle.num_experts).float()
    finally:
        handle.unwrap()
    gen = torch.Generator().manual_seed(seed)
    revived = []
    for i, layer in enumerate(model.model.layers):
        floor = min_share * float(counts[i].sum()) / handle.num_experts
        dead = (counts[i] <= floor).nonzero().flatten().tolist()
        mlp = layer.mlp
        for e in dead:
            src = int(counts[i].argmax())
            for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
                param = getattr(mlp.experts, name)
                param[e] = param[src]
            row = mlp.router.weight[src]
            jitter = torch.randn(row.shape, generator=gen).to(row) * noise * row.pow(2).mean().sqrt()
            mlp.router.weight[e] = row + jitter
            mlp.router.bias[src] -= math.log(2)
            mlp.router.bias[e] = mlp.router.bias[src]
            counts[i, src] /= 2
            counts[i, e] = counts[i, src]
            revived.append((i, e, src))
    return revived


def lr_at(step: int, cfg: PretrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at cfg.steps (or the time budget, if sooner)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.time_budget_s is not None:
        progress = max(progress, min(1.0, elapsed_s / cfg.time_budget_s))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def load_checkpoint(path: Path, device) -> dict:
    """The pre-training checkpoint: tensors, numbers and strings only (`weights_only=True`), never code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds objects other than tensors and numbers; refusing to load it: "
                         f"{str(err).splitlines()[0]}") from None


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export(model: GptOssForCausalLM, tokenizer, path: Path) -> None:
    """Write the HF directory (safetensors, config without router logits, tokenizer, generation config)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.config.output_router_logits = False
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    model.save_pretrained(tmp, safe_serialization=True)
    model.config.output_router_logits = True
    tokenizer.save_pretrained(tmp)
    if path.exists():
        old = path.with_name(path.name + ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, path)


def pretrain(out: Path, cfg: PretrainConfig, resume: bool = False, export_path: Path | None = None) -> dict:
    """Run (or resume) pretraining in `out`; returns the last logged metrics."""
    _check_init_from(cfg)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    corpus = Corpus(seed=cfg.seed, natural_chars=cfg.natural_chars, require_sources=cfg.require_sources)
    late_corpus = None if cfg.drill_from_step is None else corpus.with_shares(DRILL_SHARES)
    if cfg.shares is not None:
        corpus, late_corpus = corpus.with_shares(cfg.shares), None
    tok_dir = out / "tokenizer"
    if cfg.init_from is not None:
        from temoe.loading import resolve_model_path

        src = resolve_model_path(cfg.init_from)
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = GptOssForCausalLM.from_pretrained(src, dtype=torch.float32).to(cfg.device)
        model.config.output_router_logits = True
        model.config.router_aux_loss_coef = cfg.router_aux_loss_coef
        tokenizer.save_pretrained(tok_dir)
    else:
        # The tokenizer is a deterministic function of (seed, corpus, vocab size): reuse it when trained.
        if tok_dir.exists() and len(AutoTokenizer.from_pretrained(tok_dir)) == cfg.vocab_size:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        else:
            tokenizer = train_tokenizer(corpus, cfg.vocab_size, task_docs=cfg.tokenizer_task_docs)
            tokenizer.save_pretrained(tok_dir)
        model = GptOssForCausalLM(model_config(cfg, tokenizer)).to(cfg.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    step, elapsed = 0, 0.0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, cfg.device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed = ckpt["step"], ckpt.get("elapsed_s", 0.0)
        torch.set_rng_state(ckpt["torch_rng"])
        print(f"[temoe] resumed from {ckpt_path} at step {step}")
    elif cfg.revive_dead_experts:
        probe = [make_batch(corpus, tokenizer, cfg, -1 - j).to(cfg.device) for j in range(4)]
        revived = revive_dead_experts(model, probe, seed=cfg.seed, min_share=cfg.revive_min_share)
        for layer, dead, src in revived:
            print(f"[temoe] revived dead expert {dead} of MoE layer {layer} as a copy of expert {src}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"[temoe] gpt-oss MoE: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, device {cfg.device}"
    )

    def save() -> None:
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed_s": elapsed,
                "torch_rng": torch.get_rng_state(),
                "config": asdict(cfg),
            },
            ckpt_path,
        )

    handle = None
    if cfg.context_mask_fraction > 0:
        from temoe.moe.wrap import wrap

        handle = wrap(model)
        router_logits = handle.router_logits
        current: dict[str, MaskPlan] = {}

        def mask_fn(i: int, hidden: torch.Tensor) -> torch.Tensor:
            plan = current["plan"]
            with torch.no_grad():
                logits = router_logits(i, hidden)
            if plan.kind == "segment":
                return segment_masks(logits, plan.k_hat, plan.starts)
            if plan.kind == "segment-sampled":
                gen = torch.Generator().manual_seed(plan.noise_seed + i)
                return segment_masks(logits, plan.k_hat, plan.starts, gen)
            return context_masks(logits, plan.k_hat, cfg.context_mask_decay)

    model.train()
    last: dict = {}
    t0 = time.time() - elapsed
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", dynamic_ncols=True)
    with (out / "metrics.jsonl").open("a") as log:
        while step < cfg.steps and not (cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s):
            batch = make_batch(corpus, tokenizer, cfg, step, late_corpus).to(cfg.device)
            lr = lr_at(step, cfg, elapsed)
            for group in opt.param_groups:
                group["lr"] = lr
            plan = masked_step_plan(cfg, step) if handle is not None else None
            if plan is None:
                outputs = model(input_ids=batch, labels=batch)
            else:
                current["plan"] = plan
                with handle.restrict(mask_fn):
                    outputs = model(input_ids=batch, labels=batch)
            opt.zero_grad(set_to_none=True)
            outputs.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            elapsed = time.time() - t0
            bar.update(1)
            done = step == cfg.steps or (cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s)
            if step % cfg.log_every == 0 or done:
                aux = float(outputs.aux_loss.detach())
                last = {
                    "step": step,
                    "tokens": step * cfg.batch_size * cfg.seq_len,
                    "loss/total": float(outputs.loss),
                    "loss/lm": float(outputs.loss) - cfg.router_aux_loss_coef * aux,
                    "loss/router_aux": aux,
                    "masked_k_hat": None if plan is None else plan.k_hat,
                    "mask_kind": None if plan is None else plan.kind,
                    "grad_norm": float(grad_norm),
                    "lr": lr,
                    "elapsed_s": round(elapsed, 1),
                    "tokens_per_s": round(step * cfg.batch_size * cfg.seq_len / max(elapsed, 1e-9), 1),
                }
                log.write(json.dumps(last) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last['loss/lm']:.3f}", aux=f"{aux:.3f}")
            if step % cfg.checkpoint_every == 0 or done:
                save()
            if step % cfg.export_every == 0 or done:
                export(model, tokenizer, out / "export")
    bar.close()
    if handle is not None:
        handle.unwrap()
    if export_path is not None:
        export(model, tokenizer, export_path)
    return last
