"""How much accuracy survives temporally extended k̂-expert routing without any training.

    PYTHONPATH=src python benchmarks/bench_restricted.py --model tiny --k-hat 16 --limit 40

Greedy accuracy on the embedded tasks (or any `temoe.eval.tasks` task) under heuristic mask policies that
need no controller, all through the shared masked-routing path (`MoEHandle.restrict`):

  base            no mask
  oracle_sequence per sequence and layer, the k̂ experts the base model routed to most often in its own
                  completion of that question (an upper bound for any option fixed for a whole answer; it sees
                  the future)
  sticky          the router's top-k̂ at the last prompt position, kept for the whole answer (an untrained
                  controller that never terminates)
  periodic-P      the router's top-k̂ at the current token, re-chosen every P generated tokens (switch rate
                  ≈ 1/P per layer: a fixed-schedule option policy with no learning)
  *-ema           the same, choosing the top-k̂ of a moving average of router probabilities (decay --decay,
                  over the prompt and every generated token) instead of one token's router logits
                  (--ema-space logits: a moving average of router logits, which is the router applied to a
                  moving average of hidden states)
  demand-τ        the option is kept until the router's probability mass outside it, at the current token,
                  exceeds τ; then re-chosen as the top-k̂ of the moving average (--decay, --ema-space) that now
                  includes this token (what `ControllerConfig.termination_demand` starts a controller near)
  task_frequency  one static mask per layer: the k̂ experts most used over the task's base completions (the
                  frequency baseline calibrated on the test task itself, an optimistic version of it)

A model whose oracle_sequence accuracy is near zero has no per-answer expert subset of size k̂ that works,
so no controller at that k̂ can keep its accuracy without retraining the experts.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch


def _masks_from_usage(records: list[dict], num_layers: int, num_experts: int, k_hat: int) -> torch.Tensor:
    """(R, L, N) bool: per record, the k̂ most-routed experts per layer (ties by lower id)."""
    masks = torch.zeros(len(records), num_layers, num_experts, dtype=torch.bool)
    for j, rec in enumerate(records):
        counts = torch.zeros(num_layers, num_experts)
        for position in rec["active_experts"]:
            for layer, ids in enumerate(position):
                counts[layer, ids] += 1
        masks[j].scatter_(1, counts.topk(k_hat, dim=-1).indices, True)
    return masks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--k-hat", type=int, default=None, help="default N/2")
    p.add_argument("--tasks", default="math,mc,mc-multilingual")
    p.add_argument("--limit", type=int, default=40, help="questions per task (seed 42 sample)")
    p.add_argument("--periods", default="8,32", help="periods P of the periodic policies")
    p.add_argument("--decay", type=float, default=0.9, help="moving-average decay of the -ema policies")
    p.add_argument("--ema-space", choices=["probs", "logits"], default="probs",
                   help="average router probabilities (default) or router logits, i.e. the router applied to "
                        "a moving average of hidden states, which a linear selection head can compute")
    p.add_argument("--demand", default="",
                   help="thresholds τ of the demand-τ policies, comma-separated (e.g. 0.5,0.7; default none)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import temoe
    from temoe.eval.runner import evaluate
    from temoe.eval.tasks import load_task
    from temoe.rollout.masks import BaseSource, MaskSource, StaticMaskSource
    from temoe.rollout.runner import GenerationConfig

    model, tokenizer = temoe.load_model(args.model)
    model.eval()
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    k_hat = args.k_hat or N // 2
    if not handle.top_k <= k_hat <= N:
        raise SystemExit(f"--k-hat must be in [{handle.top_k}, {N}], got {k_hat}")

    router_logits = handle.router_logits  # the controller's own ω_0 computation

    def router_top(i: int, hidden: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: the router's top-k̂ for hidden (B, H)."""
        ids = router_logits(i, hidden).topk(k_hat, -1).indices
        return torch.zeros(hidden.shape[0], N, dtype=torch.bool).scatter_(1, ids, True)

    class PerSequence(MaskSource):
        """A given (B, L, N) mask per question, in task order."""

        def __init__(self, masks: torch.Tensor):
            self.all, self.next, self.k_hat, self.name = masks, 0, k_hat, "oracle_sequence"

        def start(self, batch_size: int) -> torch.Tensor:
            masks = self.all[self.next:self.next + batch_size]
            self.next += batch_size
            return masks

        def sequence_switches(self, b, rows, router_logits, expert_ids):
            return (None, None) if rows.numel() < 2 else (0.0, 0)  # one fixed mask per answer

    class Periodic(MaskSource):
        """Router top-k̂ at the last prompt position, re-chosen every `period` generated tokens (None: never).

        With `decay`, the choice is the top-k̂ of a moving average of router probabilities (over the prompt,
        then every generated token) instead of one token's logits.
        """

        switch_definition = "mask"

        def __init__(self, period: int | None, decay: float | None = None, demand: float | None = None):
            self.period, self.k_hat, self.decay, self.demand = period, k_hat, decay, demand
            kind = "sticky" if period is None else f"periodic-{period}"
            self.name = kind + ("" if decay is None else "-ema")
            if demand is not None:
                self.name = f"demand-{demand:g}"

        def start(self, batch_size: int):
            self.option: list[torch.Tensor | None] = [None] * L
            self.calls = [0] * L
            self.history: list[list[torch.Tensor]] = [[] for _ in range(L)]

            self.avg: list[torch.Tensor | None] = [None] * L
            self.last: list[torch.Tensor | None] = [None] * L  # router logits at the newest position

            def top(i: int, hidden: torch.Tensor) -> torch.Tensor:
                """Option for the newest position of hidden (B, S, H), updating the moving average."""
                if self.decay is None:
                    return router_top(i, hidden[:, -1])
                for s in range(hidden.shape[1]):  # prompt: left padding only adds a constant start
                    self.last[i] = router_logits(i, hidden[:, s])
                    probs = self.last[i].softmax(-1) if args.ema_space == "probs" else self.last[i]
                    prev = self.avg[i]
                    self.avg[i] = probs if prev is None else self.decay * prev + (1 - self.decay) * probs
                ids = self.avg[i].topk(k_hat, -1).indices
                return torch.zeros(hidden.shape[0], N, dtype=torch.bool).scatter_(1, ids, True)

            def fn(i: int, hidden: torch.Tensor) -> torch.Tensor:
                B, S, _ = hidden.shape
                if self.option[i] is None:  # prompt forward: free routing, option from the last position
                    self.option[i] = top(i, hidden)
                    out = torch.ones(B, S, N, dtype=torch.bool)
                    out[:, -1] = self.option[i]
                    self.history[i].append(self.option[i])
                    return out
                self.calls[i] += 1
                option = top(i, hidden)  # keeps the moving average current
                if self.period is not None and self.calls[i] % self.period == 0:
                    self.option[i] = option
                if self.demand is not None:  # re-choose where the router's mass outside the option > τ
                    outside = (self.last[i].softmax(-1) * ~self.option[i]).sum(-1)
                    self.option[i] = torch.where((outside > self.demand)[:, None], option, self.option[i])
                self.history[i].append(self.option[i])
                return self.option[i][:, None].expand(B, S, N)

            return fn

        def options(self, b, rows):
            T = rows.numel()
            return torch.stack([torch.stack([h[b] for h in self.history[i][:T]]) for i in range(L)], dim=1)

        def sequence_switches(self, b, rows, router_logits, expert_ids):
            if rows.numel() < 2:
                return None, None
            options = self.options(b, rows)
            return temoe.metrics.switch_rate(options), int((options[1:] & ~options[:-1]).sum())

    periods = [int(x) for x in args.periods.split(",") if x]
    demands = [float(x) for x in args.demand.split(",") if x]
    if any(not 0 < x < 1 for x in demands):
        raise SystemExit(f"--demand thresholds must be in (0, 1), got {args.demand}")
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           batch_size=args.batch_size)
    rows = []
    t0 = time.perf_counter()
    for task_name in args.tasks.split(","):
        task = load_task(task_name, limit=args.limit)
        base, records = evaluate(handle, tokenizer, task, BaseSource(k_hat), cfg)
        usage = _masks_from_usage(records, L, N, k_hat)
        freq = _masks_from_usage([{"active_experts": [p for r in records for p in r["active_experts"]]}],
                                 L, N, k_hat)[0]
        sources = [PerSequence(usage), Periodic(None), *[Periodic(q) for q in periods],
                   Periodic(None, args.decay), *[Periodic(q, args.decay) for q in periods],
                   *[Periodic(None, args.decay, x) for x in demands],
                   StaticMaskSource(freq, "task_frequency")]
        rows.append((task_name, "base", base["accuracy"], base["switch_rate"]))
        for source in sources:
            summary, _ = evaluate(handle, tokenizer, task, source, cfg)
            rows.append((task_name, source.name, summary["accuracy"], summary["switch_rate"]))
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"hardware: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model {args.model} (L={L}, N={N}, k={handle.top_k}), "
          f"k̂={k_hat}, "
          f"{'greedy' if args.temperature == 0 else f'temperature {args.temperature:g}'}, "
          f"{args.limit} questions per task, {time.perf_counter() - t0:.0f} s")
    print(f"{'task':<18}{'policy':<18}{'accuracy':>10}{'switch rate':>13}")
    for task_name, name, acc, rate in rows:
        rate_s = "-" if rate is None or rate != rate else f"{rate:.3f}"
        print(f"{task_name:<18}{name:<18}{acc:>10.3f}{rate_s:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
