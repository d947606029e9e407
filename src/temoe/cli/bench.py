"""`temoe bench` (placeholder until its issue lands; the owning work replaces this file)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError("temoe bench is not implemented yet")
