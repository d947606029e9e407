"""Exploratory script (not a maintained benchmark): a behaviour-cloning warm
start of the selection head. On base-model continuations of N training prompts, each layer's linear
selection head (initialised from the router) is fitted to maximise the Plackett-Luce likelihood of the
top-16 experts of the discounted future usage sum_s gamma^(s-t) [expert routed at s], from the moving
average of hidden states (decay 0.9). The learned head's top-16 at the last prompt position is then kept
(period 0) or re-chosen every P tokens.

    PYTHONPATH=src python benchmarks/explore/selection_warmstart.py 512 \
        0.97/2000/0,0.99/2000/0,0.97/2000/1e-3,0.97/2000/1e-2 \
        math,mc,mc-multilingual 200 bc:0:0,bc:32:1,router:0:0

Arguments: prompts; grid of gamma/steps/L2-to-init; tasks; questions per task; policies learned-or-
router:period: selection temperature (0 = top-16). Prints accuracy and switch rate per policy and task. The
warm start is not part of the library.
"""

import sys
import time
from importlib.resources import files

import torch
from _kept import KeptOption

import temoe
from temoe.baselines.calibration import CalibrationConfig, calibration_sequences, collect_routing
from temoe.controller.options import plackett_luce_log_prob, sample_plackett_luce
from temoe.eval.runner import evaluate
from temoe.eval.tasks import load_task
from temoe.rollout.runner import GenerationConfig

torch.set_num_threads(2)
torch.manual_seed(0)
nprompts = int(sys.argv[1])
grid = [tuple(float(v) for v in g.split("/")) for g in sys.argv[2].split(",")]
tasks = sys.argv[3].split(",")
limit = int(sys.argv[4])
specs = [s.split(":") for s in sys.argv[5].split(",")]
model, tok = temoe.load_model("tiny")
model.eval()
handle = temoe.wrap(model)
L, N, K, H = handle.num_layers, handle.num_experts, 16, handle.hidden_size
prompts = str(files("temoe.embedded") / "data" / "prompts.jsonl")
cal = CalibrationConfig(num_prompts=nprompts, max_total_tokens=256, seed=7, prompts_file=prompts)
t0 = time.time()
seqs = calibration_sequences(handle, tok, cal, "runs/explore-cache")
stats = collect_routing(handle, seqs, 16, hidden_states=True)
print(f"{len(seqs)} seqs, {sum(map(len, seqs))} tokens, {time.time() - t0:.0f}s", flush=True)
lens = [len(s) for s in seqs]
d = 0.9

data = []
for i in range(L):
    X, Y = [], []
    for h, ids in zip(stats.hidden[i].float().split(lens), stats.expert_ids[i].split(lens)):
        S = h.shape[0]
        # h̄_t = sum_s d^{t-s}(1-d) h_s / sum_s d^{t-s}(1-d), via cumulative sums of scaled terms
        scale = d ** (-torch.arange(S, dtype=torch.float64))
        num = torch.cumsum(h.double() * scale[:, None], 0)
        den = torch.cumsum(scale, 0)
        hb = (num / den[:, None]).float()
        use = torch.zeros(S, N).scatter_(1, ids, 1.0)
        X.append(hb[3 : S - 1])
        Y.append(use[3:S])
    data.append((X, Y))


def targets(gamma):
    out = []
    for X, Y in data:
        Us = []
        for use in Y:
            S = use.shape[0]
            u = torch.empty_like(use)
            acc = torch.zeros(N)
            for t in range(S - 1, -1, -1):
                acc = use[t] + gamma * acc
                u[t] = acc
            Us.append(u[:-1])
        U = torch.cat(Us)
        out.append((torch.cat(X), (U + 1e-4 * torch.rand_like(U)).topk(K, -1).indices))
    return out


results = {}
for gamma, steps, lam in grid:
    heads = []
    for i, (X, target) in enumerate(targets(gamma)):
        head = torch.nn.Linear(H, N)
        W0 = handle.router_weight(i).float().clone()
        b = handle.router_bias(i)
        b0 = b.float().clone() if b is not None else torch.zeros(N)
        head.weight.data.copy_(W0)
        head.bias.data.copy_(b0)
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        for _step in range(int(steps)):
            idx = torch.randint(0, X.shape[0], (1024,))
            loss = -plackett_luce_log_prob(head(X[idx]), target[idx]).mean()
            loss = loss + lam * ((head.weight - W0).pow(2).sum() + (head.bias - b0).pow(2).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            ov = (
                (
                    torch.zeros(X.shape[0], N, dtype=torch.bool).scatter_(1, target, True)
                    & torch.zeros(X.shape[0], N, dtype=torch.bool).scatter_(
                        1, head(X).topk(K, -1).indices, True
                    )
                )
                .sum(-1)
                .float()
                .mean()
            )
        print(f"g{gamma} s{steps} l{lam} layer {i}: overlap {ov:.2f}", flush=True)
        heads.append(head)
    results[(gamma, steps, lam)] = heads
rl = handle.router_logits


def head_chooser(heads, seltemp: float):
    """The top-16 (seltemp 0) or a Plackett-Luce draw of a selection head (learned `heads`, or the router when
    None) at the moving average of hidden states. One generator per source, shared by its batches."""
    gen = torch.Generator().manual_seed(0)

    def make():
        num, den = [None] * L, [0.0] * L

        def choose(i, hidden):
            for s in range(hidden.shape[1]):
                x = hidden[:, s].float()
                num[i] = (1 - d) * x if num[i] is None else d * num[i] + (1 - d) * x
                den[i] = d * den[i] + (1 - d)
            hb = num[i] / den[i]
            with torch.no_grad():
                lg = rl(i, hb) if heads is None else heads[i](hb)
            ids = lg.topk(K, -1).indices if seltemp == 0 else sample_plackett_luce(lg / seltemp, K, gen)
            return torch.zeros(hidden.shape[0], N, dtype=torch.bool).scatter_(1, ids, True)

        return choose

    return make


cfg = GenerationConfig(max_new_tokens=64, temperature=0.5, batch_size=25)
for t in tasks:
    task = load_task(t, limit=limit)
    for key, heads in [(None, None)] + list(results.items()):
        for learned, per, st in specs:
            if (key is None) != (learned == "router"):
                continue
            name = f"{key if key is not None else 'router'}-p{per}-T{float(st)}"
            src = KeptOption(name, K, L, N, head_chooser(heads, float(st)), period=int(per))
            t1 = time.time()
            s, _ = evaluate(handle, tok, task, src, cfg)
            print(f"{t:16s} {src.name:16s} acc {s['accuracy']:.3f}  ({time.time() - t1:.0f}s)", flush=True)
