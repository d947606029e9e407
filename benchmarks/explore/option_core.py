"""Exploratory script (not a maintained benchmark): options made of a static
core plus dynamic experts. Per layer, the first c experts of the reconstruction baseline's greedy order
(calibrated as in `temoe demo`) are always allowed; the other 16 - c are the top of the averaged router
logits (decay 0.9) at the last prompt position, kept for the whole answer. c = 0 is the plain averaged-
logit option.

    PYTHONPATH=src python benchmarks/explore/option_core.py 200 0,4,8,12 math,mc,mc-multilingual [TEMPERATURE]

Arguments: questions per task, core sizes, tasks, sampling temperature (default 0 = greedy). Prints the
accuracy and switch rate per core size and task, and of the reconstruction mask alone.
"""

import sys
import time

import torch
from _kept import KeptOption

import temoe
from temoe.baselines.calibration import CalibrationConfig, calibration_sequences, collect_routing
from temoe.baselines.reconstruction import greedy_reconstruction
from temoe.eval.runner import evaluate
from temoe.eval.tasks import load_task
from temoe.rollout.masks import StaticMaskSource
from temoe.rollout.runner import GenerationConfig

torch.set_num_threads(2)
limit = int(sys.argv[1])
cores = [int(c) for c in sys.argv[2].split(",")]
tasks = sys.argv[3].split(",")
temperature = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
model, tok = temoe.load_model("tiny")
model.eval()
handle = temoe.wrap(model)
L, N, K = handle.num_layers, handle.num_experts, 16
cal = CalibrationConfig(num_prompts=128, max_total_tokens=256, seed=42)
seqs = calibration_sequences(handle, tok, cal, "runs/explore-cache")
stats = collect_routing(handle, seqs, 8, hidden_states=True)
# The greedy selection is prefix-consistent: the first c picks of a k̂ run are the picks of a c run, so a core
# of c experts is the library's greedy reconstruction with k̂ = c (which needs c >= k̃).
recon = torch.zeros(L, N, dtype=torch.bool)
core = {c: torch.zeros(L, N, dtype=torch.bool) for c in cores}
g = torch.Generator().manual_seed(42)
for i, x in enumerate(stats.hidden):
    x = x[torch.randperm(x.shape[0], generator=g)[:4096]]
    recon[i] = greedy_reconstruction(handle, i, x, K)[0]
    for c in cores:
        if c > 0:
            core[c][i] = greedy_reconstruction(handle, i, x, c)[0]
rl = handle.router_logits


def core_chooser(c: int, decay: float = 0.9):
    """Top-16 of a moving average of router logits with the c core experts forced in."""

    def make():
        avg = [None] * L

        def choose(i, hidden):
            for s in range(hidden.shape[1]):
                lg = rl(i, hidden[:, s])
                avg[i] = lg if avg[i] is None else decay * avg[i] + (1 - decay) * lg
            ids = avg[i].masked_fill(core[c][i], float("inf")).topk(K, -1).indices
            return torch.zeros(hidden.shape[0], N, dtype=torch.bool).scatter_(1, ids, True)

        return choose

    return make


cfg = GenerationConfig(max_new_tokens=64, temperature=temperature, batch_size=25)
for t in tasks:
    task = load_task(t, limit=limit)
    sources = [KeptOption(f"core{c}", K, L, N, core_chooser(c)) for c in cores]
    for src in [StaticMaskSource(recon, "recon"), *sources]:
        t0 = time.time()
        s, _ = evaluate(handle, tok, task, src, cfg)
        print(f"{t:16s} {src.name:8s} acc {s['accuracy']:.3f}  ({time.time() - t0:.0f}s)", flush=True)
