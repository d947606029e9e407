"""Hand-computed predictions of the decode cost model and the critical/background load split."""

from __future__ import annotations

import subprocess
import sys

import pytest

from temoe.cost import HardwareProfile, LoadCounts, predict, split_loads

SOURCES = {
    f: "test figure"
    for f in (
        "num_layers",
        "expert_bytes",
        "h2d_bandwidth_gbps",
        "copy_overhead_ms",
        "decode_tok_s",
        "background_overlap",
    )
}


def profile(**kw) -> HardwareProfile:
    """10 MB experts at 50 GB/s: 0.2 ms per load; 100 tok/s: 10 ms of compute per token; full overlap."""
    figures = dict(
        name="test",
        num_layers=24,
        expert_bytes=10_000_000,
        h2d_bandwidth_gbps=50.0,
        copy_overhead_ms=0.0,
        decode_tok_s=100.0,
        background_overlap=1.0,
        sources=SOURCES,
    )
    return HardwareProfile(**{**figures, **kw})


def test_no_loads_is_full_residency():
    p = predict(profile(), critical_per_token=0, background_per_token=0)
    assert p.ms_per_token == pytest.approx(10.0)
    assert p.tok_s == pytest.approx(100.0)
    assert p.vs_full == pytest.approx(1.0)


def test_critical_only():
    # 3 critical loads x 0.2 ms = 0.6 ms stall: 10.6 ms, 94.34 tok/s, 10 / 10.6 of full speed
    p = predict(profile(), critical_per_token=3, background_per_token=0)
    assert p.stall_ms == pytest.approx(0.6)
    assert p.ms_per_token == pytest.approx(10.6)
    assert p.tok_s == pytest.approx(1000 / 10.6)
    assert p.vs_full == pytest.approx(10 / 10.6)
    assert p.bytes_per_token == p.critical_bytes_per_token == pytest.approx(30e6)


def test_background_fully_hidden():
    # 20 background loads x 0.2 ms = 4 ms of copies, hidden under 10 ms of compute
    p = predict(profile(), critical_per_token=0, background_per_token=20)
    assert p.background_copy_ms == pytest.approx(4.0)
    assert p.exposed_background_ms == 0.0
    assert p.ms_per_token == pytest.approx(10.0)
    assert p.bytes_per_token == pytest.approx(200e6)
    assert p.critical_bytes_per_token == 0


def test_background_partly_exposed():
    # 60 background loads = 12 ms of copies; overlap 1: 10 ms hidden, 2 exposed -> 12 ms
    p = predict(profile(), critical_per_token=0, background_per_token=60)
    assert p.exposed_background_ms == pytest.approx(2.0)
    assert p.ms_per_token == pytest.approx(12.0)
    # overlap 0.5: 5 ms hidden, 7 exposed; plus 1 critical load 0.2 ms -> 17.2 ms
    p = predict(profile(background_overlap=0.5), critical_per_token=1, background_per_token=60)
    assert p.exposed_background_ms == pytest.approx(7.0)
    assert p.ms_per_token == pytest.approx(17.2)
    # overlap 0 (CPU): nothing hidden -> 22 ms
    assert predict(
        profile(background_overlap=0.0), critical_per_token=0, background_per_token=60
    ).ms_per_token == (pytest.approx(22.0))


def test_method_compute_overhead_widens_the_window_but_not_full_speed():
    # 2 ms of controller compute: 12 ms compute hides all 12 ms of background; vs_full = 10 / 12
    p = predict(profile(), critical_per_token=0, background_per_token=60, compute_overhead_ms=2.0)
    assert p.ms_per_token == pytest.approx(12.0)
    assert p.exposed_background_ms == 0.0
    assert p.vs_full == pytest.approx(10 / 12)


def test_copy_overhead_adds_per_load():
    # 0.05 ms per copy: 0.25 ms per load, 4 critical -> 1 ms stall
    p = predict(profile(copy_overhead_ms=0.05), critical_per_token=4, background_per_token=0)
    assert p.stall_ms == pytest.approx(1.0)


def test_fraction_form_equals_split_form():
    a = predict(profile(), 8.0, 0.25)
    b = predict(profile(), critical_per_token=2.0, background_per_token=6.0)
    assert a == b
    lru = predict(profile(), 5.0, 1.0)  # an LRU cache: every miss critical
    assert lru.stall_ms == pytest.approx(1.0) and lru.background_copy_ms == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "either loads_per_token"),
        (dict(loads_per_token=2.0), "go together"),
        (dict(loads_per_token=2.0, critical_fraction=0.5, critical_per_token=1.0), "either"),
        (dict(loads_per_token=2.0, critical_fraction=1.5), r"critical_fraction must be in \[0, 1\]"),
        (dict(loads_per_token=-1.0, critical_fraction=1.0), "loads_per_token must be a finite number"),
        (dict(critical_per_token=float("nan")), "critical_per_token must be a finite"),
        (dict(critical_per_token=1.0, compute_overhead_ms=float("inf")), "compute_overhead_ms"),
    ],
)
def test_bad_inputs_fail_with_the_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict(profile(), **kwargs)


def test_split_loads_lru_and_option_switch():
    # LRU: resident {0, 1, 2}, routed {2, 5}: one miss, critical; nothing else wanted
    assert split_loads({0, 1, 2}, set(), {2, 5}) == LoadCounts(critical=1, background=0)
    # option switch {0,1,2,3} -> {2,3,4,5}, token routes to {3, 4}: expert 4 critical, expert 5 background
    assert split_loads({0, 1, 2, 3}, {2, 3, 4, 5}, {3, 4}) == LoadCounts(critical=1, background=1)
    # spare slots keep an old option: switching back to {0, 1} while {0,1,2,3,4,5} are resident is free
    assert split_loads(range(6), {0, 1}, {1}).total == 0
    assert LoadCounts(1, 2) + LoadCounts(3, 4) == LoadCounts(4, 6)


def test_import_is_torch_free():
    code = (
        "import sys, temoe.cost; temoe.cost.load_profile('h100-gpt-oss-20b'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


OVERHEAD = {"full": 0.0, "cache": 0.05, "option": 0.1}


def with_paths(**kw) -> HardwareProfile:
    """The test profile with path overheads: option 0.1 ms and cache 0.05 ms per layer per token."""
    return profile(
        method_overhead_ms=OVERHEAD, sources={**SOURCES, "method_overhead_ms": "test figure"}, **kw
    )


def test_path_overhead_is_per_layer_and_left_out_of_the_ideal():
    # option path: 0.1 ms x 24 layers = 2.4 ms; compute 10 + 2.4 = 12.4 ms hides all 12 ms of background
    # (60 loads x 0.2 ms); 3 critical loads add 0.6 ms -> 13.0 ms. Ideal: 10 + 0.6 + (12 - 10) = 12.6 ms.
    p = predict(with_paths(), critical_per_token=3, background_per_token=60, path="option")
    assert p.method_ms == pytest.approx(2.4)
    assert p.compute_ms == pytest.approx(12.4)
    assert p.exposed_background_ms == 0.0
    assert p.ms_per_token == pytest.approx(13.0)
    assert p.vs_full == pytest.approx(10 / 13.0)
    assert p.ideal_ms_per_token == pytest.approx(12.6)
    assert p.ideal_tok_s == pytest.approx(1000 / 12.6)
    # cache path: 0.05 x 24 = 1.2 ms on top of 10 ms + 1 critical load 0.2 ms -> 11.4 ms
    c = predict(with_paths(), 1.0, 1.0, path="cache")
    assert c.ms_per_token == pytest.approx(11.4) and c.ideal_ms_per_token == pytest.approx(10.2)
    # full path costs nothing here; an extra compute_overhead_ms adds to the path's: 2.4 + 0.6 = 3.0 ms
    assert predict(with_paths(), 0.0, 1.0).ms_per_token == pytest.approx(10.0)
    assert predict(with_paths(), 0.0, 1.0, path="option", compute_overhead_ms=0.6).method_ms == pytest.approx(
        3.0
    )
    # a profile without overheads prices no path
    assert predict(profile(), 0.0, 1.0, path="option").ms_per_token == pytest.approx(10.0)


def test_path_overhead_scales_with_layer_count():
    base = with_paths()
    half = base.scaled(num_layers=12)  # 0.1 ms x 12 = 1.2 ms; compute 10 x 12/24 = 5 ms
    assert half.path_overhead_ms("option") == pytest.approx(base.path_overhead_ms("option") / 2) == 1.2
    assert predict(half, 0.0, 1.0, path="option").ms_per_token == pytest.approx(5.0 + 1.2)
    assert "per layer, x 12 layers" in half.sources["method_overhead_ms"]


@pytest.mark.parametrize(
    "table, match",
    [
        ({"option": 0.1}, "must map every path in full, cache, option"),
        ({**OVERHEAD, "option": -0.1}, r"method_overhead_ms\['option'\] must be a finite number >= 0"),
        ({**OVERHEAD, "cache": float("nan")}, r"method_overhead_ms\['cache'\] must be a finite"),
    ],
)
def test_bad_path_overheads_fail_with_the_name(table, match):
    with pytest.raises(ValueError, match=match):
        profile(method_overhead_ms=table, sources={**SOURCES, "method_overhead_ms": "x"})


def test_path_overhead_needs_a_source_and_a_known_path():
    with pytest.raises(ValueError, match="no source for method_overhead_ms"):
        profile(method_overhead_ms=OVERHEAD)
    with pytest.raises(ValueError, match="unknown serving path 'fused'; valid: full, cache, option"):
        predict(with_paths(), 0.0, 1.0, path="fused")
