"""The training configuration: one frozen dataclass with the controller's as a nested section, loaded from
YAML plus `key=value` overrides (`controller.KEY=VALUE` for the controller section).

Defaults are the paper's (Shen & Henderson 2026, §5 "Training details" and App. A2); each field says where
its value comes from. `TrainConfig.validate()` rejects contradictory settings early, naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from temoe.controller.config import AUTO, ControllerConfig
from temoe.validation import TRAIN_RANGES, check_fields

CONTROLLER = "controller"
"""The nested section holding a `ControllerConfig`."""
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `temoe.train.train` needs; the resolved copy is written to `OUT_DIR/config.yaml`."""

    # --- what to train -------------------------------------------------------------------------------------
    model: str = "tiny"
    """`temoe.load_model` name: "tiny" (the embedded gpt-oss-architecture model) or a local HF directory.
    gpt-oss MXFP4 checkpoints are dequantised to bf16 as in the paper (§5: "dequantized to bf16")."""
    prompts: str = "embedded:prompts.jsonl"
    """JSONL file with a `prompt` field per line; `embedded:NAME` means `temoe.embedded.data_path(NAME)`.
    (The paper used Nemotron Post-Training v2, §5.)"""
    out_dir: str = "runs/train"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/step_XXXXXX/, checkpoints/latest."""
    dtype: str = "auto"
    """Weight dtype when loading the model (`auto` = the checkpoint's own). One of DTYPES."""

    # --- the option controllers (§4.2, A2) and their deliberation cost η ---------------------------------
    controller: ControllerConfig = field(default_factory=lambda: ControllerConfig(k_hat=16))
    """k̂, η, the controller networks' sizes and the temoe extensions (`temoe.controller.ControllerConfig`; the
    YAML section `controller:`, overrides `controller.KEY=VALUE`). Default k̂ = 16 (§5, with N = 32)."""

    # --- returns and losses (§4, App. A2) ------------------------------------------------------------------
    gamma: float = 0.95
    """Discount γ for GAE and the Monte-Carlo return Ḡ (§5: γ = 0.95)."""
    lam: float = 0.95
    """GAE parameter λ (§5: λ = 0.95)."""
    value_coef: float = 0.01
    """Weight of the critic loss (V − V̂)² + (Q − Q̂)² in the controller loss (§5: 0.01)."""
    reward_scale: float = 1.0 / 512
    """Multiplier on r_t before returns/critics. The paper is silent; the authors' code divides by 512, the
    scale at which the paper's η ∈ {0.02..0.04} was tuned: the scale sets how large Q − V is against η. The
    logged `rollout/reward` is never scaled."""

    # --- rollout (§5 "Training details") -------------------------------------------------------------------
    prompts_per_step: int = 16
    """Prompts per optimisation step, over all processes (§5: 16). Must divide by the process count."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (in tokens, after the chat template) are skipped (§5: 512)."""
    max_new_tokens: int = 512
    """Response length T per rollout (§5: 512)."""
    tau: float = 0.2
    """Teacher mixing τ in p_mix = (1 − τ) p_student + τ p_teacher (§5: τ = 0.2)."""
    temperature: float = 1.0
    """Sampling temperature applied to both student and teacher logits before mixing (§5: 1.0)."""
    top_p: float = 0.95
    """Nucleus applied to p_mix, then renormalised; the token is drawn from that (§5: top-p 0.95). Importance
    weights use this truncated distribution."""
    chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template (when it has one) with a generation prompt."""

    # --- optimisation (§5) ---------------------------------------------------------------------------------
    lr_controller: float = 1e-4
    """AdamW learning rate of the controllers: termination, selection, critics (§5: 1e-4)."""
    lr_policy: float = 2e-4
    """AdamW learning rate of the intra-option policy: LoRA + router weights (§5: 2e-4)."""
    weight_decay: float = 0.0
    """AdamW weight decay of both optimisers (authors' code: 0.0)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip, applied to each optimiser's parameters separately (authors' code: 1.0)."""
    lora_rank: int = 16
    """LoRA rank r on expert and attention weights (§5: r = 16)."""
    lora_alpha: float = 16.0
    """LoRA α (§5: α = 16)."""
    lora_attention: bool = True
    """Also put LoRA on the attention projections (§5: "to both expert parameters and attention")."""
    train_routers: bool = True
    """Router weights are part of θ (§5: "Router weights are also trainable")."""
    micro_batch_size: int = 0
    """Sequences per replay forward/backward of the intra-option loss (gradient accumulation inside a step);
    0 = the whole per-process batch at once."""

    # --- run control ---------------------------------------------------------------------------------------
    steps: int = 120
    """Optimisation steps (§5: checkpoints evaluated at step 120 for k̂ = 16, 300 for k̂ = 8)."""
    seed: int = 42
    """Seed of prompts order, sampling and initialisation (§5: 42)."""
    checkpoint_every: int = 20
    """Save a checkpoint every this many steps (and always at the last step); 0 = only at the end."""
    keep_checkpoints: int = 2
    """Keep the newest this many step checkpoints; 0 = keep all."""
    gradient_checkpointing: bool = False
    """Recompute activations in the replay backward (needed for gpt-oss-20b on one GPU)."""
    mixed_precision: str = "no"
    """accelerate mixed precision: "no", "bf16" or "fp16" (GPU). RL arithmetic always stays float32."""
    report_to: tuple[str, ...] = field(default_factory=tuple)
    """Extra loggers: "tensorboard" and/or "wandb" (only if installed). metrics.jsonl is always written."""
    eval_every: int = 0
    """Every this many steps (and before the first and after the last), roll out the controller on a fixed
    batch of `eval_prompts` probe prompts with fixed sampling seeds, without updating anything, and append
    the reward and switch rate to `eval.jsonl`. Same prompts and seeds at every probe, so the curve shows what
    training changed without the prompt-mix noise of `rollout/reward`. 0 = off."""
    eval_prompts: int = 16
    """Probe prompts: the last ones of the first epoch's prompt order, held out from training while
    steps × prompts_per_step <= usable prompts − eval_prompts (a warning says when they are not)."""
    progress: bool = True
    """Show a progress bar on the main process."""
    cpu_threads: int = 0
    """torch intra-op threads per process (0 = torch's default); tiny models on a busy CPU prefer 1."""

    def validate(self, num_processes: int = 1) -> TrainConfig:
        """Fail early, naming the key, on values that cannot work together (the controller section checks
        itself when built)."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"config key {key}={getattr(self, key)!r}: {why}")

        ranges = {k: v for k, v in TRAIN_RANGES.items() if k != "eta" or not self.controller.eta_auto}
        check_fields(self, ranges)  # every float finite, nested controller included; ranges
        if self.eval_every < 0:
            raise bad("eval_every", "must be >= 0 (0 = no probes)")
        if self.eval_prompts < 1 or self.eval_prompts % num_processes:
            raise bad("eval_prompts", f"must be >= 1 and divisible by the {num_processes} process(es)")
        if not 0.0 <= self.tau < 1.0:
            raise bad("tau", "must be in [0, 1): the student must keep some probability mass")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if self.temperature <= 0:
            raise bad("temperature", "must be > 0")
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "must be in [0, 1]")
        if self.cpu_threads < 0:
            raise bad("cpu_threads", "must be >= 0")
        for key in ("steps", "prompts_per_step", "max_new_tokens", "max_prompt_tokens", "lora_rank"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.prompts_per_step % num_processes:
            raise bad("prompts_per_step", f"must be divisible by the number of processes ({num_processes})")
        if self.micro_batch_size < 0:
            raise bad("micro_batch_size", "must be >= 0")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"must be one of {', '.join(MIXED_PRECISION)}")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"must be one of {', '.join(DTYPES)}")
        unknown = set(self.report_to) - {"tensorboard", "wandb"}
        if unknown:
            raise bad("report_to", "valid entries are tensorboard, wandb")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0:
            raise bad("checkpoint_every" if self.checkpoint_every < 0 else "keep_checkpoints", "must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every field; the controller as a nested `controller` mapping (the YAML layout)."""
        out = dataclasses.asdict(self)
        out["report_to"] = list(self.report_to)
        return out

    def flat(self) -> dict[str, Any]:
        """Every field with the controller's under dotted keys (`controller.eta`), e.g. to compare configs."""
        return flatten(self.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (every field, defaults included)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or fail naming the key."""

    def fail() -> ValueError:
        return ValueError(f"config key {key}: cannot read {value!r} as {getattr(tp, '__name__', tp)}")

    if set(typing.get_args(tp)) == {float, str}:  # controller.eta: a number or "auto"
        return AUTO if str(value).strip().lower() == AUTO else _coerce(key, float, value)
    if typing.get_origin(tp) is tuple:
        items = [v for v in value.split(",") if v] if isinstance(value, str) else list(value or ())
        return tuple(str(v) for v in items)
    if tp is str:
        return str(value)
    if isinstance(value, bool) and tp is not bool:
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        truthy, falsy = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
        if str(value).lower() not in truthy + falsy:
            raise fail()
        return str(value).lower() in truthy
    try:
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise fail()
            return int(value)
        if tp is float:
            if isinstance(value, str) and "/" in value:  # e.g. reward_scale=1/512
                num, den = value.split("/")
                return float(num) / float(den)
            return float(value)
    except (TypeError, ValueError):
        raise fail() from None
    raise TypeError(f"unsupported config field type {tp!r} for {key}")


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """`{"controller": {"eta": 0.02}, "steps": 5}` -> `{"controller.eta": 0.02, "steps": 5}`."""
    out = {}
    for key, value in values.items():
        if key == CONTROLLER and isinstance(value, dict):
            out.update({f"{CONTROLLER}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _field_types() -> dict[str, Any]:
    """Type of every config key: TrainConfig's fields, and ControllerConfig's as `controller.KEY`."""
    hints = typing.get_type_hints(TrainConfig)
    out = {f.name: hints[f.name] for f in fields(TrainConfig) if f.name != CONTROLLER}
    ctrl = typing.get_type_hints(ControllerConfig)
    out.update({f"{CONTROLLER}.{f.name}": ctrl[f.name] for f in fields(ControllerConfig)})
    return out


def _unknown_keys_error(unknown: list[str], types_: dict[str, Any]) -> ValueError:
    hints = [f"{k} (did you mean {CONTROLLER}.{k}?)" if f"{CONTROLLER}.{k}" in types_ else k for k in unknown]
    return ValueError(f"unknown config key(s) {', '.join(hints)}; valid keys: {', '.join(types_)}")


def _controller(values: dict[str, Any]) -> ControllerConfig:
    """The controller section over TrainConfig's default one; its errors name the `controller.` key."""
    default = dataclasses.asdict(TrainConfig.__dataclass_fields__[CONTROLLER].default_factory())
    try:
        return ControllerConfig(**{**default, **values})
    except ValueError as e:
        raise ValueError(str(e).replace("ControllerConfig.", f"config key {CONTROLLER}.", 1)) from None


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["controller.k_hat=8", "steps=3"]` -> `{"controller.k_hat": "8", "steps": "3"}`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    num_processes: int = 1,
) -> TrainConfig:
    """Defaults <- YAML file at `path` (a file path or `name` of a shipped `temoe/configs/NAME.yaml`)
    <- `overrides` (dict or `key=value` strings). Controller keys are `controller.KEY` (or a nested
    `controller` mapping). Unknown keys fail listing the valid ones."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(flatten(read_yaml(resolve_config_path(path))))
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values.update(flatten(overrides or {}))
    types_ = _field_types()
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise _unknown_keys_error(unknown, types_)
    kwargs = {k: _coerce(k, types_[k], v) for k, v in values.items()}
    prefix = f"{CONTROLLER}."
    ctrl = {k.removeprefix(prefix): kwargs.pop(k) for k in list(kwargs) if k.startswith(prefix)}
    return TrainConfig(**kwargs, controller=_controller(ctrl)).validate(num_processes)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; ValueError naming the file and line when it is not one."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        why = getattr(err, "problem", None) or err
        raise ValueError(f"config {path}{line}: not valid YAML ({why})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config {path}: expected a mapping of key: value, got {type(values).__name__}")
    return values


def shipped_configs() -> list[str]:
    """Names of the YAML configs shipped in `temoe/configs/`."""
    return sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A path to an existing file, or the name of a shipped config (`tiny`, `gpt-oss-20b`)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = Path(__file__).resolve().parents[1] / "configs" / f"{path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(shipped_configs())
    raise FileNotFoundError(f"config {str(path)!r} not found; shipped configs: {names}")
