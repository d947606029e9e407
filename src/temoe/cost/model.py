"""Decode time per token from expert loads: t = t_compute + t_method + t_stall + t_exposed_background.

Per generated token (loads summed over the L MoE layers), on a profile with load time
t_load = copy_overhead + expert_bytes / bandwidth, full-residency compute time t_compute and overlap o:
    t_method             = L · overhead[path] (+ extra)      the serving path's own work (mask, bookkeeping)
    t_stall              = c · t_load                        c critical loads: the computation waits for them
    t_exposed_background = max(0, b · t_load − o · (t_compute + t_method))  b background loads
    t                    = t_compute + t_method + t_stall + t_exposed_background
The ideal time is the same with t_method = 0: a serving path as cheap as the plain model (a fused kernel).
An LRU cache's misses are all critical (c = loads, b = 0); an option switch is critical only for the experts
the current token routes to (`temoe.cost.loads.split_loads`). Assumptions: docs/cost-model.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from temoe.cost.profiles import HardwareProfile


@dataclass(frozen=True)
class Prediction:
    """Predicted decode cost of one generated token (batch 1); times in ms."""

    ms_per_token: float
    tok_s: float
    vs_full: float
    """Full-residency time / this time (1.0 = as fast as keeping every expert on the device)."""
    compute_ms: float
    """t_compute + t_method."""
    method_ms: float
    """t_method: the serving path's own work (profile overhead x layers) + compute_overhead_ms."""
    stall_ms: float
    """Critical copy time: the computation waits."""
    background_copy_ms: float
    """All background copy time, hidden or not."""
    exposed_background_ms: float
    """The part of background copy time that compute could not hide."""
    critical_per_token: float
    background_per_token: float
    bytes_per_token: float
    """Host -> device bytes per token, critical and background."""
    critical_bytes_per_token: float
    ideal_ms_per_token: float
    """The same loads with t_method = 0 (a serving path that costs nothing beyond the plain model)."""

    @property
    def ideal_tok_s(self) -> float:
        return 1e3 / self.ideal_ms_per_token


def _check(name: str, value: float) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _split(loads_per_token, critical_fraction, critical_per_token, background_per_token):
    """(critical, background) loads per token from exactly one of the two input forms."""
    total_form = loads_per_token is not None or critical_fraction is not None
    split_form = critical_per_token is not None or background_per_token is not None
    if total_form == split_form:
        raise ValueError(
            "give either loads_per_token with critical_fraction, or critical_per_token with "
            "background_per_token"
        )
    if total_form:
        if loads_per_token is None or critical_fraction is None:
            raise ValueError("loads_per_token and critical_fraction go together (LRU misses: fraction 1.0)")
        loads = _check("loads_per_token", loads_per_token)
        frac = _check("critical_fraction", critical_fraction)
        if frac > 1:
            raise ValueError(f"critical_fraction must be in [0, 1], got {critical_fraction!r}")
        return loads * frac, loads * (1.0 - frac)
    return (
        _check("critical_per_token", critical_per_token or 0.0),
        _check("background_per_token", background_per_token or 0.0),
    )


def predict(
    profile: HardwareProfile,
    loads_per_token: float | None = None,
    critical_fraction: float | None = None,
    *,
    critical_per_token: float | None = None,
    background_per_token: float | None = None,
    path: str = "full",
    compute_overhead_ms: float = 0.0,
) -> Prediction:
    """Predicted decode time per token of a method that loads experts at the given rate on `profile`.

    Loads (per generated token, summed over layers) come either as `loads_per_token` with the
    `critical_fraction` of them that the computation waits for, or as `critical_per_token` and
    `background_per_token`. path: the serving path the method runs on (`temoe.cost.profiles.PATHS`: full,
    cache, option), priced by the profile's `method_overhead_ms`. compute_overhead_ms: per-token compute the
    method adds on top (a controller's own networks); 0 = none.
    """
    c, b = _split(loads_per_token, critical_fraction, critical_per_token, background_per_token)
    method = profile.path_overhead_ms(path) + _check("compute_overhead_ms", compute_overhead_ms)
    compute = profile.compute_ms + method
    stall = c * profile.load_ms
    background = b * profile.load_ms
    exposed = max(0.0, background - profile.background_overlap * compute)
    total = compute + stall + exposed
    ideal = (profile.compute_ms + stall
             + max(0.0, background - profile.background_overlap * profile.compute_ms))
    return Prediction(
        ms_per_token=total,
        tok_s=1e3 / total,
        vs_full=profile.compute_ms / total,
        compute_ms=compute,
        method_ms=method,
        stall_ms=stall,
        background_copy_ms=background,
        exposed_background_ms=exposed,
        critical_per_token=c,
        background_per_token=b,
        bytes_per_token=(c + b) * profile.expert_bytes,
        critical_bytes_per_token=c * profile.expert_bytes,
        ideal_ms_per_token=ideal,
    )
