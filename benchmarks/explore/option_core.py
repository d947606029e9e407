"""Exploratory one-off (session 5, issue 6 diagnosis; not a maintained benchmark): options made of a static
core plus dynamic experts. Per layer, the first c experts of the reconstruction baseline's greedy order
(calibrated as in `temoe demo`) are always allowed; the other 16 - c are the top of the averaged router
logits (decay 0.9) at the last prompt position, kept for the whole answer. c = 0 is the plain averaged-
logit option.

    PYTHONPATH=src python benchmarks/explore/option_core.py 200 0,4,8,12 math,mc,mc-multilingual [TEMPERATURE]

Arguments: questions per task, core sizes, tasks, sampling temperature (default 0 = greedy). Measured
(greedy, 200 questions): math 91.5 / 90.0 / 83.0 / 91.0 % for c = 0 / 4 / 8 / 12, reconstruction mask
alone 97.0 %.
"""

import sys
import time

import torch

import temoe
from temoe.baselines import reconstruction as R
from temoe.baselines.calibration import CalibrationConfig, calibration_sequences, collect_routing
from temoe.controller.policy import router_logits_from_handle
from temoe.eval.masks import MaskSource, StaticMaskSource
from temoe.eval.runner import GenerationConfig, evaluate
from temoe.eval.tasks import load_task

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
order = []
g = torch.Generator().manual_seed(42)
for i, x in enumerate(stats.hidden):
    keep = torch.randperm(x.shape[0], generator=g)[:4096]
    x = x[keep]
    logits = R.router_logits(handle, i, x)
    outs = R.expert_outputs(handle, i, x)
    target = R.restricted_output(
        outs, *R.route_restricted(handle, i, logits, torch.ones(N, dtype=torch.bool))
    )
    chosen = torch.zeros(N, dtype=torch.bool)
    o = []
    for _ in range(K):
        best, be = -1, float("inf")
        for j in range(N):
            if chosen[j]:
                continue
            t = chosen.clone()
            t[j] = True
            e = R.reconstruction_error(handle, i, logits, outs, t, target)
            if e < be:
                best, be = j, e
        chosen[best] = True
        o.append(best)
    order.append(o)
print("greedy order", order, flush=True)
rl = router_logits_from_handle(handle)


class Core(MaskSource):
    switch_definition = "mask"

    def __init__(self, c, decay=0.9):
        self.c, self.decay, self.k_hat, self.name = c, decay, K, f"core{c}"
        self.core = torch.zeros(L, N, dtype=torch.bool)
        for i in range(L):
            self.core[i, order[i][:c]] = True

    def start(self, B):
        self.option = [None] * L
        self.avg = [None] * L
        self.hist = [[] for _ in range(L)]

        def top(i, hidden):
            for s in range(hidden.shape[1]):
                lg = rl(i, hidden[:, s])
                p = self.avg[i]
                self.avg[i] = lg if p is None else self.decay * p + (1 - self.decay) * lg
            sc = self.avg[i].masked_fill(self.core[i], float("inf"))
            ids = sc.topk(K, -1).indices
            return torch.zeros(hidden.shape[0], N, dtype=torch.bool).scatter_(1, ids, True)

        def fn(i, hidden):
            B_, S, _ = hidden.shape
            if self.option[i] is None:
                self.option[i] = top(i, hidden)
                out = torch.ones(B_, S, N, dtype=torch.bool)
                out[:, -1] = self.option[i]
                self.hist[i].append(self.option[i])
                return out
            top(i, hidden)
            self.hist[i].append(self.option[i])
            return self.option[i][:, None].expand(B_, S, N)

        return fn

    def sequence_switches(self, b, rows, router_logits, expert_ids):
        return (None, None) if rows.numel() < 2 else (0.0, 0)


cfg = GenerationConfig(max_new_tokens=64, temperature=temperature, batch_size=25)
recon = torch.zeros(L, N, dtype=torch.bool)
for i in range(L):
    recon[i, order[i]] = True
for t in tasks:
    task = load_task(t, limit=limit)
    for src in [StaticMaskSource(recon, "recon")] + [Core(c) for c in cores]:
        t0 = time.time()
        s, _ = evaluate(handle, tok, task, src, cfg)
        print(f"{t:16s} {src.name:8s} acc {s['accuracy']:.3f}  ({time.time() - t0:.0f}s)", flush=True)
