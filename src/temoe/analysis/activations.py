"""The paper's Figure 2: expert × generated-position activation rasters of one layer, from saved records.

A record's `active_experts` is a list over rated positions of a list over MoE layers of expert ids (the routed
experts for the base model, the option's members for a controller).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def activation_matrix(active_experts: list[list[list[int]]], layer: int, num_experts: int) -> np.ndarray:
    """bool (N, T): entry [e, t] is True if expert e was active at position t in MoE layer `layer`."""
    num_layers = len(active_experts[0]) if active_experts else 0
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} is out of range; the record has MoE layers 0..{num_layers - 1}")
    matrix = np.zeros((num_experts, len(active_experts)), dtype=bool)
    for t, per_layer in enumerate(active_experts):
        ids = per_layer[layer]
        if ids and max(ids) >= num_experts:
            raise ValueError(f"expert id {max(ids)} at position {t} is >= num_experts={num_experts}")
        matrix[ids, t] = True
    return matrix


def plot_activations(
    record: dict, layers: list[int], out_dir: str | Path, stem: str = "activations"
) -> list[Path]:
    """One PNG per layer: experts (rows, 0 at top) × generated positions (columns), black = active.

    The title names the model, the layer and (experts, top-k) — or (experts, k̂) when the record holds
    options (a `k_hat` field and no `top_k`). Returns the written paths `<stem>_layer<l>.png`.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    active = record.get("active_experts")
    if not active:
        raise ValueError(f"record {record.get('id')!r} has no 'active_experts' positions to plot")
    num_experts = int(record.get("num_experts") or 1 + max(e for pos in active for ids in pos for e in ids))
    size = f"top-{record['top_k']}" if "top_k" in record else f"k̂={record.get('k_hat', len(active[0][0]))}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layer_indices = record.get("layer_indices")
    paths = []
    for layer in layers:
        matrix = activation_matrix(active, layer, num_experts)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.imshow(matrix, cmap="gray_r", aspect="auto", interpolation="nearest", vmin=0, vmax=1)
        ax.set_xlabel("Tokens (generated)")
        ax.set_ylabel("Experts (layer-local)")
        where = (
            f"layer {layer}"
            if layer_indices is None
            else f"layer {layer} (decoder layer {layer_indices[layer]})"
        )
        ax.set_title(f"{record.get('model', 'model')} {where}\n(experts={num_experts}, {size})")
        fig.tight_layout()
        path = out_dir / f"{stem}_layer{layer}.png"
        fig.savefig(path, dpi=150)
        plt.close(fig)
        paths.append(path)
    return paths
