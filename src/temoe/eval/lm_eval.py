"""lm-evaluation-harness integration: `TemoeLM`, an `HFLM` whose every forward runs under masks from a
`MaskSource` (base, a pruning baseline, or a trained controller) through `MoEHandle.restrict`.

Option state is reset per sequence: each harness batch gets a fresh `source.start(B)` (for a controller, a new
`OptionState` with one independent row per sequence), so no option carries over between requests.

- loglikelihood / multiple choice (`_model_call`, right-padded (B, S) batches): static and random masks
  apply to the one forward. A controller runs the first position as its prompt (ω_0 = the router's top-k̂
  there) and then controls every later position teacher-forced, in one cached forward (its decisions are
  sequential per position inside the call), the way it runs during generation.
- generate_until (`_model_generate`): the batched runner (`temoe.rollout.runner.generate_from_ids`), the
  same code path as `temoe eval`; `do_sample`, `temperature`, `top_p` come from the task's generation kwargs.

Usage (Python API; needs `pip install lm-eval`):

    import lm_eval, temoe
    from temoe.eval.lm_eval import TemoeLM
    from temoe.rollout.masks import BaseSource
    model, tok = temoe.load_model("tiny")
    lm = TemoeLM(temoe.wrap(model), tok, BaseSource(k_hat=16), batch_size=8)
    results = lm_eval.simple_evaluate(model=lm, tasks=["my_local_task"],
                                      task_manager=lm_eval.tasks.TaskManager(include_path="tasks/"))
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from lm_eval.models.huggingface import HFLM

from temoe.rollout.masks import ControllerSource, MaskSource
from temoe.rollout.runner import GenerationConfig, generate_from_ids

__all__ = ["TemoeLM"]


class TemoeLM(HFLM):
    """An `HFLM` over a `temoe.wrap`-ped model whose routing is restricted by `source`.

    handle: the model's `MoEHandle`; tokenizer: its HF tokenizer; source: where masks come from;
    seed: seeds the generator of sampled generations (a controller's draws use the source's generator).
    Remaining keyword arguments go to `HFLM` (batch_size, max_length, ...).
    """

    def __init__(self, handle, tokenizer, source: MaskSource, *, seed: int = 42, **kwargs):
        device = next(handle.model.parameters()).device
        super().__init__(pretrained=handle.model, tokenizer=tokenizer, device=str(device), **kwargs)
        self.handle, self.source = handle, source
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _restrict(self, batch_size: int):
        masks = self.source.start(batch_size)  # fresh per batch: option state reset per sequence
        return self.handle.restrict(masks) if masks is not None else nullcontext()

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """(B, S) token ids -> (B, S, V) logits under the source's masks."""
        if attn_mask is not None or labels is not None:
            raise ValueError("TemoeLM supports causal LMs only (backend='causal')")
        model = self.handle.model
        with torch.no_grad(), self._restrict(inps.shape[0]):
            if not isinstance(self.source, ControllerSource) or inps.shape[1] == 1:
                return model(inps).logits
            first = model(inps[:, :1], use_cache=True)  # the controller's prompt: position 0
            self.source.after_prefill()
            rest = model(inps[:, 1:], past_key_values=first.past_key_values, use_cache=True)
            return torch.cat([first.logits, rest.logits], dim=1)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        **generation_kwargs) -> torch.Tensor:
        """Left-padded (B, S) context -> (B, S + new) ids like HF `generate`, padded after each row's end."""
        attn = generation_kwargs.pop("attention_mask", None)
        if attn is None:
            attn = torch.ones_like(context)
        do_sample = bool(generation_kwargs.get("do_sample", False))
        temperature = float(generation_kwargs.get("temperature", 0.0)) if do_sample else 0.0
        cfg = GenerationConfig(max_new_tokens=max(1, max_length - context.shape[1]), temperature=temperature,
                               top_p=float(generation_kwargs.get("top_p", 1.0) or 1.0),
                               batch_size=context.shape[0], max_prompt_tokens=context.shape[1])
        gens = generate_from_ids(self.handle, self.tokenizer, context, attn, self.source, cfg, self.generator,
                                 stop=stop)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max((len(g.token_ids) for g in gens), default=0)
        out = torch.full((context.shape[0], context.shape[1] + width), pad, dtype=context.dtype)
        out[:, :context.shape[1]] = context.cpu()
        for b, g in enumerate(gens):
            out[b, context.shape[1]:context.shape[1] + len(g.token_ids)] = torch.tensor(g.token_ids)
        return out.to(context.device)
