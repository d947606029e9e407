"""`load_model(name)`: the one resolver of model names for every command, the trainer and the server.

Names: `tiny` (the embedded model), a local HF model directory, `tiny-random:<model_type>` (alias
`testing:<model_type>`: a random tiny from-config model) and `gpt-oss-20b-random[:LAYERS]` (the real
gpt-oss-20b shape with random bf16 weights). Model hubs are never used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from temoe.embedded import MODELS

log = logging.getLogger("temoe.loading")

#: Name prefixes of the random tiny from-config models (`temoe.models.tiny_model`): `tiny-random:mixtral`.
TINY_RANDOM_PREFIXES = ("tiny-random:", "testing:")
#: Name of the gpt-oss-20b-shaped random model (`temoe.models.gpt_oss_20b_random`); `:LAYERS` cuts its depth.
GPT_OSS_20B_RANDOM = "gpt-oss-20b-random"


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Directory of an embedded model name or of a local HF checkpoint; ValueError listing the valid names."""
    key = str(name_or_path)
    if key in MODELS:
        path = MODELS[key]
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"embedded model {key!r} is missing its files at {path}; reinstall temoe")
        return path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is a directory but has no config.json (not a HF model directory)"
            )
        return path
    raise ValueError(
        f"unknown model {key!r}: not an embedded model name and not a local directory; "
        f"embedded names: {', '.join(sorted(MODELS))}; random models: tiny-random:<model_type>, "
        f"{GPT_OSS_20B_RANDOM}[:LAYERS] (model hubs are not used)"
    )


def load_model(
    name_or_path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    *,
    num_layers: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) in eval mode; the tokenizer always has a pad token (its EOS when it had none).

    dtype: weight dtype (default: the checkpoint's; float32 for tiny random models; bf16 for the random
    gpt-oss-20b and for gpt-oss MXFP4 checkpoints, which load dequantised because LoRA needs dense weights).
    device: where the weights go (default CPU); `gpt-oss-20b-random` is materialised there directly.
    num_layers: depth of a random model (`tiny-random:*`, `gpt-oss-20b-random`; the `:LAYERS` suffix says the
    same). A name means the same weights everywhere: the random models are seeded with 0.
    """
    name = str(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if name.startswith(TINY_RANDOM_PREFIXES):
        return _tiny_random(name, dtype, device, num_layers)
    if name.split(":", 1)[0] == GPT_OSS_20B_RANDOM:
        return _gpt_oss_20b_random(name, device, num_layers)
    if num_layers is not None:
        raise ValueError(f"num_layers only applies to tiny-random:* and {GPT_OSS_20B_RANDOM} models, "
                         f"not to {name!r}")
    path = resolve_model_path(name_or_path)
    model = _from_pretrained(path, dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _tiny_random(name: str, dtype, device, num_layers: int | None):
    """`tiny-random:<model_type>`: `temoe.models.tiny_model` with the character tokenizer."""
    from temoe.models import char_tokenizer, tiny_model

    model_type = name.split(":", 1)[1]  # an unknown type fails in tiny_config, listing the valid ones
    overrides = {"num_hidden_layers": num_layers} if num_layers else {}
    model = tiny_model(model_type, seed=0, dtype=dtype or torch.float32, **overrides)
    return (model if device is None else model.to(device)), char_tokenizer()


def _gpt_oss_20b_random(name: str, device, num_layers: int | None):
    """`gpt-oss-20b-random[:LAYERS]`: `temoe.models.gpt_oss_20b_random` built on `device` (default CPU)."""
    from temoe.models import gpt_oss_20b_random

    _, _, layers = name.partition(":")
    if layers:
        if not (layers.isdigit() and int(layers) > 0):
            raise ValueError(f"model {name!r}: expected {GPT_OSS_20B_RANDOM}[:LAYERS], LAYERS a positive "
                             "integer")
        if num_layers is not None and num_layers != int(layers):
            raise ValueError(f"model {name!r} names {layers} layers but num_layers={num_layers}")
        num_layers = int(layers)
    device = torch.device(device if device is not None else "cpu")
    log.info("dtype policy: gpt-oss-20b-shaped random model in bf16 on %s", device)
    return gpt_oss_20b_random(device, num_layers, seed=0)


def _from_pretrained(path: Path, dtype: torch.dtype | None) -> PreTrainedModel:
    """The HF model in `path`; gpt-oss MXFP4 checkpoints dequantised (default bf16, grouped-mm experts)."""
    quant = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    if quant.get("quant_method") != "mxfp4":
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto")
    from transformers import Mxfp4Config

    dtype = dtype or torch.bfloat16
    log.info("dtype policy: MXFP4 checkpoint dequantised to %s (LoRA needs dense weights, §5)", dtype)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=Mxfp4Config(dequantize=True),
        experts_implementation="grouped_mm",
    )
