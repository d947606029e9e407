"""temoe: temporally extended Mixture-of-Experts (Shen & Henderson, arXiv 2604.20156).

Public entry points: `temoe.wrap(model)` (masked routing and tracing on a HF MoE model),
`temoe.load_model(name)` (the one resolver of model names: the embedded `tiny`, a local HF directory, the
random `tiny-random:<model_type>` and `gpt-oss-20b-random[:LAYERS]`), `temoe.metrics`, `temoe.options`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["wrap", "load_model", "MoEHandle"]


def __getattr__(name: str):
    # Lazy so that `import temoe` (and the CLI's --help) does not import torch/transformers eagerly.
    if name in ("wrap", "MoEHandle"):
        from temoe.moe import wrap as _wrap_module

        return getattr(_wrap_module, name)
    if name == "load_model":
        from temoe.loading import load_model

        return load_model
    raise AttributeError(f"module 'temoe' has no attribute {name!r}")
