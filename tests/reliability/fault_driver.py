"""Kill -9 a short training run at random moments, then resume it; used by test_fault_injection.py.

Usage: python fault_driver.py ROOT TRIALS STEPS SEED. Writes ROOT/reference (an uninterrupted run) and
ROOT/trial{i} (killed, then resumed), and prints one JSON line per trial. Each run is a fork of this process
(imports paid once); the parent runs no torch op, so forking is safe.
"""

import json
import os
import random
import signal
import sys
import time
import traceback

import torch

torch.set_num_threads(1)

from temoe.testing import TINY_TRAIN  # noqa: E402
from temoe.train.config import load_config  # noqa: E402
from temoe.train.trainer import train  # noqa: E402


def config(out: str, steps: int):
    return load_config(None, {**TINY_TRAIN, "steps": steps, "checkpoint_every": 1, "keep_checkpoints": 2,
                              "max_new_tokens": 6, "seed": 3, "out_dir": out})


def fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def steps_logged(out: str) -> int:
    path = os.path.join(out, "metrics.jsonl")
    return sum(1 for line in open(path) if line.strip()) if os.path.exists(path) else 0


def main(root: str, trials: int, steps: int, seed: int) -> None:
    rng = random.Random(seed)
    start = time.perf_counter()
    _, status = os.waitpid(fork(lambda: train(config(os.path.join(root, "reference"), steps))), 0)
    duration = time.perf_counter() - start
    print(json.dumps({"reference_status": status, "duration_s": duration}), flush=True)
    for trial in range(trials):
        out = os.path.join(root, f"trial{trial}")
        pid = fork(lambda out=out: train(config(out, steps)))
        delay = rng.uniform(0.0, duration)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, killed = os.waitpid(pid, 0)
        logged = steps_logged(out)
        _, status = os.waitpid(fork(lambda out=out: train(config(out, steps), resume=True)), 0)
        print(json.dumps({"trial": trial, "delay_s": delay, "killed": os.WIFSIGNALED(killed),
                          "steps_logged_when_killed": logged, "resume_status": status}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
