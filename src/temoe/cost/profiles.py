"""Hardware profiles: the figures the decode cost model needs for one device and model, read from the
package's `hardware.yaml` (each figure with its source), validated, and scalable to another model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import yaml

#: Figures every profile carries; each needs a source.
FIGURES = (
    "num_layers",
    "expert_bytes",
    "h2d_bandwidth_gbps",
    "copy_overhead_ms",
    "decode_tok_s",
    "background_overlap",
)
#: Serving paths whose own per-layer work a profile prices (`method_overhead_ms`): the engine attached with
#: every expert resident (full), an expert cache over the base router (cache), masked routing with options
#: or a static mask (option).
PATHS = ("full", "cache", "option")
_FIELDS = {"description", "model", "dtype", "sources", "measured", "method_overhead_ms", *FIGURES}


@dataclass(frozen=True)
class HardwareProfile:
    """One device serving one model at batch 1 (see docs/cost-model.md for how each figure is used)."""

    name: str
    num_layers: int
    """L, MoE layers of the model the figures belong to."""
    expert_bytes: int
    """Bytes copied host -> device per expert load."""
    h2d_bandwidth_gbps: float
    """Pinned host -> device bandwidth, GB/s (1e9 B/s)."""
    copy_overhead_ms: float
    """Fixed cost of one expert copy on top of expert_bytes / bandwidth."""
    decode_tok_s: float
    """Full-residency decode speed at batch 1 (every expert on the device): the compute time per token."""
    background_overlap: float
    """Fraction of compute time during which background copies run concurrently (1: side stream, 0: none)."""
    method_overhead_ms: dict[str, float] = field(default_factory=dict)
    """Serving path (`PATHS`) -> its own host and device work beyond the plain model's decode, ms per MoE
    layer per token (mask function, masked routing, residency bookkeeping); empty = not priced (all 0)."""
    dtype: str = ""
    """Storage format of `expert_bytes` (bf16, mxfp4, fp32, ...)."""
    description: str = ""
    model: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    """Figure name -> where it comes from."""

    def __post_init__(self):
        _validate(self)

    @property
    def compute_ms(self) -> float:
        """Full-residency decode time per token (ms)."""
        return 1e3 / self.decode_tok_s

    def path_overhead_ms(self, path: str) -> float:
        """The serving path's own work per token (ms): its per-layer overhead x num_layers."""
        if path not in PATHS:
            raise ValueError(f"unknown serving path {path!r}; valid: {', '.join(PATHS)}")
        return self.method_overhead_ms.get(path, 0.0) * self.num_layers

    @property
    def load_ms(self) -> float:
        """Time of one expert load: copy_overhead_ms + expert_bytes / bandwidth (ms)."""
        return self.copy_overhead_ms + self.expert_bytes / (self.h2d_bandwidth_gbps * 1e9) * 1e3

    def to_entry(self) -> dict:
        """This profile as a hardware.yaml entry (plain types; YAML or JSON): `load_profile` reads it back."""
        entry = {f: getattr(self, f) for f in FIGURES if f != "expert_bytes"}
        entry.update(
            description=self.description,
            model=self.model,
            dtype=self.dtype,
            expert_bytes={self.dtype or "default": self.expert_bytes},
            sources=dict(self.sources),
        )
        if self.method_overhead_ms:
            entry["method_overhead_ms"] = dict(self.method_overhead_ms)
        return entry

    def scaled(
        self, *, expert_bytes: int | None = None, num_layers: int | None = None, name: str | None = None
    ) -> HardwareProfile:
        """The same device serving another model: its expert size and MoE layer count.

        Bandwidth, copy overhead and overlap stay; the compute time per token scales with the layer count
        (decode time taken as proportional to depth; docs/cost-model.md lists what this ignores), and so does
        the paths' overhead, which is per layer.
        """
        layers = self.num_layers if num_layers is None else num_layers
        nbytes = self.expert_bytes if expert_bytes is None else expert_bytes
        for what, value in (("num_layers", layers), ("expert_bytes", nbytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"scaling {self.name!r}: {what} must be a positive integer, got {value!r}")
        note = f"scaled from profile {self.name!r}"
        sources = dict(self.sources)
        if nbytes != self.expert_bytes:
            sources["expert_bytes"] = f"given ({note}, which had {self.expert_bytes} B)"
        if layers != self.num_layers:
            sources["num_layers"] = f"given ({note}, which had {self.num_layers})"
            sources["decode_tok_s"] = (
                f"{note}: its decode time x {layers}/{self.num_layers} layers. "
                + self.sources["decode_tok_s"]
            )
            if self.method_overhead_ms:
                sources["method_overhead_ms"] = (
                    f"{note}: per layer, x {layers} layers. " + self.sources["method_overhead_ms"]
                )
        return replace(
            self,
            name=name or f"{self.name}@L{layers}-{nbytes}B",
            num_layers=layers,
            expert_bytes=nbytes,
            decode_tok_s=self.decode_tok_s * self.num_layers / layers,
            sources=sources,
        )


def _validate(p: HardwareProfile) -> None:
    """Every figure positive and finite (overhead >= 0, overlap in [0, 1]) and every figure sourced."""
    for name in ("h2d_bandwidth_gbps", "decode_tok_s", "copy_overhead_ms", "background_overlap"):
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"profile {p.name!r}: {name} must be a finite number, got {value!r}")
    for name in ("num_layers", "expert_bytes"):
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"profile {p.name!r}: {name} must be a positive integer, got {value!r}")
    for name in ("h2d_bandwidth_gbps", "decode_tok_s"):
        if getattr(p, name) <= 0:
            raise ValueError(f"profile {p.name!r}: {name} must be positive, got {getattr(p, name)!r}")
    if p.copy_overhead_ms < 0:
        raise ValueError(f"profile {p.name!r}: copy_overhead_ms must be >= 0, got {p.copy_overhead_ms!r}")
    if not 0.0 <= p.background_overlap <= 1.0:
        raise ValueError(
            f"profile {p.name!r}: background_overlap must be in [0, 1], got {p.background_overlap!r}"
        )
    missing = [f for f in FIGURES if not str(p.sources.get(f, "")).strip()]
    if missing:
        raise ValueError(f"profile {p.name!r}: no source for {', '.join(missing)}; every figure needs one")
    _validate_overhead(p)


def _validate_overhead(p: HardwareProfile) -> None:
    """method_overhead_ms: empty, or every path in `PATHS` with a finite value >= 0 and a source."""
    table = p.method_overhead_ms
    if not table:
        return
    if not isinstance(table, dict) or sorted(table) != sorted(PATHS):
        raise ValueError(
            f"profile {p.name!r}: method_overhead_ms must map every path in {', '.join(PATHS)} to ms per "
            f"layer per token, got {table!r}"
        )
    for path, value in table.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0:
            raise ValueError(
                f"profile {p.name!r}: method_overhead_ms[{path!r}] must be a finite number >= 0, "
                f"got {value!r}"
            )
    if not str(p.sources.get("method_overhead_ms", "")).strip():
        raise ValueError(f"profile {p.name!r}: no source for method_overhead_ms; every figure needs one")


def default_path() -> Path:
    """The hardware.yaml shipped with temoe."""
    return Path(str(resources.files("temoe.cost").joinpath("hardware.yaml")))


def _read(path: str | Path | None) -> dict[str, dict]:
    path = Path(path) if path is not None else default_path()
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict) or not data["profiles"]:
        raise ValueError(f"{path}: expected a mapping `profiles: {{name: {{...}}}}`")
    return data["profiles"]


def profile_names(path: str | Path | None = None) -> list[str]:
    """Names of the profiles in `path` (default: the shipped hardware.yaml), `local` included."""
    return sorted(_read(path))


def load_profile(name: str, *, dtype: str | None = None, path: str | Path | None = None) -> HardwareProfile:
    """The profile `name` from `path` (default: the shipped hardware.yaml).

    dtype: which `expert_bytes` entry to use (default: the profile's `dtype`, the format its decode time
    was measured in). `local` is measured, not read: use `temoe.serve.local_profile.measure_local_profile`.
    """
    profiles = _read(path)
    if name not in profiles:
        raise ValueError(f"unknown hardware profile {name!r}; valid: {', '.join(sorted(profiles))}")
    entry = profiles[name]
    if entry.get("measured"):
        raise ValueError(
            f"hardware profile {name!r} is measured on the running machine, not read from a file: call "
            "temoe.serve.local_profile.measure_local_profile(model, tokenizer)"
        )
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"profile {name!r}: unknown field(s) {unknown}; valid: {sorted(_FIELDS)}")
    missing = [f for f in FIGURES if f not in entry]
    if missing:
        raise ValueError(f"profile {name!r}: missing field(s) {missing}")
    sizes = entry["expert_bytes"]
    if not isinstance(sizes, dict) or not sizes:
        raise ValueError(f"profile {name!r}: expert_bytes must map a dtype to bytes, got {sizes!r}")
    dtype = dtype or entry.get("dtype") or next(iter(sizes))
    if dtype not in sizes:
        raise ValueError(
            f"profile {name!r} has no expert size for dtype {dtype!r}; valid: {', '.join(sizes)}"
        )
    figures = {f: entry[f] for f in FIGURES if f != "expert_bytes"}
    figures["method_overhead_ms"] = entry.get("method_overhead_ms") or {}
    if not isinstance(entry.get("sources") or {}, dict):
        raise ValueError(f"profile {name!r}: sources must map a figure name to its source")
    sources = {str(k): str(v) for k, v in (entry.get("sources") or {}).items()}
    if entry.get("dtype") and dtype != entry["dtype"] and "decode_tok_s" in sources:
        sources["decode_tok_s"] = (
            f"measured in {entry['dtype']}, used unchanged for {dtype}. " + sources["decode_tok_s"]
        )
    return HardwareProfile(
        name=name,
        expert_bytes=sizes[dtype],
        dtype=dtype,
        description=str(entry.get("description", "")),
        model=str(entry.get("model", "")),
        sources=sources,
        **figures,
    )
