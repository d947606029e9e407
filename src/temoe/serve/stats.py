"""Serving statistics: counters the engine and store update, turned into one flat dict of `serve/*` metrics.

Every metric is explained in docs/serving.md §Statistics. Times are wall clock (CUDA: CUDA events for copies,
resolved at `summary()`); on CPU the device tier is simulated, so copy times there are memcpy times, and a
`sim_bandwidth_gbps` gives the PCIe-bound estimate `serve/pcie_bound_ms_per_token` (bytes moved / bandwidth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(torch.tensor(values, dtype=torch.float64).quantile(q / 100.0))


@dataclass
class TransferStats:
    """Byte and load counters of the store (mechanism). One expert load copies `expert_bytes` bytes."""

    expert_bytes: int = 0
    loads_critical: int = 0  # expert loads the computation waited for (decode misses, switch-needed experts)
    loads_background: int = 0  # expert loads off the critical path (rest of a new option)
    loads_prefill: int = 0  # expert loads into the prefill staging buffer
    loads_initial: int = 0  # loads at attach (full / static residency)
    d2d_copies: int = 0  # slot <- staging or staging <- slot copies (device-local, not PCIe)
    evictions: int = 0
    critical_copy_s: float = 0.0  # CPU: wall time of critical copies (the stall); CUDA: filled from events
    background_copy_s: float = 0.0
    cuda_critical_events: list = field(default_factory=list)
    cuda_background_events: list = field(default_factory=list)

    @property
    def h2d_loads(self) -> int:
        return self.loads_critical + self.loads_background + self.loads_prefill

    @property
    def h2d_bytes(self) -> int:
        return self.h2d_loads * self.expert_bytes

    def resolve_cuda(self) -> None:
        """Turn recorded CUDA event pairs into seconds (synchronises once)."""
        if not (self.cuda_critical_events or self.cuda_background_events):
            return
        torch.cuda.synchronize()
        self.critical_copy_s += sum(a.elapsed_time(b) for a, b in self.cuda_critical_events) / 1e3
        self.background_copy_s += sum(a.elapsed_time(b) for a, b in self.cuda_background_events) / 1e3
        self.cuda_critical_events.clear()
        self.cuda_background_events.clear()


@dataclass
class RoutingStats:
    """Per-layer behaviour counters (policy side), updated on decode calls."""

    num_layers: int
    decode_calls: int = 0  # decode forward calls seen per layer (tokens × layers / L)
    hits: int = 0  # routed (expert, layer) pairs already resident at decode
    misses: int = 0  # routed pairs that had to be loaded on the critical path
    switches: int = 0  # (stream, layer, step) with option != previous option
    option_steps: int = 0  # (stream, layer, step) with a previous option to compare against
    replaced: list[int] = field(default_factory=list)  # experts in the new option not in the old, per switch
    union_sizes: list[int] = field(default_factory=list)  # resident-set target size per (layer, call)


@dataclass
class TokenTimer:
    """Wall-clock timestamps of one generation: start, first token, every later token."""

    start: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0

    def token(self) -> None:
        self.token_times.append(time.perf_counter())

    def summary(self) -> dict:
        out: dict = {"serve/prompt_tokens": self.prompt_tokens, "serve/new_tokens": len(self.token_times)}
        if not self.token_times:
            return out
        out["serve/ttft_ms"] = (self.token_times[0] - self.start) * 1e3
        gaps = [b - a for a, b in zip(self.token_times, self.token_times[1:])]
        if gaps:
            total = self.token_times[-1] - self.token_times[0]
            out["serve/decode_tokens_per_s"] = len(gaps) / total if total > 0 else float("inf")
            out["serve/tpot_ms_p50"] = _percentile(gaps, 50) * 1e3
            out["serve/tpot_ms_p90"] = _percentile(gaps, 90) * 1e3
            out["serve/tpot_ms_p99"] = _percentile(gaps, 99) * 1e3
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
    transfer.resolve_cuda()
    per_tok = max(decode_tokens, 1)
    decode_loads = transfer.loads_critical + transfer.loads_background
    decode_bytes = decode_loads * transfer.expert_bytes
    copy_s = transfer.critical_copy_s + transfer.background_copy_s
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
        "serve/experts_replaced_per_switch": (sum(routing.replaced) / len(routing.replaced))
        if routing.replaced
        else None,
        "serve/lru_hit_rate": routing.hits / (routing.hits + routing.misses)
        if routing.hits + routing.misses
        else None,
        "serve/resident_target_mean": (sum(routing.union_sizes) / len(routing.union_sizes))
        if routing.union_sizes
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
