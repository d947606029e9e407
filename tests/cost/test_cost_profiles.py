"""Hardware profiles: the shipped YAML, validation of every figure, unknown names, scaling."""

from __future__ import annotations

import math

import pytest
import yaml

from temoe.cost import load_profile, predict, profile_names
from temoe.cost.profiles import FIGURES, default_path


def test_h100_profile_figures():
    p = load_profile("h100-gpt-oss-20b")
    assert p.dtype == "bf16" and p.num_layers == 24
    assert round(p.expert_bytes / 2**20, 1) == 47.5
    assert p.h2d_bandwidth_gbps == 54.7
    assert p.compute_ms == pytest.approx(1000 / 23.8)  # 42.0 ms per token
    assert round(load_profile("h100-gpt-oss-20b", dtype="mxfp4").expert_bytes / 2**20, 1) == 12.6
    assert all(p.sources[f].strip() for f in FIGURES)
    # one bf16 expert: 2.9 us + 49,783,680 B / 54.7 GB/s = 0.913 ms
    assert p.load_ms == pytest.approx(0.0029 + 49_783_680 / 54.7e9 * 1e3)


def test_mxfp4_says_its_decode_time_is_bf16():
    p = load_profile("h100-gpt-oss-20b", dtype="mxfp4")
    assert p.sources["decode_tok_s"].startswith("measured in bf16, used unchanged for mxfp4")


def test_unknown_name_and_dtype_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown hardware profile 'a100'; valid: h100-gpt-oss-20b, local"):
        load_profile("a100")
    with pytest.raises(ValueError, match=r"dtype 'fp8'; valid: bf16, mxfp4"):
        load_profile("h100-gpt-oss-20b", dtype="fp8")
    with pytest.raises(ValueError, match="measure_local_profile"):
        load_profile("local")
    assert profile_names() == ["h100-gpt-oss-20b", "local"]


def _write(tmp_path, **changes):
    data = yaml.safe_load(default_path().read_text())
    entry = data["profiles"]["h100-gpt-oss-20b"]
    for key, value in changes.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("h2d_bandwidth_gbps", 0.0, "h2d_bandwidth_gbps must be positive"),
        ("h2d_bandwidth_gbps", -5.0, "h2d_bandwidth_gbps must be positive"),
        ("decode_tok_s", math.inf, "decode_tok_s must be a finite number"),
        ("decode_tok_s", "fast", "decode_tok_s must be a finite number"),
        ("copy_overhead_ms", -0.1, "copy_overhead_ms must be >= 0"),
        ("background_overlap", 1.5, r"background_overlap must be in \[0, 1\]"),
        ("num_layers", 0, "num_layers must be a positive integer"),
        ("num_layers", 2.5, "num_layers must be a positive integer"),
        ("expert_bytes", {"bf16": -1}, "expert_bytes must be a positive integer"),
        ("expert_bytes", 123, "expert_bytes must map a dtype to bytes"),
        ("decode_tok_s", None, r"missing field\(s\) \['decode_tok_s'\]"),
        ("sources", {"num_layers": "x"}, "no source for expert_bytes, h2d_bandwidth_gbps"),
        ("speed", 3, r"unknown field\(s\) \['speed'\]"),
        ("sources", ["a", "b"], "sources must map a figure name"),
    ],
)
def test_bad_figures_fail_with_the_field_name(tmp_path, field, value, match):
    path = _write(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=match):
        load_profile("h100-gpt-oss-20b", path=path)


def test_nan_is_refused(tmp_path):
    path = tmp_path / "hw.yaml"
    path.write_text(
        default_path().read_text().replace("h2d_bandwidth_gbps: 54.7", "h2d_bandwidth_gbps: .nan")
    )
    with pytest.raises(ValueError, match="h2d_bandwidth_gbps must be a finite number"):
        load_profile("h100-gpt-oss-20b", path=path)


def test_scaling_to_another_model():
    base = load_profile("h100-gpt-oss-20b")
    # gpt-oss-120b: 36 layers, same expert size: 42.02 ms x 36/24 = 63.03 ms of compute per token
    big = base.scaled(num_layers=36)
    assert big.compute_ms == pytest.approx(base.compute_ms * 1.5)
    assert big.load_ms == base.load_ms and big.h2d_bandwidth_gbps == base.h2d_bandwidth_gbps
    assert "x 36/24 layers" in big.sources["decode_tok_s"]
    # 10 MB experts, 12 layers: 21.01 ms compute, 2.9 us + 10e6 B / 54.7 GB/s = 0.1857 ms per load
    small = base.scaled(expert_bytes=10_000_000, num_layers=12)
    assert small.compute_ms == pytest.approx(base.compute_ms / 2)
    assert small.load_ms == pytest.approx(0.0029 + 10e6 / 54.7e9 * 1e3)
    # predictions follow: 4 critical loads -> 21.01 + 0.743 ms
    p = predict(small, critical_per_token=4, background_per_token=0)
    assert p.ms_per_token == pytest.approx(base.compute_ms / 2 + 4 * small.load_ms)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        base.scaled(num_layers=0)


def test_h100_path_overheads():
    p = load_profile("h100-gpt-oss-20b")
    assert p.method_overhead_ms == {"full": 0.0, "cache": 0.0, "option": 0.744}
    assert "H200" in p.sources["method_overhead_ms"]
    # option path: 0.744 ms x 24 layers = 17.856 ms on top of 42.02 ms; no loads -> 42.02 / 59.87 of full
    opt = predict(p, critical_per_token=0, background_per_token=0, path="option")
    assert opt.method_ms == pytest.approx(17.856)
    assert opt.vs_full == pytest.approx(p.compute_ms / (p.compute_ms + 17.856))
    assert opt.ideal_ms_per_token == pytest.approx(p.compute_ms)
    # gpt-oss-120b depth: 36 x 0.744 = 26.784 ms
    assert p.scaled(num_layers=36).path_overhead_ms("option") == pytest.approx(26.784)


def test_path_overheads_in_the_file_are_checked(tmp_path):
    path = _write(tmp_path, method_overhead_ms={"full": 0.0, "cache": 0.0, "option": -1.0})
    with pytest.raises(ValueError, match=r"method_overhead_ms\['option'\] must be a finite number >= 0"):
        load_profile("h100-gpt-oss-20b", path=path)
