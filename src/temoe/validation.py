"""Number validation shared by the CLI (argparse `type=`), YAML configs, the Python API and the server.

A `Range` names the valid values once; `Range.check` raises ValueError naming the key, the bad value and
the valid range, `Range.arg` is the argparse `type=` for the same check. NaN and infinities are never valid.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Finite numbers between `lo` and `hi` (None = unbounded); `integer` admits whole numbers only."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    """Exclude `lo` itself (e.g. top_p in (0, 1])."""
    hi_open: bool = False
    """Exclude `hi` itself."""
    integer: bool = False

    def describe(self) -> str:
        """The valid values in words: "a finite number in (0, 1]", "an integer >= 1"."""
        kind = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{kind} in {left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return kind

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def check(self, name: str, value):
        """`value` if it lies in the range, else ValueError "NAME=VALUE: must be <describe()>"."""
        if not self.contains(value):
            raise ValueError(f"{name}={value!r}: must be {self.describe()}")
        return int(value) if self.integer else value

    def arg(self, text: str):
        """argparse `type=`: parse `text` and check it (argparse adds the flag's name to the message)."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}")
        return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


# The ranges every entry point shares.
POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, lo_open=True)
PROBABILITY = Range(0, 1)
TEMPERATURE = Range(0)
"""Sampling temperature; 0 = greedy."""
TOP_P = Range(0, 1, lo_open=True)
ETA = Range(0)
"""Deliberation cost η >= 0 (Alg. 2 line 13: a cost added to the termination advantage)."""
SEED = Range(0, 2**63 - 1, integer=True)
"""What `torch.Generator.manual_seed` accepts on every platform."""
PORT = Range(1, 65535, integer=True)


FINITE = Range()

#: TrainConfig keys with a range beyond "finite" (the config's own validate() covers the rest).
TRAIN_RANGES = {
    "eta": ETA,
    "lr_controller": NON_NEGATIVE,  # 0 freezes the controller (a no-learning reference run)
    "lr_policy": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "grad_clip": POSITIVE,
    "lora_alpha": POSITIVE,
    "value_coef": NON_NEGATIVE,
    "reward_scale": POSITIVE,
}


def check_fields(obj, ranges: dict[str, Range], prefix: str = "config key ") -> None:
    """Every float field of dataclass `obj` finite, and each field named in `ranges` inside its range;
    nested dataclasses are checked the same way (keys named `outer.inner`, ranges looked up by `inner`)."""
    from dataclasses import fields, is_dataclass

    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            check_fields(value, ranges, f"{prefix}{f.name}.")
        elif f.name in ranges:
            ranges[f.name].check(prefix + f.name, value)
        elif isinstance(value, float):
            FINITE.check(prefix + f.name, value)


def check_finite_tensors(tensors: dict, what: str) -> None:
    """ValueError naming the tensors of `what` that hold NaN or infinity (first five)."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise ValueError(f"{what} has non-finite values in {len(bad)} of {len(tensors)} tensors "
                         f"({', '.join(bad[:5])}); refusing to save it")


def check_output_file(path, flag: str) -> None:
    """ValueError, before any work, when `path` cannot become an output file: a directory, or a location
    whose nearest existing folder is not writable. Creates nothing."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write there ({parent} is not a writable folder)")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: the file exists and is not writable")
