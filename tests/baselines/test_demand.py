"""The demand rule: routing stays inside the option, and the option changes exactly where the router's
probability mass outside the previous option exceeds τ."""

import pytest
import torch

import temoe
from temoe.baselines.demand import DemandSource
from temoe.rollout.runner import GenerationConfig, generate
from temoe.testing import tiny_model

CFG = GenerationConfig(max_new_tokens=12, temperature=0.0, batch_size=2, seed=0)


@pytest.mark.parametrize("threshold", [0.2, 0.5])
def test_switches_exactly_on_demand(threshold, tokenizer):
    handle = temoe.wrap(tiny_model("mixtral", seed=3))
    source = DemandSource(handle, k_hat=4, threshold=threshold)
    gens = generate(handle, tokenizer, ["first prompt here", "hi"], source, CFG, torch.Generator(),
                    eos_ids=set())
    switches = 0
    for g in gens:
        options = g.options  # (T, L, N)
        assert options.sum(-1).eq(4).all()
        routed = torch.zeros_like(options).scatter_(-1, g.expert_ids, True)
        assert bool((routed <= options).all())  # routing inside the option
        outside = (g.router_logits[1:].softmax(-1) * ~options[:-1]).sum(-1)  # (T-1, L): mass outside ω_{t-1}
        changed = (options[1:] != options[:-1]).any(-1)
        assert bool((changed <= (outside > threshold)).all())
        assert g.experts_loaded == int((options[1:] & ~options[:-1]).sum())
        switches += int(changed.sum())
    assert switches > 0  # the rule fired, so the check above tested something


def test_threshold_out_of_range_is_refused():
    handle = temoe.wrap(tiny_model("mixtral"))
    with pytest.raises(ValueError, match=r"τ must be in \(0, 1\)"):
        DemandSource(handle, k_hat=4, threshold=1.5)
