"""Mechanism that moves expert bytes: a host store with one contiguous packed row per expert, device slot
banks, and the copies between them (critical copies on the compute stream, the rest on a side stream on CUDA).

Layout is architecture-agnostic: every parameter of a fused experts module whose first dim is N (gpt_oss:
`gate_up_proj [N,H,2I]`, `gate_up_proj_bias [N,2I]`, `down_proj [N,I,H]`, `down_proj_bias [N,H]`;
mixtral/qwen/olmoe/deepseek: `gate_up_proj [N,2I,H]`, `down_proj [N,H,I]`) is flattened into the expert's row
at an offset aligned to 16 elements. A slot bank is a (S, row) tensor; its per-parameter views (S, *shape)
share the packed rows, so one expert = one copy. On CPU there is no second memory tier: the "device" bank is a
separate CPU tensor (simulated tier) and bytes are accounted exactly as on CUDA.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from temoe.serve.stats import TransferStats

_ALIGN = 16  # elements; keeps every per-parameter view 16-byte aligned for grouped_mm kernels


@dataclass(frozen=True)
class ExpertLayout:
    """Where each per-expert parameter slice lives inside a packed expert row."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # per-expert shape (parameter shape without the leading N)
    offsets: tuple[int, ...]
    row_numel: int  # padded row length (elements)
    dtype: torch.dtype

    @property
    def row_bytes(self) -> int:
        """Bytes copied per expert load (the packed row, alignment padding included)."""
        return self.row_numel * torch.empty((), dtype=self.dtype).element_size()

    @classmethod
    def of(cls, experts: nn.Module, num_experts: int) -> ExpertLayout:
        params = [(n, p) for n, p in experts.named_parameters(recurse=False)]
        stacked = [(n, p) for n, p in params if p.dim() >= 2 and p.shape[0] == num_experts]
        if len(stacked) != len(params) or not stacked:
            raise ValueError(
                f"{type(experts).__name__} is not a fused experts module with every parameter stacked over "
                f"{num_experts} experts: {[(n, tuple(p.shape)) for n, p in params]}"
            )
        dtypes = {p.dtype for _, p in stacked}
        if len(dtypes) != 1:
            raise ValueError(f"expert parameters of {type(experts).__name__} have mixed dtypes {dtypes}")
        offsets, off = [], 0
        for _, p in stacked:
            offsets.append(off)
            off += -(-p[0].numel() // _ALIGN) * _ALIGN
        return cls(
            names=tuple(n for n, _ in stacked),
            shapes=tuple(tuple(p.shape[1:]) for _, p in stacked),
            offsets=tuple(offsets),
            row_numel=off,
            dtype=dtypes.pop(),
        )

    def views(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter views (R, *shape) of packed rows (R, row_numel); no copy."""
        out = {}
        for name, shape, off in zip(self.names, self.shapes, self.offsets):
            n = 1
            for d in shape:
                n *= d
            out[name] = rows[:, off : off + n].view(rows.shape[0], *shape)
        return out


class SlotBank:
    """S device slots of one layer: `rows` (S, row_numel) on the device and per-parameter views (S,
    *shape)."""

    def __init__(self, layout: ExpertLayout, num_slots: int, device: torch.device):
        self.rows = torch.zeros(num_slots, layout.row_numel, dtype=layout.dtype, device=device)
        self.params = layout.views(self.rows)
        self.pending: dict[int, object] = {}  # slot -> CUDA event of a side-stream copy not yet waited on

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()


class HostExpertStore:
    """All expert weights of all MoE layers in host memory, one (N, row_numel) tensor per layer (rows
    contiguous per expert). Read-only after packing: evictions never write back.

    For a CUDA device each layer's block is allocated plainly (no zero fill) and pinned in place with
    `cudaHostRegister`: exactly its bytes are page-locked (no power-of-two rounding by the caching host
    allocator) and the weights are packed straight into it (no pageable bounce). `pinned_bytes` is what is
    registered; `release()` unregisters (also run when the store is garbage-collected).
    """

    def __init__(self, experts: list[nn.Module], num_experts: int, device: torch.device):
        self.layouts = [ExpertLayout.of(m, num_experts) for m in experts]
        if len({lay.row_numel for lay in self.layouts}) != 1:
            raise ValueError("MoE layers have different expert shapes; one layout per model is required")
        self.layout = self.layouts[0]
        self.rows: list[torch.Tensor] = []
        self.pinned_bytes = 0
        for module in experts:
            shape = (num_experts, self.layout.row_numel)
            if device.type == "cuda":
                rows = _page_aligned_empty(shape, self.layout.dtype)
                self.pinned_bytes += _register(rows)
            else:
                rows = torch.empty(shape, dtype=self.layout.dtype)
            views = self.layout.views(rows)
            with torch.no_grad():
                for name in self.layout.names:
                    param = getattr(module, name).detach()
                    for e in range(num_experts):  # contiguous per expert: D2H straight into the pinned block
                        views[name][e].copy_(param[e])
            self.rows.append(rows)
        pinned = list(self.rows) if self.pinned_bytes else []
        self._finalizer = weakref.finalize(self, _unregister_all, pinned)

    @property
    def pinned(self) -> bool:
        return self.pinned_bytes > 0

    @property
    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows)

    def release(self) -> None:
        """Unpin the host blocks (the store stays readable as pageable memory)."""
        self._finalizer()
        self.pinned_bytes = 0

    def unpack(self, layer: int, name: str) -> torch.Tensor:
        """The full (N, *shape) parameter `name` of `layer` as a new contiguous host tensor (for
        detaching)."""
        return self.layout.views(self.rows[layer])[name].contiguous()


_PAGE = 4096


def _page_aligned_empty(shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised host tensor starting on a page boundary (what page-locking in place works on)."""
    nbytes = shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()
    raw = torch.empty(nbytes + _PAGE, dtype=torch.uint8)
    offset = -raw.data_ptr() % _PAGE
    return raw[offset : offset + nbytes].view(dtype).view(shape)


def _register(block: torch.Tensor) -> int:
    """Page-lock `block` in place (cudaHostRegister); returns the bytes pinned."""
    nbytes = block.numel() * block.element_size()
    err = torch.cuda.cudart().cudaHostRegister(block.data_ptr(), nbytes, 0)
    if int(err) != 0:
        raise RuntimeError(f"cudaHostRegister of {nbytes} bytes failed with CUDA error {int(err)}")
    return nbytes


def _unregister_all(blocks: list[torch.Tensor]) -> None:
    for block in blocks:
        torch.cuda.cudart().cudaHostUnregister(block.data_ptr())
    blocks.clear()


class CudaStreams:
    """The stream and event calls the mover makes on CUDA: the compute stream (current), one side stream for
    background copies, timing events. Tests substitute a fake with the same methods to check the order."""

    def __init__(self, device: torch.device):
        self.device = device
        self.side = torch.cuda.Stream(device=device)

    def compute(self):
        return torch.cuda.current_stream(self.device)

    def event(self, timing: bool = False):
        return torch.cuda.Event(enable_timing=timing)

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait(self, stream, event) -> None:
        stream.wait_event(event)

    def copy(self, pairs, stream) -> None:
        with torch.cuda.stream(stream):
            for dst, src in pairs:
                dst.copy_(src, non_blocking=True)


class ExpertMover:
    """Issues copies host -> slot and staging <-> slot, records bytes and time in `TransferStats`.

    With streams (CUDA): critical copies go on the compute stream, so the expert computation that follows
    sees them without a host sync. Background copies go on the side stream after a wait on an event recorded
    on the compute stream once the critical copies are issued: the critical copies get the link first, and
    every computation issued earlier (which may read a slot about to be overwritten) has finished. Each
    background copy leaves an event that a later computation reading that slot waits on (`before_compute`).
    Without streams (CPU): critical copies run at once; background copies are queued and run after the
    layer's computation (`after_compute`), the order a side stream gives on the GPU.
    """

    def __init__(self, store: HostExpertStore, device: torch.device, stats: TransferStats, streams=None):
        self.store = store
        self.device = device
        self.stats = stats
        self.stats.expert_bytes = store.layout.row_bytes
        if streams is None and device.type == "cuda":
            streams = CudaStreams(device)
        self.streams = streams
        self._deferred: dict[int, list[tuple[list, bool]]] = {}  # layer -> [(pairs, timed)] (no streams)

    def load(
        self,
        layer: int,
        experts: list[int],
        bank: SlotBank,
        slots: list[int],
        kind: str,
        background: bool = False,
    ) -> None:
        """Copy host rows of `experts` into `bank` slots (one copy per expert).

        kind: the counter to charge (critical | background | prefill | initial); critical and background
        copies are timed (decode traffic), only critical ones count as stall time. background: issue off the
        critical path (side stream / after the computation on CPU).
        """
        if not experts:
            return
        host = self.store.rows[layer]
        pairs = [(bank.rows[s], host[e]) for e, s in zip(experts, slots)]
        setattr(self.stats, f"loads_{kind}", getattr(self.stats, f"loads_{kind}") + len(experts))
        if background:
            self._background(layer, bank, slots, pairs, timed=kind == "background")
        else:
            self.before_compute(bank, slots)  # a pending side-stream copy into the slot must land first
            self._foreground(pairs, timed=kind == "critical")

    def copy_device(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Device-local copy (staging <-> slot); on the compute stream, not counted as PCIe traffic."""
        if self.streams is not None:
            self.streams.copy([(dst, src)], self.streams.compute())
        else:
            dst.copy_(src)
        self.stats.d2d_copies += 1

    def _foreground(self, pairs, timed: bool) -> None:
        """On the compute stream (streams) or at once (CPU); `timed`: critical decode copies (the stall)."""
        st = self.streams
        if st is None:
            t0 = time.perf_counter()
            for dst, src in pairs:
                dst.copy_(src)
            if timed:
                self.stats.add_interval(t0, time.perf_counter(), critical=True)
            return
        if not timed:
            st.copy(pairs, st.compute())
            return
        start, end = st.event(timing=True), st.event(timing=True)
        st.record(start, st.compute())
        st.copy(pairs, st.compute())
        st.record(end, st.compute())
        self.stats.add_events(start, end, critical=True)

    def _background(self, layer: int, bank: SlotBank, slots: list[int], pairs, timed: bool) -> None:
        """Off the critical path; `timed`: decode traffic (prefill's background fill is not timed)."""
        if self.streams is None:
            self._deferred.setdefault(layer, []).append((pairs, timed))
            return
        st = self.streams
        gate = st.event()
        st.record(gate, st.compute())  # after the critical copies and every computation issued so far
        st.wait(st.side, gate)
        start, end = st.event(timing=timed), st.event(timing=timed)
        st.record(start, st.side)
        st.copy(pairs, st.side)
        st.record(end, st.side)
        if timed:
            self.stats.add_events(start, end, critical=False)
        for s in slots:
            bank.pending[s] = end

    def before_compute(self, bank: SlotBank, slots: list[int]) -> None:
        """Make the compute stream wait for pending background copies into `slots` (streams only)."""
        for s in slots:
            ev = bank.pending.pop(s, None)
            if ev is not None:
                self.streams.wait(self.streams.compute(), ev)

    def after_compute(self, layer: int) -> None:
        """The layer's computation is issued: without streams, run the queued background copies now."""
        for pairs, timed in self._deferred.pop(layer, []):
            t0 = time.perf_counter()
            for dst, src in pairs:
                dst.copy_(src)
            if timed:
                self.stats.add_interval(t0, time.perf_counter(), critical=False)


def measure_h2d_bandwidth(device: torch.device, nbytes: int = 256 << 20, repeats: int = 5) -> float | None:
    """Pinned host -> `device` copy bandwidth in GB/s (median of `repeats`); None on CPU (no second tier)."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src, non_blocking=True)
        b.record()
        torch.cuda.synchronize(device)
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return nbytes / times[len(times) // 2] / 1e9
