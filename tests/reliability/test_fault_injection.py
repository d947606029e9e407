"""No lost steps: a training run killed with SIGKILL at random moments (mid-step, mid-checkpoint, mid-log,
before the first checkpoint) resumes to exactly the uninterrupted run: same metrics, same weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from temoe.train.logging import read_metrics

TRIALS, STEPS = 10, 6
_WEIGHTS = ("controller.safetensors", "routers.safetensors", "adapter/adapter_model.safetensors")


def _final(run: Path) -> dict:
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return {name: load_file(str(ckpt / name)) for name in _WEIGHTS}


def _comparable(run: Path) -> list[str]:
    return [json.dumps({k: v for k, v in r.items() if not k.startswith("perf/")}, sort_keys=True)
            for r in read_metrics(run)]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bit_identical(tmp_path):
    driver = Path(__file__).with_name("fault_driver.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(driver), str(tmp_path), str(TRIALS), str(STEPS), "0"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["reference_status"] == 0, done.stderr[-3000:]
    trials = lines[1:]
    assert len(trials) == TRIALS
    reference = tmp_path / "reference"
    want_metrics, want_weights = _comparable(reference), _final(reference)
    assert len(want_metrics) == STEPS
    for t in trials:
        run = tmp_path / f"trial{t['trial']}"
        assert t["resume_status"] == 0, (t, done.stderr[-3000:])
        assert _comparable(run) == want_metrics, t  # every step once, in order, with the same values
        got = _final(run)
        for name, tensors in want_weights.items():
            assert got[name].keys() == tensors.keys()
            for key, value in tensors.items():
                assert got[name][key].equal(value), (t, name, key)
    # the kills landed at different points of the run, not all before it started or after it ended
    interrupted = [t["steps_logged_when_killed"] for t in trials if t["killed"]]
    assert len(set(interrupted)) >= 3, trials
