"""`temoe pretrain` (placeholder until its issue lands; the owning work replaces this file)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError("temoe pretrain is not implemented yet")
