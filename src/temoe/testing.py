"""Test helpers: the tiny from-config models and character tokenizer (`temoe.models`) under their test
names, and `TINY_TRAIN`, training overrides that make a run on a tiny model take seconds.

Only tests and CPU examples import this module; product code uses `temoe.models` and `temoe.load_model`.
"""

from __future__ import annotations

from temoe.models import _COMMON, TINY_MODEL_TYPES, char_tokenizer, tiny_config, tiny_model

__all__ = ["TINY_MODEL_TYPES", "TINY_TRAIN", "_COMMON", "char_tokenizer", "tiny_config", "tiny_model"]

#: `temoe.train.load_config` overrides that make a training run on `tiny_model("gpt_oss")` take seconds:
#: the paper's algorithm at toy widths (tests and CPU examples; merge your own keys on top).
TINY_TRAIN = {
    "model": "testing:gpt_oss",
    "controller.k_hat": 4,
    "prompts_per_step": 2,
    "max_new_tokens": 4,
    "controller.hidden": 16,
    "controller.expert_embed_dim": 8,
    "lora_rank": 2,
    "lora_alpha": 2,
    "progress": False,
    "cpu_threads": 1,
}
