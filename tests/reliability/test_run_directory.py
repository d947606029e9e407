"""A run directory has one owner and is never destroyed by accident: a lock names its holder, a fresh run
refuses an earlier one without --resume/--overwrite, and resume does not depend on how the path is spelled."""

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest

from temoe.inference import resolve_checkpoint
from temoe.testing import TINY_TRAIN
from temoe.train.config import load_config
from temoe.train.logging import read_metrics
from temoe.train.rundir import RunExistsError, RunLockedError, run_lock
from temoe.train.trainer import train


def _config(out, **kw):
    return load_config(None, {**TINY_TRAIN, "steps": 2, "checkpoint_every": 1, "out_dir": str(out), **kw})


def _state(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def test_a_fresh_run_into_an_earlier_run_is_refused_and_leaves_it_intact(tmp_path):
    run = tmp_path / "R"
    train(_config(run, steps=3))
    before = _state(run)
    with pytest.raises(RunExistsError, match=r"already holds a run \(config.yaml, metrics.jsonl, "
                       r"checkpoints\).*--resume.*--overwrite"):
        train(_config(run, steps=1))
    assert _state(run) == before
    train(_config(run, steps=1), overwrite=True)  # explicit: the earlier run is replaced, not mixed in
    assert [r["step"] for r in read_metrics(run)] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000001"]
    assert resolve_checkpoint(run).name == "step_000001"


def test_the_cli_refuses_too_and_an_out_that_is_a_file(tmp_path, capsys):
    from temoe.cli.main import main

    (tmp_path / "R").mkdir()
    (tmp_path / "R" / "metrics.jsonl").write_text("{}\n")
    assert main(["train", "--config", "tiny", "--out", str(tmp_path / "R")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    (tmp_path / "F").write_text("not a directory")
    assert main(["train", "--config", "tiny", "--out", str(tmp_path / "F")]) == 2
    assert "is an existing file" in capsys.readouterr().err


def test_a_locked_run_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "R"
    with run_lock(run):
        with pytest.raises(RunLockedError, match=f"being written by pid {os.getpid()} on host"):
            train(_config(run))
    assert not (run / "metrics.jsonl").exists()


def test_a_second_process_cannot_write_the_same_run(tmp_path):
    run = tmp_path / "R"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from temoe.train.rundir import run_lock\n"
        f"with run_lock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            train(_config(run))
    finally:
        holder.kill()
        holder.wait()
    train(_config(run, steps=1))  # the holder died: its lock went with it


def test_a_stale_lock_file_is_taken_over_and_named(tmp_path, caplog):
    run = tmp_path / "R"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone-host", "started": time.time()}))
    with caplog.at_level(logging.WARNING, logger="temoe.train"):
        with run_lock(run):
            assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert "stale lock left by pid 999999 on host gone-host" in caplog.text


@pytest.mark.parametrize("spelling", ["relative", "dot", "trailing_slash", "absolute", "moved"])
def test_resume_does_not_depend_on_how_the_path_is_spelled(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    train(_config("runA", steps=1))
    out = {"relative": "runA", "dot": "./runA", "trailing_slash": "runA/", "absolute": str(tmp_path / "runA"),
           "moved": "elsewhere/runB"}[spelling]
    if spelling == "moved":
        (tmp_path / "elsewhere").mkdir()
        shutil.move("runA", out)
    result = train(_config(out, steps=2), resume=True)
    assert [r["step"] for r in result.metrics] == [2]


def test_resume_before_the_first_checkpoint_starts_at_step_zero(tmp_path):
    run = tmp_path / "R"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # killed after logging step 1, before any checkpoint
    result = train(_config(run, steps=1), resume=True)
    assert [r["step"] for r in read_metrics(run)] == [1] and result.metrics[0]["step"] == 1


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    run = tmp_path / "R"
    train(_config(run, steps=2, keep_checkpoints=1))
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "step_000002", ckpts / "step_000009")  # a later step of an abandoned branch
    train(_config(run, steps=3, keep_checkpoints=1), resume=True)
    assert resolve_checkpoint(run).name == "step_000003"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000003", "step_000009"]
