"""temoe.serve: the offloading serving engine (policy in `policy`, mechanism in `store`/`slots`, execution in
`engine`), generation (`generate_offloaded`), statistics, the OpenAI-compatible server and the
bench ladder."""

from __future__ import annotations

__all__ = ["generate_offloaded", "OffloadEngine", "make_policy"]


def __getattr__(name: str):
    # Lazy: importing temoe.serve (e.g. from the CLI) must not import torch/transformers eagerly.
    if name == "generate_offloaded":
        from temoe.serve.generate import generate_offloaded

        return generate_offloaded
    if name in ("OffloadEngine", "make_policy"):
        from temoe.serve import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'temoe.serve' has no attribute {name!r}")
