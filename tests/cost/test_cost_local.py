"""The `local` profile measured on this machine (CPU: simulated device tier)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import yaml

import temoe
from temoe.cost import load_profile, predict
from temoe.cost.profiles import FIGURES, PATHS
from temoe.loading import load_model
from temoe.serve.local_profile import measure_local_profile
from temoe.serve.store import ExpertLayout


@pytest.fixture(scope="module")
def measured():
    model, tok = load_model("tiny-random:gpt_oss")
    handle = temoe.wrap(model)
    return model, tok, handle, measure_local_profile(handle, tok, new_tokens=4, repeats=1, copies=4)


def test_local_profile_on_cpu(measured):
    model, tok, handle, p = measured
    assert p.name == "local" and p.num_layers == handle.num_layers
    # the bytes the engine copies per expert: the packed row, fp32 here
    assert p.expert_bytes == ExpertLayout.of(handle.experts[0], handle.num_experts).row_bytes
    assert p.dtype == "float32"
    assert p.background_overlap == 0.0  # CPU copies run on the compute thread
    for value in (p.h2d_bandwidth_gbps, p.decode_tok_s, p.load_ms):
        assert math.isfinite(value) and value > 0
    assert p.copy_overhead_ms >= 0
    assert all(p.sources[f].strip() for f in FIGURES)
    # with no overlap every background load is exposed: 1 background load costs one load time on top of the
    # full path's compute and its measured overhead (which may be 0 or a little more on a noisy machine)
    pred = predict(p, critical_per_token=0, background_per_token=1)
    assert pred.ms_per_token == pytest.approx(p.compute_ms + p.path_overhead_ms("full") + p.load_ms)
    assert pred.ideal_ms_per_token == pytest.approx(p.compute_ms + p.load_ms)
    # the engine's overhead on every serving path, measured, never negative, and priced per layer
    assert sorted(p.method_overhead_ms) == sorted(PATHS)
    assert all(math.isfinite(v) and v >= 0 for v in p.method_overhead_ms.values())
    assert p.sources["method_overhead_ms"].strip()
    opt = predict(p, critical_per_token=0, background_per_token=0, path="option")
    assert opt.ms_per_token == pytest.approx(p.compute_ms + p.method_overhead_ms["option"] * p.num_layers)
    # the model decodes as before (measuring leaves it untouched)
    with torch.inference_mode():
        assert model(input_ids=tok("hi", return_tensors="pt").input_ids).logits.isfinite().all()


def test_local_profile_round_trips_through_yaml_and_json(measured, tmp_path):
    p = measured[3]
    entry = json.loads(json.dumps(p.to_entry()))
    assert entry == p.to_entry()
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"saved": entry}}))
    assert load_profile("saved", path=path) == dataclasses.replace(p, name="saved")


def test_copy_fit_reproduces_the_measured_copy_time():
    from temoe.serve.local_profile import _fit_copy

    # 1 MB at 10 GB/s = 0.1 ms; a 0.13 ms copy leaves 0.03 ms of fixed overhead
    bw, overhead, note = _fit_copy(1_000_000, 10.0, 0.13)
    assert (bw, note) == (10.0, "") and overhead == pytest.approx(0.03)
    # a 0.05 ms copy beats the bandwidth (cache): bandwidth = 1e6 B / 0.05 ms = 20 GB/s, no overhead
    bw, overhead, note = _fit_copy(1_000_000, 10.0, 0.05)
    assert bw == pytest.approx(20.0) and overhead == 0.0 and "faster" in note
