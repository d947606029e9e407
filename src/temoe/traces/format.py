"""The routing-trace JSONL format: one JSON object per sequence with the routed expert ids of every generated
token in every MoE layer (docs/traces.md). Reading validates every record; writing never overwrites silently.

Record: `{"id", "category", "k_tilde": k, "num_experts": N, "layers": [[[e_1..e_k] per token] per layer]}`,
optionally `"allowed": [[[t, [ids]] at each change] per layer]` (the allowed set from generated position t
on).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["read_trace", "write_trace", "validate_record", "allowed_at"]

_REQUIRED = ("id", "k_tilde", "num_experts", "layers")


def validate_record(record: dict, where: str = "record") -> dict:
    """Check one trace record's fields, shapes and id ranges; returns it unchanged or raises ValueError."""
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}; required: {', '.join(_REQUIRED)}")
    k, n, layers = record["k_tilde"], record["num_experts"], record["layers"]
    if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n):
        raise ValueError(f"{where}: need integers 1 <= k_tilde <= num_experts, got {k!r} and {n!r}")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{where}: 'layers' must be a non-empty list (one list of tokens per MoE layer)")
    lengths = {len(tokens) for tokens in layers}
    if len(lengths) != 1:
        raise ValueError(f"{where}: MoE layers have different token counts {sorted(lengths)}")
    for i, tokens in enumerate(layers):
        bad = [t for t, ids in enumerate(tokens) if len(set(ids)) != k or len(ids) != k
               or min(ids) < 0 or max(ids) >= n]
        if bad:
            raise ValueError(f"{where}: layer {i} token {bad[0]} routes to {tokens[bad[0]]}; expected {k} "
                             f"distinct expert ids in 0..{n - 1}")
    if "allowed" in record:
        _validate_allowed(record, where)
    return record


def _validate_allowed(record: dict, where: str) -> None:
    allowed, n = record["allowed"], record["num_experts"]
    if len(allowed) != len(record["layers"]):
        raise ValueError(f"{where}: 'allowed' has {len(allowed)} layers, 'layers' has "
                         f"{len(record['layers'])}")
    for i, changes in enumerate(allowed):
        starts = [t for t, _ in changes]
        if not starts or starts[0] != 0 or starts != sorted(set(starts)):
            raise ValueError(f"{where}: 'allowed' of layer {i} must start at position 0 and increase, "
                             f"got positions {starts}")
        for t, ids in changes:
            if not ids or not all(0 <= e < n for e in ids):
                raise ValueError(f"{where}: layer {i} allowed set at {t} is {ids}; expected ids in "
                                 f"0..{n - 1}")


def allowed_at(changes: list, num_tokens: int) -> list[frozenset[int]]:
    """Expand one layer's `[[t, ids], ...]` change list into the allowed set of each of `num_tokens`
    tokens."""
    out: list[frozenset[int]] = []
    for j, (start, ids) in enumerate(changes):
        end = changes[j + 1][0] if j + 1 < len(changes) else num_tokens
        out.extend([frozenset(ids)] * (min(end, num_tokens) - start))
    return out


def read_trace(path: str | Path) -> Iterator[dict]:
    """Yield the validated records of a trace file (blank lines skipped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                yield validate_record(json.loads(line), f"{path}:{line_no}")


def write_trace(path: str | Path, records: Iterable[dict], overwrite: bool = False) -> int:
    """Write records, one JSON line each; refuses an existing file unless `overwrite`. Returns the count."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{str(path)!r} exists; choose another output path or remove it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            count += 1
    return count
