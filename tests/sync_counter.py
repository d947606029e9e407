"""Counting the ops that force a device->host synchronisation on CUDA, on CPU.

`SyncCounter` is a `TorchDispatchMode` that counts, per scope, the aten ops whose result size or value the
host must wait for (nonzero, unique, masked_select, boolean-mask indexing, `_local_scalar_dense`), plus the
Python-level reads that do not always reach the dispatcher (`Tensor.item`, `tolist`, `numpy`, and
`bool`/`int`/`float`/`index` of a tensor: under `torch.inference_mode` their scalar read skips the mode).
Device->host copies (`.to("cpu")` of an accelerator tensor) count too. Scopes: "controller" inside a mask
function wrapped by `counter.scoped`, "moe" inside an MoE block's forward (hooks on `handle.blocks`),
"outside" elsewhere (embedding, attention, sampling, the stop check). `count` is the total, `ops` what was
counted where.
"""

from __future__ import annotations

import functools
import traceback
from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
    aten.equal.default,
    aten.argwhere.default,
    aten.is_nonzero.default,
}
_INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ())


def _device_to_host(func, args, kwargs) -> bool:
    """An accelerator -> CPU copy, which waits for the device."""
    if func is aten._to_copy.default:
        src, dst = args[0], (kwargs or {}).get("device")
        return src.device.type not in ("cpu", "meta") and dst is not None and torch.device(dst).type == "cpu"
    if func is aten.copy_.default:
        return args[0].device.type == "cpu" and args[1].device.type not in ("cpu", "meta")
    return False


def _internal(filename: str) -> bool:
    return "sync_counter" in filename or "/torch/" in filename


class SyncCounter(TorchDispatchMode):
    """counts[scope] = number of sync-forcing ops; `where` keeps a short stack per count for diagnosis."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.where: list[tuple[str, str]] = []
        self.scope = ["outside"]
        self.enabled = True
        self._patched: list[tuple[str, object]] = []
        self._reading = 0  # > 0 inside a patched Python-level read: its own dispatch is not counted again

    def _hit(self, what: str) -> None:
        if not self.enabled:
            return
        self.counts[self.scope[-1]] += 1
        frames = [f for f in traceback.extract_stack() if not _internal(f.filename)][-3:]
        self.where.append((self.scope[-1], f"{what} @ " + " < ".join(
            f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames))))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._reading == 0 and (func in _SYNC_OPS or (func in _INDEX_OPS and _bool_index(args))
                                   or _device_to_host(func, args, kwargs)):
            if not (func is aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size") is not None):
                self._hit(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in ("tolist", "numpy", "item", "__bool__", "__int__", "__float__", "__index__"):
            orig = getattr(torch.Tensor, name)

            @functools.wraps(orig)
            def patched(t, *a, _orig=orig, _name=name, **k):
                if self._reading == 0:
                    self._hit(_name)
                self._reading += 1
                try:
                    return _orig(t, *a, **k)
                finally:
                    self._reading -= 1

            self._patched.append((name, orig))
            setattr(torch.Tensor, name, patched)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, orig in self._patched:
            setattr(torch.Tensor, name, orig)
        self._patched.clear()
        return super().__exit__(*exc)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def ops(self) -> list[str]:
        return [what for _, what in self.where]

    @contextmanager
    def in_scope(self, name: str):
        self.scope.append(name)
        try:
            yield
        finally:
            self.scope.pop()

    def scoped(self, fn, name: str = "controller"):
        """`fn` (a MaskFn) with its syncs attributed to `name`; keeps its attributes."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.in_scope(name):
                return fn(*args, **kwargs)

        return wrapper

    def watch_blocks(self, blocks):
        """Attribute syncs inside each MoE block's forward to "moe"; returns the hook handles."""
        def enter(*_):
            self.scope.append("moe")

        def leave(*_):
            self.scope.pop()

        hooks = []
        for block in blocks:
            hooks.append(block.register_forward_pre_hook(enter))
            hooks.append(block.register_forward_hook(leave))
        return hooks
