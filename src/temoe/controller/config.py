"""ControllerConfig: the option controller's hyperparameters (paper §4.2 and appendix A2)."""

from __future__ import annotations

from dataclasses import dataclass

from temoe.validation import NON_NEGATIVE, TRAIN_RANGES, Range, check_fields

INITIAL_OPTIONS = ("router", "selection")
SWITCH_COSTS = ("flat", "loads")
AUTO = "auto"
EMA_DECAY = Range(0, 1, hi_open=True)
"""`eta: auto`: η is a Lagrange multiplier tuned to meet `load_budget` or `stall_budget_ms`."""


@dataclass(frozen=True)
class ControllerConfig:
    """Hyperparameters of the per-layer option controllers and of their termination cost.

    Defaults follow the paper (Shen & Henderson 2026); the fields marked "temoe extension" are off by
    default. `TrainConfig.controller` holds one, and every checkpoint stores the one it was trained with.
    """

    k_hat: int
    """K = k̂, the number of allowed experts in an option (§5: 16 and 8 for gpt-oss-20b). Must satisfy
    k̃ <= k̂ <= N for the model it controls (checked when the controller is built)."""

    eta: float | str = 0.02
    """Deliberation cost η in the termination advantage A^term_t = Q(h_t, ω_{t-1}) − V(h_t) + η
    (Alg. 2 continued, line 13; §5: 0.02, 0.03, 0.04). Used by the trainer's termination loss. "auto"
    (temoe extension): η starts at `eta_init` and follows dual ascent once per training step towards
    `load_budget` (or `stall_budget_ms`), η ← max(0, η + α (measured − budget) / budget), α = `eta_lr`;
    with `eta_kp` > 0, a PI update (`temoe.rl.pi_dual_update`)."""

    switch_cost: str = "flat"
    """How a switch is charged (temoe extension): "flat" = η per switch (the paper); "loads" = η · |ω̃_t \\
    ω_{t-1}| / k̂, the experts the candidate option ω̃_t would load, so the selection head is also pushed
    towards options that overlap the current one (docs/controller.md, "A deliberation cost in expert
    loads")."""

    eta_init: float = 0.02
    """With `eta: auto`: η at step 1."""

    eta_lr: float = 0.01
    """With `eta: auto`: α, the step size of η's dual ascent on the relative budget error (the integral
    term of the PI update)."""

    eta_kp: float = 0.0
    """With `eta: auto` (temoe extension): K_p, the proportional gain of a PI update (the PID Lagrangian of
    Stooke, Achiam & Abbeel 2020): η = max(0, η_I + K_p e), η_I the dual-ascent integral, e the relative
    budget error of the averaged loads (`eta_ema`). 0 = plain dual ascent."""

    eta_ema: float = 0.0
    """With `eta: auto` (temoe extension): decay d of the exponential moving average of the per-step loads
    that the proportional term reads, m ← d m + (1 − d) x, in [0, 1) (0 = the step's own loads; the
    integral always reads the step's own loads)."""

    load_budget: float = 0.0
    """With `eta: auto`: the target of expert loads per generated token, summed over the MoE layers
    (0 = none; exactly one of `load_budget` and `stall_budget_ms` is set)."""

    stall_budget_ms: float = 0.0
    """With `eta: auto`: the target of transfer stall per generated token in ms, converted to a load budget
    through `hardware`'s bytes per expert and host -> device bandwidth (0 = none)."""

    hardware: str = ""
    """A `temoe.cost` hardware profile name (`temoe.cost.profile_names()`): converts `stall_budget_ms` to
    loads and lets the trainer log the stall per token ("" = none)."""

    expert_embed_dim: int = 128
    """d_e, size of the learned expert embeddings e_i of the DeepSets encoder (A2: d_e = 128)."""

    hidden: int = 1024
    """Hidden width of the DeepSets φ MLP (also its output size d_c) and of the termination and
    option-value MLPs (A2: "hidden dimension 1024")."""

    termination_bias_init: float = -3.0
    """Initial bias of the termination head's output unit (A2: -3, so β ≈ σ(-3) ≈ 0.047 at the start)."""

    head_init_scale: float = 0.01
    """Scale applied to the default init of the last Linear of the termination and Q heads, so that β
    starts at σ(termination_bias_init) for every input and Q starts near 0."""

    selection_context_decay: float = 0.0
    """Decay d of the selection head's input (temoe extension; 0 = the paper's f_sel(h_t)). With d > 0 the
    selection logits are c_t = f_sel(h̄_t), h̄_t the causal moving average of the layer's hidden states over
    the prompt and every generated token, h̄_t = (Σ_s d^{t-s} (1-d) h_s) / (Σ_s d^{t-s} (1-d)) with padding
    excluded. An option is held for many tokens, so choosing it from one token's state is myopic
    (`benchmarks/bench_restricted.py --ema-space logits` compares the two). f_sel stays linear, so at
    initialisation c_t is the router's logits averaged over time."""

    initial_option: str = "router"
    """ω_0 at t = 0: "router" (the paper, §4.2: the router's top-k̂ at h_0) or "selection" (the top-k̂ of the
    selection head's logits c_0, which reads the moving average h̄_0 when `selection_context_decay` > 0 and
    is learned; at initialisation it is the router's top-k̂ of the averaged state)."""

    selection_temperature: float = 1.0
    """Temperature T of the selection policy: Plackett–Luce over c_t / T (temoe extension; 1 = the paper).
    Below 1 the draws at terminations keep more of the top-k̂ of c_t (at initialisation the router's), above
    1 they explore more. The recorded and replayed log-probs use the same T."""

    termination_demand: float = 0.0
    """Scale s of the demand term of the termination logit (temoe extension; 0 = off, the paper's β). With
    s > 0, logit β_t = f_β([h_t; z(ω_{t-1})]) + s · (m_t − τ), where m_t is the router's probability mass
    outside the current option at this token, m_t = Σ_{j ∉ ω_{t-1}} softmax(router(h_t))_j, and
    τ = `termination_demand_threshold`. s and τ are learned per layer (initialised from these fields), f_β
    corrects them. Whether to switch depends on whether the token needs experts the option lacks, a product
    of h_t and ω_{t-1} that a freshly initialised MLP does not compute
    (`benchmarks/bench_restricted.py --demand` measures the rule alone). Set `termination_bias_init` to 0
    with it, so that β = 1/2 at m_t = τ."""

    termination_demand_threshold: float = 0.5
    """τ of `termination_demand`: the outside mass at which the demand term is zero."""

    norm_eps: float = 1e-6
    """Epsilon of the RMSNorms on h and z (gpt-oss uses 1e-6)."""

    @property
    def eta_auto(self) -> bool:
        """η is tuned by dual ascent (`eta: auto`)."""
        return self.eta == AUTO

    @property
    def initial_eta(self) -> float:
        """η of the first training step: `eta`, or `eta_init` with `eta: auto`."""
        return float(self.eta_init if self.eta_auto else self.eta)

    def stall_ms_per_load(self) -> float | None:
        """Milliseconds one expert load stalls decoding on `hardware` (None without a profile)."""
        if not self.hardware:
            return None
        from temoe.cost import load_profile

        return load_profile(self.hardware).load_ms  # per-copy overhead + expert bytes / bandwidth

    def load_budget_per_token(self) -> float | None:
        """The budget in expert loads per generated token (summed over layers), None unless `eta: auto`."""
        if not self.eta_auto:
            return None
        if self.load_budget > 0:
            return float(self.load_budget)
        return self.stall_budget_ms / self.stall_ms_per_load()

    def __post_init__(self) -> None:
        ranges = {k: v for k, v in TRAIN_RANGES.items() if k != "eta" or not self.eta_auto}
        check_fields(self, ranges, prefix="config key controller.")  # finite; eta >= 0
        self._check_eta()
        checks = (
            ("k_hat", self.k_hat >= 1, "must be >= 1"),
            ("expert_embed_dim", self.expert_embed_dim >= 1, "must be >= 1"),
            ("hidden", self.hidden >= 1, "must be >= 1"),
            ("selection_context_decay", 0.0 <= self.selection_context_decay < 1.0,
             "must be in [0, 1) (0 = the paper's selection from h_t)"),
            ("initial_option", self.initial_option in INITIAL_OPTIONS, "must be 'router' or 'selection'"),
            ("selection_temperature", self.selection_temperature > 0,
             "must be > 0 (1 = the paper's Plackett-Luce over c_t)"),
            ("termination_demand", self.termination_demand >= 0,
             "must be >= 0 (0 = the paper's termination, no demand term)"),
            ("termination_demand_threshold", 0.0 < self.termination_demand_threshold < 1.0,
             "must be in (0, 1): a probability mass"),
        )
        for key, ok, why in checks:
            if not ok:
                raise ValueError(f"ControllerConfig.{key}={getattr(self, key)!r}: {why}")

    def _check_eta(self) -> None:
        """η: a number >= 0, or "auto" with exactly one budget (a stall budget with a hardware profile)."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"ControllerConfig.{key}={getattr(self, key)!r}: {why}")

        if isinstance(self.eta, str) and not self.eta_auto:
            raise bad("eta", f"must be a number >= 0 or {AUTO!r}")
        if not self.eta_auto and self.eta < 0:
            raise bad("eta", "must be >= 0 (a cost; 0 = switching is free)")
        if self.switch_cost not in SWITCH_COSTS:
            raise bad("switch_cost", f"must be one of {', '.join(SWITCH_COSTS)}")
        for key in ("eta_init", "eta_lr", "eta_kp", "load_budget", "stall_budget_ms"):
            NON_NEGATIVE.check(f"ControllerConfig.{key}", getattr(self, key))
        EMA_DECAY.check("ControllerConfig.eta_ema", self.eta_ema)
        budgets = [k for k in ("load_budget", "stall_budget_ms") if getattr(self, k) > 0]
        if budgets and not self.eta_auto:
            raise bad(budgets[0], f"a budget needs eta: {AUTO} (eta={self.eta!r} is fixed)")
        if self.eta_auto and len(budgets) != 1:
            raise bad("eta", "'auto' needs exactly one of load_budget > 0 or stall_budget_ms > 0 (with "
                             f"hardware), got {' and '.join(budgets) or 'neither'}")
        if self.stall_budget_ms > 0 and not self.hardware:
            raise bad("stall_budget_ms", "needs a hardware profile to convert ms to expert loads; valid "
                                         f"hardware: {', '.join(_profile_names())}")
        if self.hardware:
            try:
                self.stall_ms_per_load()
            except ValueError:
                raise bad("hardware", f"valid: {', '.join(_profile_names())}") from None


def _profile_names() -> list[str]:
    """The hardware profiles read from the shipped file (`local` is measured, not named in a config)."""
    from temoe.cost import load_profile, profile_names

    def readable(name: str) -> bool:
        try:
            load_profile(name)
        except ValueError:
            return False
        return True

    return [name for name in profile_names() if readable(name)]
