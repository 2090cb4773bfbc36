"""Taught in notebook 02.

Sinusoidal time embeddings, exactly as the report writes them, and the MLP that follows."""
from __future__ import annotations

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The report's sinusoidal embedding, interleaved (not the [sin, cos] concatenation most libraries use).

    e_t[2i] = sin(t / 10000^(2i/d)),  e_t[2i+1] = cos(t / 10000^(2i/d)),  i = 0 … d/2 − 1.
    t: (B,) timesteps (the 0-based index that the network sees) → (B, dim) float32.
    """
    if dim % 2:
        raise ValueError(f"embedding dimension must be even, got {dim}")
    t = t.float().reshape(-1, 1)                                         # (B, 1)
    two_i = torch.arange(0, dim, 2, device=t.device, dtype=torch.float32)  # 2i, (d/2,)
    angles = t / max_period ** (two_i / dim)                             # (B, d/2)
    emb = torch.stack([angles.sin(), angles.cos()], dim=-1)              # (B, d/2, 2)
    return emb.reshape(t.shape[0], dim)                                  # sin, cos, sin, cos, …


class TimeEmbedding(nn.Module):
    """Sinusoidal vector → Linear → SiLU → Linear: the report's learned time representation.

    forward(t: (B,)) → (B, out_dim).
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.dim)                        # (B, dim) float32
        return self.mlp(emb.to(self.mlp[0].weight.dtype))              # a bf16/fp16-cast U-Net gets its dtype
