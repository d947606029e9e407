"""Run-directory ownership: one writer at a time (an exclusive lock), no fresh run over an old one, and
resume identity by the run's content (config and model facts) rather than the spelling of its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from temoe.inference import resolve_checkpoint, verify_checkpoint
from temoe.train.config import flatten

log = logging.getLogger("temoe.train")

LOCK = ".lock"
#: What a training run writes into its directory (everything `--overwrite` removes).
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "eval.jsonl", "checkpoints", "tensorboard", "wandb")
#: Config keys that may change when resuming (everything else must match the saved run). `out_dir` is where
#: the run lies now, not what it is: a moved run or another spelling of its path resumes.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "progress", "report_to", "eval_every",
                     "out_dir"}
#: Config keys holding file paths: compared by the file they name, not by their spelling.
_PATH_KEYS = ("model", "prompts")


class RunLockedError(ValueError):
    """Another live process writes this run directory."""


class RunExistsError(ValueError):
    """A fresh run was started in a directory that holds an earlier run."""


def _holder(lock_file: Path) -> dict[str, Any]:
    try:
        return json.loads(lock_file.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {started})"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive `flock` on `run_dir/.lock` for the block; the file names the holder (pid, host).

    A second process fails at once with RunLockedError naming the holder. A lock file left by a process
    that died (kill -9, power loss) holds no lock any more: it is taken over with a warning naming it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_file = run_dir / LOCK
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_holder(lock_file))
            raise RunLockedError(f"run directory {run_dir} is being written by {holder}; wait for it to "
                                 "finish or use another --out") from None
        stale = _holder(lock_file)
        if stale:
            log.warning("run directory %s: taking over a stale lock left by %s, which has ended",
                        run_dir, _describe(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield run_dir
        finally:
            os.ftruncate(fd, 0)  # an empty lock file = released cleanly
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def previous_run(run_dir: str | Path) -> list[str]:
    """The training outputs already in `run_dir` (names from RUN_OUTPUTS), [] for a new or empty one."""
    run_dir = Path(run_dir)
    return [name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def check_out_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Fail before any work when `run_dir` cannot take this run: a file, or an earlier run without
    `resume`/`overwrite`."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is an existing file; choose another --out")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    found = previous_run(run_dir)
    if found and not (resume or overwrite):
        raise RunExistsError(
            f"run directory {run_dir} already holds a run ({', '.join(found)}); pass --resume to continue "
            "it, --overwrite to replace it, or choose another --out"
        )


def check_resume(config, ckpt: Path) -> None:
    """ValueError naming every config key that differs from the checkpoint's, except RESUMABLE_CHANGES.

    Paths (`model`, `prompts`) compare by the file they name when it exists, so `./data/p.jsonl`,
    `data/p.jsonl` and its absolute path are the same run.
    """
    saved = flatten(verify_checkpoint(ckpt)["train_config"])
    now = config.flat()
    diffs = [
        f"{k}: saved {saved.get(k)!r} vs now {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and _canonical(k, saved.get(k)) != _canonical(k, now[k])
    ]
    if diffs:
        raise ValueError(f"cannot resume {ckpt} with a different config: " + "; ".join(diffs))


def _canonical(key: str, value):
    if key in _PATH_KEYS and isinstance(value, str) and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _is_main_process() -> bool:
    """Rank 0 of a `torchrun`/`accelerate launch` job (or a single process), read before accelerate starts."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def open_run(config, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path | None]:
    """Own `config.out_dir` for a training call; yields the checkpoint to resume from (None = step 0).

    Before any model is loaded: refuses a file, an earlier run without `resume`/`overwrite`, a resume with
    a different config, and a damaged checkpoint. The main process holds `run_lock` for the whole block;
    `overwrite` removes the earlier run's outputs (RUN_OUTPUTS) only once the lock is held. A `resume` of a
    run that died before its first checkpoint starts at step 0.
    """
    run_dir = Path(config.out_dir)
    check_out_dir(run_dir, resume=resume, overwrite=overwrite)
    main = _is_main_process()
    with run_lock(run_dir) if main else contextlib.nullcontext(run_dir):
        ckpt = None
        if resume:
            try:
                ckpt = resolve_checkpoint(run_dir)
            except FileNotFoundError:
                log.warning("run directory %s has no checkpoint yet: starting at step 0", run_dir)
            if ckpt is not None:
                check_resume(config, ckpt)
        elif overwrite and main:
            for name in previous_run(run_dir):
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        yield ckpt
