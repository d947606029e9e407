"""`load_model(name_or_path)`: the embedded model by short name (`tiny`), a local HF model directory, or a
random tiny test model (`tiny-random:<model_type>`, alias `testing:<model_type>`)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from temoe.embedded import MODELS

#: Name prefixes of the random tiny from-config test models (`temoe.testing`), e.g. `tiny-random:mixtral`.
TINY_RANDOM_PREFIXES = ("tiny-random:", "testing:")


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
        f"embedded names: {', '.join(sorted(MODELS))}; random test models: tiny-random:<model_type> "
        f"(model hubs are not used)"
    )


def load_model(
    name_or_path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) in eval mode; `dtype` defaults to the checkpoint's, `device` to CPU.

    `tiny-random:<model_type>` builds `temoe.testing.tiny_model(model_type)` (seed 0, float32 unless `dtype`)
    with the offline character tokenizer: no files, for tests and CPU examples.
    """
    if str(name_or_path).startswith(TINY_RANDOM_PREFIXES):
        from temoe.testing import tiny_model
        from temoe.testing_tokenizer import tiny_tokenizer

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        model = tiny_model(str(name_or_path).split(":", 1)[1], seed=0, dtype=dtype or torch.float32)
        return (model if device is None else model.to(device)), tiny_tokenizer()
    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto")
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
