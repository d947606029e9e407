"""`SyncCounter`: counts the tensor operations that force a device -> host synchronisation on CUDA.

Works on any device (the CPU included), so a test on a CPU-only machine can hold a code path to a budget of
host syncs. Counted: ops whose result size or value the host must read (`item`/`bool`/`int`/`float` of a
tensor, `nonzero`, `unique`, `masked_select`, `equal`, `repeat_interleave` without `output_size`, indexing
with a boolean mask) seen through a `TorchDispatchMode`, copies from an accelerator to the CPU, and the
Python-level reads (`Tensor.tolist`, `Tensor.item`, `Tensor.__bool__`, ...) patched for the duration.

    with SyncCounter() as sync:
        step()
    assert sync.count == 0, sync.ops
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops that always read a device value on the host.
SYNC_OPS = frozenset({
    "_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "argwhere", "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive", "allclose",
})

#: Python-level Tensor methods that read values on the host (tolist never reaches the dispatcher).
PATCHED = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy")


def _has_bool_index(indices) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ())


def _needs_sync(name: str, args, kwargs) -> bool:
    if name in SYNC_OPS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):  # x[mask]: a nonzero inside
        return _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if name == "repeat_interleave":  # with tensor repeats the output size is read unless given
        return isinstance(args[0], torch.Tensor) and kwargs.get("output_size") is None and (
            len(args) < 2 or isinstance(args[1], torch.Tensor))
    if name in ("_to_copy", "copy_"):  # accelerator -> CPU copies wait for the device
        src = args[1] if name == "copy_" else args[0]
        dst_cpu = (args[0].device.type == "cpu") if name == "copy_" else (
            torch.device(kwargs.get("device") or src.device).type == "cpu")
        return src.device.type not in ("cpu", "meta") and dst_cpu
    return False


class SyncCounter(TorchDispatchMode):
    """Context manager; after it, `count` is the number of sync-forcing ops and `ops` a Counter of them."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self._inside_patched = 0
        self._originals: dict[str, object] = {}

    @property
    def count(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if not self._inside_patched and _needs_sync(name, args, kwargs):
            self.ops[f"aten.{name}"] += 1
        return func(*args, **kwargs)

    def _patch(self, name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(tensor, *args, **kwargs):
            if not self._inside_patched:
                self.ops[f"Tensor.{name}"] += 1
            self._inside_patched += 1  # the aten op underneath is the same read: count it once
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._inside_patched -= 1

        self._originals[name] = original
        setattr(torch.Tensor, name, wrapper)

    def __enter__(self):
        for name in PATCHED:
            self._patch(name)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._originals.items():
                setattr(torch.Tensor, name, original)
            self._originals.clear()
