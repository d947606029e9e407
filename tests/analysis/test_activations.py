"""Figure 2 rasters: the matrix is right and the PNGs are written with the paper's labels."""

import numpy as np
import pytest

from temoe.analysis.activations import activation_matrix, plot_activations

# 3 positions, 2 layers, N = 4
ACTIVE = [[[0, 1], [2, 3]], [[0, 2], [2, 3]], [[3, 1], [0, 1]]]


def test_activation_matrix():
    expected = np.array(
        [  # layer 0: rows experts, columns positions
            [1, 1, 0],
            [1, 0, 1],
            [0, 1, 0],
            [0, 0, 1],
        ],
        dtype=bool,
    )
    assert (activation_matrix(ACTIVE, 0, 4) == expected).all()
    assert activation_matrix(ACTIVE, 1, 4)[:, 0].tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="layer 2 is out of range; the record has MoE layers 0..1"):
        activation_matrix(ACTIVE, 2, 4)
    with pytest.raises(ValueError, match="expert id 3 .* num_experts=3"):
        activation_matrix(ACTIVE, 0, 3)


def test_plot_activations(tmp_path, monkeypatch):
    import matplotlib.axes

    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **kw: labels.append(t))
    record = {
        "id": 0,
        "model": "m",
        "num_experts": 4,
        "top_k": 2,
        "active_experts": ACTIVE,
        "layer_indices": [1, 3],
    }
    paths = plot_activations(record, [0, 1], tmp_path, stem="a")
    assert [p.name for p in paths] == ["a_layer0.png", "a_layer1.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert labels[0] == "m layer 0 (decoder layer 1)\n(experts=4, top-2)"
    option_record = {"model": "m", "k_hat": 3, "active_experts": [[[0, 1, 2]], [[0, 1, 3]]]}
    plot_activations(option_record, [0], tmp_path)
    assert labels[-1] == "m layer 0\n(experts=4, k̂=3)"
    with pytest.raises(ValueError, match="no 'active_experts'"):
        plot_activations({"id": 5}, [0], tmp_path)
