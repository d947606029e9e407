"""The per-layer controller networks (paper §4.2, A2): DeepSets set encoder and the four heads.

Shape legend: B batch, T tokens, N experts, K = k̂ allowed experts, H hidden, D = ControllerConfig.hidden.
All parameters and arithmetic are float32; hidden states are cast to float32 on entry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from temoe.controller.config import ControllerConfig
from temoe.controller.options import indices_to_mask


class SetEncoder(nn.Module):
    """DeepSets expert-set embedding z(ω) = (1/k̂) Σ_{i∈ω} φ(e_i) (Eq. 2), φ = Linear-GELU-Linear."""

    def __init__(self, num_experts: int, embed_dim: int, hidden: int):
        super().__init__()
        self.expert_embedding = nn.Embedding(num_experts, embed_dim)
        self.phi = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

        self._table_cache: tuple[tuple[int, ...], Tensor] | None = None

    def table(self) -> Tensor:
        """φ(e_i) for all N experts, (N, D). φ depends on the expert only, so it is applied once per call.

        Without autograd (rollouts, generation) the table is cached and recomputed only when a parameter
        changed: the key is the parameters' in-place version counters, which every optimizer step bumps.
        """
        if torch.is_grad_enabled():
            return self.phi(self.expert_embedding.weight)
        key = tuple(p._version for p in self.parameters()) + tuple(p.data_ptr() for p in self.parameters())
        if self._table_cache is None or self._table_cache[0] != key:
            self._table_cache = (key, self.phi(self.expert_embedding.weight))
        return self._table_cache[1]

    def forward(self, ids: Tensor) -> Tensor:
        """ids (..., K) distinct expert ids of a set (any order) -> z (..., D).

        The mean over members as (0/1 membership (..., N)) @ φ-table (N, D) / K: one small matmul, cheaper
        than gathering K rows of width D per set.
        """
        table = self.table()
        members = indices_to_mask(ids, table.shape[0]).to(table.dtype)  # (..., N)
        return members @ table / ids.shape[-1]


def outside_mass(router_logits: Tensor, option: Tensor) -> Tensor:
    """m = Σ_{j ∉ ω} softmax(router_logits)_j: router_logits (..., N), option ids (..., K) -> (...) float32.

    Computed as 1 − (mass inside), clamped to [0, 1] against rounding."""
    probs = router_logits.float().softmax(-1)
    return (1.0 - probs.gather(-1, option).sum(-1)).clamp(0.0, 1.0)


def _mlp(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class LayerController(nn.Module):
    """One MoE layer's controller: termination β (Eq. 3), option value Q (Eq. 4), state value V, selection.

    β and Q read [RMSNorm(h); RMSNorm(z(ω))] and share the two norms and the set encoder (as the paper's
    notation and the authors' code do). V and the selection head are linear in the raw h, the tensor the
    router reads, so a selection head copied from the router reproduces the router's logits exactly.
    """

    def __init__(self, num_experts: int, hidden_size: int, config: ControllerConfig):
        super().__init__()
        d = config.hidden
        self.set_encoder = SetEncoder(num_experts, config.expert_embed_dim, d)
        self.h_norm = nn.RMSNorm(hidden_size, eps=config.norm_eps)
        self.z_norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.termination = _mlp(hidden_size + d, d)
        self.q_head = _mlp(hidden_size + d, d)
        self.value = nn.Linear(hidden_size, 1)
        self.selection = nn.Linear(hidden_size, num_experts)
        self.selection_temperature = config.selection_temperature
        # Demand term of the termination logit (ControllerConfig.termination_demand): learned s and τ.
        self.demand_scale: nn.Parameter | None = None
        self.demand_threshold: nn.Parameter | None = None
        if config.termination_demand > 0:
            self.demand_scale = nn.Parameter(torch.tensor(float(config.termination_demand)))
            self.demand_threshold = nn.Parameter(torch.tensor(float(config.termination_demand_threshold)))
        self.reset_heads(config)

    @torch.no_grad()
    def reset_heads(self, config: ControllerConfig) -> None:
        """The intended initialisation (A2): β ≡ σ(bias_init), Q ≈ 0, V ≡ 0."""
        for head in (self.termination, self.q_head):
            head[-1].weight.mul_(config.head_init_scale)
            head[-1].bias.zero_()
        self.termination[-1].bias.fill_(config.termination_bias_init)
        # A2's "V initialised from the router weights" cannot be meant literally (V is R^H -> R, the router
        # R^H -> R^N); it describes the selection head. V starts at exactly 0, the neutral value estimate.
        self.value.weight.zero_()
        self.value.bias.zero_()

    @torch.no_grad()
    def init_selection_from_router(self, weight: Tensor, bias: Tensor | None) -> None:
        """Copy the router: selection logits c_t equal the router logits at initialisation (A2)."""
        self.selection.weight.copy_(weight)
        if bias is None:
            self.selection.bias.zero_()
        else:
            self.selection.bias.copy_(bias)

    def _state_option(self, h: Tensor, ids: Tensor) -> Tensor:
        """h (..., H) float32, ids (..., K) -> [RMSNorm(h); RMSNorm(z(ω))] (..., H + D)."""
        z = self.set_encoder(ids)
        return torch.cat([self.h_norm(h), self.z_norm(z)], dim=-1)

    @property
    def uses_demand(self) -> bool:
        """Whether β_t has the demand term (`ControllerConfig.termination_demand` > 0)."""
        return self.demand_scale is not None

    def termination_logit(self, h: Tensor, option_prev: Tensor, outside_mass: Tensor | None = None) -> Tensor:
        """h (..., H), ω_{t-1} ids (..., K) -> logit of β_t (...) (Eq. 3, Alg. 2 line 6).

        outside_mass: m_t (...), the router's probability mass outside ω_{t-1} (`outside_mass`); required
        when the demand term is on, which adds s · (m_t − τ).
        """
        logit = self.termination(self._state_option(h.float(), option_prev)).squeeze(-1)
        if self.demand_scale is None:
            return logit
        if outside_mass is None:
            raise ValueError("this controller's termination has the demand term (termination_demand > 0): "
                             "pass outside_mass, the router's probability mass outside ω_{t-1}")
        return logit + self.demand_scale * (outside_mass.float() - self.demand_threshold)

    def option_value(self, h: Tensor, option: Tensor) -> Tensor:
        """Q_Ω(h, ω): h (..., H), ids (..., K) -> (...)."""
        return self.q_head(self._state_option(h.float(), option)).squeeze(-1)

    def state_value(self, h: Tensor) -> Tensor:
        """V_Ω(h) = w_V^T h + b_V: h (..., H) -> (...)."""
        return self.value(h.float()).squeeze(-1)

    def selection_logits(self, h: Tensor) -> Tensor:
        """c_t = f_sel(h_t) / T: h (..., H) -> (..., N) (T = `ControllerConfig.selection_temperature`, 1 by
        default)."""
        logits = self.selection(h.float())
        return logits if self.selection_temperature == 1.0 else logits / self.selection_temperature
