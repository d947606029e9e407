"""Serving statistics: counters the engine and store update, turned into one flat dict of `serve/*` metrics.

Every metric is explained in docs/serving.md §Statistics. Everything is aggregated as it arrives (running
sums, a merged-interval window, a fixed-size latency histogram), so a server running for days holds a bounded
amount of state. Times are wall clock (CUDA: CUDA events for copies, folded in once they complete); on CPU the
device tier is simulated, so copy times there are memcpy times, and a `sim_bandwidth_gbps` gives the
PCIe-bound estimate `serve/pcie_bound_ms_per_token` (bytes moved / bandwidth).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch


class LatencySketch:
    """Fixed-size log-bucketed histogram of positive durations (seconds): quantiles within `rel_err`.

    Buckets are geometric with ratio (1 + rel_err)^2 from `lo` to `hi`; a quantile returns the geometric
    middle of its bucket, so its relative error is at most `rel_err`. Values outside [lo, hi] are clamped.
    """

    def __init__(self, lo: float = 1e-6, hi: float = 1e4, rel_err: float = 0.01):
        self.lo, self.ratio = lo, (1 + rel_err) ** 2
        self.counts = [0] * (math.ceil(math.log(hi / lo) / math.log(self.ratio)) + 1)
        self.n = 0
        self.total = 0.0

    def add(self, x: float) -> None:
        b = 0 if x <= self.lo else int(math.log(x / self.lo) / math.log(self.ratio))
        b = min(b, len(self.counts) - 1)
        self.counts[b] += 1
        self.n += 1
        self.total += x

    def quantile(self, q: float) -> float:
        """The q-quantile (q in [0, 1], nearest rank: the ceil(q n)-th smallest value); nan when empty."""
        if self.n == 0:
            return float("nan")
        rank, seen = max(1, math.ceil(q * self.n)), 0
        for b, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return self.lo * self.ratio ** (b + 0.5)
        return self.lo * self.ratio ** (len(self.counts) - 0.5)


class IntervalUnion:
    """Length of the union of time intervals that arrive roughly in start order (copies on two streams).

    A window of the `window` most recent merged intervals absorbs out-of-order arrivals; older ones are
    summed into `closed`. An interval that starts before the window is merged with the window only (the two
    streams are never that far apart in practice).
    """

    def __init__(self, window: int = 64):
        self.window = window
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.closed = 0.0

    def add(self, start: float, end: float) -> None:
        i = bisect.bisect_left(self.starts, start)
        if i > 0 and self.ends[i - 1] >= start:  # overlaps its left neighbour: merge into it
            i -= 1
            start = self.starts[i]
        j = i
        while j < len(self.starts) and self.starts[j] <= end:  # swallow every interval it reaches
            end = max(end, self.ends[j])
            j += 1
        self.starts[i:j], self.ends[i:j] = [start], [end]
        while len(self.starts) > self.window:
            self.closed += self.ends.pop(0) - self.starts.pop(0)

    def total(self) -> float:
        return self.closed + sum(e - s for s, e in zip(self.starts, self.ends))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(torch.tensor(values, dtype=torch.float64).quantile(q / 100.0))


#: Copy event pairs not yet folded in are kept until they complete; past this many the oldest is waited for.
MAX_PENDING_EVENTS = 4096


@dataclass
class TransferStats:
    """Byte and load counters of the store (mechanism). One expert load copies `expert_bytes` bytes.

    Copy time of decode loads is the union of their intervals across streams (`copy_s`), so bytes / copy time
    cannot exceed the link's bandwidth; `critical_copy_s` sums the critical copies alone (the stall).
    """

    expert_bytes: int = 0
    loads_critical: int = 0  # expert loads the computation waited for (decode misses, switch-needed experts)
    loads_background: int = 0  # expert loads off the critical path (rest of a new option)
    loads_prefill: int = 0  # expert loads into the prefill staging buffer
    loads_initial: int = 0  # loads at attach (full / static residency)
    d2d_copies: int = 0  # slot <- staging or staging <- slot copies (device-local, not PCIe)
    evictions: int = 0
    critical_copy_s: float = 0.0  # critical copies (one stream: they never overlap, so the sum is the union)
    copy_union: IntervalUnion = field(default_factory=IntervalUnion)  # critical + background decode copies
    _pending: deque = field(default_factory=deque)  # CUDA (start, end, critical) events not yet complete
    _origin: object = None  # the first CUDA start event: time zero for intervals on every stream

    @property
    def h2d_loads(self) -> int:
        return self.loads_critical + self.loads_background + self.loads_prefill

    @property
    def h2d_bytes(self) -> int:
        return self.h2d_loads * self.expert_bytes

    @property
    def copy_s(self) -> float:
        """Seconds during which at least one decode copy was in flight."""
        return self.copy_union.total()

    def add_interval(self, start: float, end: float, critical: bool) -> None:
        """A decode copy ran from `start` to `end` (seconds on one clock)."""
        if critical:
            self.critical_copy_s += end - start
        self.copy_union.add(start, end)

    def add_events(self, start, end, critical: bool) -> None:
        """A decode copy bracketed by two timing events (`torch.cuda.Event` API: query, elapsed_time,
        synchronize); folded in once complete, without waiting unless `MAX_PENDING_EVENTS` are in flight."""
        if self._origin is None:
            self._origin = start
        self._pending.append((start, end, critical))
        self.fold_events(wait_oldest=len(self._pending) > MAX_PENDING_EVENTS)

    def fold_events(self, wait_oldest: bool = False, wait_all: bool = False) -> None:
        """Turn completed event pairs into intervals (ms since the origin event -> seconds)."""
        while self._pending:
            start, end, critical = self._pending[0]
            if wait_all or wait_oldest:
                end.synchronize()
                self._origin.synchronize()  # on another stream it may still be pending
                wait_oldest = False
            elif not (end.query() and self._origin.query()):
                return
            self._pending.popleft()
            self.add_interval(self._origin.elapsed_time(start) / 1e3, self._origin.elapsed_time(end) / 1e3,
                              critical)


@dataclass
class RoutingStats:
    """Per-layer behaviour counters (policy side), updated on decode calls; running sums only."""

    num_layers: int
    hits: int = 0  # routed (expert, layer) pairs already resident at decode
    misses: int = 0  # routed pairs that had to be loaded on the critical path
    switches: int = 0  # (stream, layer, step) with option != previous option
    option_steps: int = 0  # (stream, layer, step) with a previous option to compare against
    replaced_total: int = 0  # experts in the new option not in the old, summed over switches
    union_size_total: int = 0  # resident-set target size, summed over (layer, call)
    plan_calls: int = 0  # (layer, decode call) pairs planned


class TokenTimer:
    """Wall-clock timing of one generation: start, first token, last token, and a sketch of the gaps."""

    def __init__(self, start: float | None = None, prompt_tokens: int = 0):
        self.start = time.perf_counter() if start is None else start
        self.prompt_tokens = prompt_tokens
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0
        self.gaps = LatencySketch()

    def token(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if self.last is None:
            self.first = now
        else:
            self.gaps.add(now - self.last)
        self.last = now
        self.tokens += 1

    def summary(self) -> dict:
        out: dict = {"serve/prompt_tokens": self.prompt_tokens, "serve/new_tokens": self.tokens}
        if self.first is None:
            return out
        out["serve/ttft_ms"] = (self.first - self.start) * 1e3
        if self.tokens > 1:
            total = self.last - self.first
            out["serve/decode_tokens_per_s"] = (self.tokens - 1) / total if total > 0 else float("inf")
            for q in (50, 90, 99):
                out[f"serve/tpot_ms_p{q}"] = self.gaps.quantile(q / 100) * 1e3
        return out


def engine_summary(
    transfer: TransferStats,
    routing: RoutingStats,
    *,
    decode_tokens: int,
    sim_bandwidth_gbps: float | None,
    measured_bandwidth_gbps: float | None,
) -> dict:
    """Transfer and routing metrics; per-token quantities divide by `decode_tokens` (generated tokens − 1)."""
    transfer.fold_events(wait_all=True)
    per_tok = max(decode_tokens, 1)
    decode_loads = transfer.loads_critical + transfer.loads_background
    decode_bytes = decode_loads * transfer.expert_bytes
    copy_s = transfer.copy_s
    out = {
        "serve/expert_bytes": transfer.expert_bytes,
        "serve/loads_initial": transfer.loads_initial,
        "serve/loads_prefill": transfer.loads_prefill,
        "serve/loads_critical": transfer.loads_critical,
        "serve/loads_background": transfer.loads_background,
        "serve/d2d_copies": transfer.d2d_copies,
        "serve/evictions": transfer.evictions,
        "serve/h2d_bytes_total": transfer.h2d_bytes,
        "serve/decode_h2d_bytes": decode_bytes,
        "serve/loads_per_token": decode_loads / per_tok,
        "serve/bytes_per_token": decode_bytes / per_tok,
        "serve/stall_ms_per_token": transfer.critical_copy_s * 1e3 / per_tok,
        "serve/copy_ms_per_token": copy_s * 1e3 / per_tok,
        "serve/achieved_gbps": (decode_bytes / copy_s / 1e9) if copy_s > 0 and decode_bytes else None,
        "serve/switch_rate": routing.switches / routing.option_steps if routing.option_steps else None,
        "serve/experts_replaced_per_switch": routing.replaced_total / routing.switches
        if routing.switches
        else None,
        "serve/lru_hit_rate": routing.hits / (routing.hits + routing.misses)
        if routing.hits + routing.misses
        else None,
        "serve/resident_target_mean": routing.union_size_total / routing.plan_calls
        if routing.plan_calls
        else None,
    }
    bw = measured_bandwidth_gbps or sim_bandwidth_gbps
    if bw:
        out["serve/pcie_bandwidth_gbps"] = bw
        out["serve/pcie_bandwidth_source"] = "measured" if measured_bandwidth_gbps else "simulated"
        out["serve/pcie_bound_ms_per_token"] = decode_bytes / per_tok / (bw * 1e9) * 1e3
        out["serve/pcie_bound_stall_ms_per_token"] = (
            transfer.loads_critical * transfer.expert_bytes / per_tok / (bw * 1e9) * 1e3
        )
    return out
