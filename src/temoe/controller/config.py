"""ControllerConfig: the option controller's hyperparameters (paper §4.2 and appendix A2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControllerConfig:
    """Hyperparameters of the per-layer option controllers. Defaults follow the paper."""

    k_hat: int
    """K = k̂, the number of allowed experts in an option (§4: 8 or 16 for gpt-oss-20b). Must satisfy
    k̃ <= k̂ <= N for the model it controls (checked when the controller is built)."""

    expert_embed_dim: int = 128
    """d_e, size of the learned expert embeddings e_i of the DeepSets encoder (A2: d_e = 128)."""

    hidden: int = 1024
    """Hidden width of the DeepSets φ MLP (also its output size d_c) and of the termination and
    option-value MLPs (A2: "hidden dimension 1024")."""

    termination_bias_init: float = -3.0
    """Initial bias of the termination head's output unit (A2: -3, so β ≈ σ(-3) ≈ 0.047 at the start)."""

    head_init_scale: float = 0.01
    """Scale applied to the default init of the last Linear of the termination and Q heads, so that β
    starts at σ(termination_bias_init) for every input and Q starts near 0 (the authors' intended init,
    digest §1.3; their HF loading overwrote it)."""

    control_prompt: bool = False
    """If False (default), prompt positions route with the router's own top-k̂ and the controller's
    t = 0 is the last prompt position (the one that predicts the first generated token). If True, every
    prompt position is a decision point as in the authors' code (digest §6.5); t = 0 is then each row's
    first non-padding prompt position."""

    epsilon: float = 0.0
    """Probability of replacing a Plackett–Luce selection by a uniformly random ordered k̂-tuple (the
    authors' exploration mixture, not in the paper; off by default). When > 0 the recorded and replayed
    selection log-probs are those of the mixture, so the policy gradient stays on-policy."""

    selection_context_decay: float = 0.0
    """Decay d of the selection head's input (temoe extension, not in the paper; 0 = the paper's f_sel(h_t)).
    With d > 0 the selection logits are c_t = f_sel(h̄_t), h̄_t the causal moving average of the layer's hidden
    states over the prompt and every generated token, h̄_t = (Σ_s d^{t-s} (1-d) h_s) / (Σ_s d^{t-s} (1-d))
    with padding excluded. An option is held for many tokens, so choosing it from one token's state is
    myopic: on the embedded model the router's top-16 at a moving average of hidden states (d = 0.9) keeps
    92/92/96 % of math/MC/multilingual accuracy with no switching, the router's top-16 at one token 91/85/83 %
    (BENCHMARKS.md). f_sel stays linear, so at initialisation c_t is the router's logits averaged over
    time."""

    initial_option: str = "router"
    """ω_0 at t = 0: "router" (the paper, §4.2: the router's top-k̂ at h_0) or "selection" (the top-k̂ of the
    selection head's logits c_0, which reads the moving average h̄_0 when `selection_context_decay` > 0 and
    is learned; at initialisation it is the router's top-k̂ of the averaged state)."""

    selection_temperature: float = 1.0
    """Temperature T of the selection policy: Plackett–Luce over c_t / T (temoe extension; 1 = the paper).
    Below 1 the draws at terminations keep more of the top-k̂ of c_t (at initialisation the router's), above 1 they
    explore more. The recorded and replayed log-probs use the same T."""

    termination_demand: float = 0.0
    """Scale s of the demand term of the termination logit (temoe extension, not in the paper; 0 = off, the
    paper's β). With s > 0, logit β_t = f_β([h_t; z(ω_{t-1})]) + s · (m_t − τ), where m_t is the router's
    probability mass outside the current option at this token, m_t = Σ_{j ∉ ω_{t-1}} softmax(router(h_t))_j
    (a sigmoid-scored router's logits are softmaxed the same way), and τ = `termination_demand_threshold`.
    s and τ are learned per layer (initialised from these fields), f_β corrects them. Why: whether to switch
    depends on whether the token needs experts the option lacks, a product of h_t and ω_{t-1} that a freshly
    initialised MLP does not compute. On the embedded model (temperature 0.5), terminating exactly when
    m_t > 0.5 and re-choosing from the selection context scores 99 / 91 / 90 % math / MC / multilingual at
    4-6 % switching, against 89 / 90.5 / 87 % for keeping the first option (BENCHMARKS.md). Set
    `termination_bias_init` to 0 with it, so that β = 1/2 at m_t = τ."""

    termination_demand_threshold: float = 0.5
    """τ of `termination_demand`: the outside mass at which the demand term is zero."""

    norm_eps: float = 1e-6
    """Epsilon of the RMSNorms on h and z (gpt-oss uses 1e-6)."""

    def __post_init__(self) -> None:
        if self.k_hat < 1:
            raise ValueError(f"ControllerConfig.k_hat must be >= 1, got {self.k_hat}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"ControllerConfig.epsilon must be in [0, 1], got {self.epsilon}")
        if not 0.0 <= self.selection_context_decay < 1.0:
            raise ValueError("ControllerConfig.selection_context_decay must be in [0, 1), "
                             f"got {self.selection_context_decay}")
        if not self.selection_temperature > 0:
            raise ValueError("ControllerConfig.selection_temperature must be > 0, "
                             f"got {self.selection_temperature}")
        if self.initial_option not in ("router", "selection"):
            raise ValueError("ControllerConfig.initial_option must be 'router' or 'selection', "
                             f"got {self.initial_option!r}")
        if not self.termination_demand >= 0:
            raise ValueError("ControllerConfig.termination_demand must be >= 0 (0 = off), "
                             f"got {self.termination_demand}")
        if not 0.0 < self.termination_demand_threshold < 1.0:
            raise ValueError("ControllerConfig.termination_demand_threshold must be in (0, 1), "
                             f"got {self.termination_demand_threshold}")
        if self.expert_embed_dim < 1 or self.hidden < 1:
            raise ValueError("ControllerConfig.expert_embed_dim and ControllerConfig.hidden must be >= 1")
