"""The time embedding equals the report's formula element by element."""
import math

import pytest
import torch

from ddpm_helpers.embeddings import TimeEmbedding, sinusoidal_embedding


def test_embedding_equals_report_formula_elementwise():
    """e_t[2i] = sin(t / 10000^(2i/d)), e_t[2i+1] = cos(t / 10000^(2i/d)) (interleaved)."""
    d = 16
    ts = [0, 1, 7, 499, 999]
    emb = sinusoidal_embedding(torch.tensor(ts), d)
    assert emb.shape == (len(ts), d)
    for row, t in enumerate(ts):
        for i in range(d // 2):
            freq = 10000 ** (2 * i / d)
            assert emb[row, 2 * i].item() == pytest.approx(math.sin(t / freq), abs=1e-4)
            assert emb[row, 2 * i + 1].item() == pytest.approx(math.cos(t / freq), abs=1e-4)


def test_embedding_at_zero_alternates_zero_one_and_rejects_odd_dim():
    emb = sinusoidal_embedding(torch.tensor([0]), 8)
    assert emb[0].tolist() == [0.0, 1.0] * 4
    with pytest.raises(ValueError):
        sinusoidal_embedding(torch.tensor([1]), 7)


def test_time_mlp_is_linear_silu_linear():
    te = TimeEmbedding(32, 64)
    layers = list(te.mlp)
    assert [type(l).__name__ for l in layers] == ["Linear", "SiLU", "Linear"]
    t = torch.tensor([3, 500])
    out = te(t)
    manual = layers[2](torch.nn.functional.silu(layers[0](sinusoidal_embedding(t, 32))))
    torch.testing.assert_close(out, manual)
    assert out.shape == (2, 64)
