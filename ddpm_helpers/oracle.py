"""Taught in notebook 05.

The Gaussian oracle: the exact noise predictor when the data are N(μ, s²) per pixel.

Taught in notebook 05 (and used by the exercises of 05 and 06): a sampler run with this "model" must recover
N(μ, s²), whatever the quality of any trained network, so it checks a sampler's equations on their own.

If x_0 ~ N(μ, s²) independently per pixel, then q(x_t) = N(√ᾱ_t μ, ᾱ_t s² + 1 − ᾱ_t) and the minimum-MSE noise
prediction is

    E[ε | x_t] = √(1 − ᾱ_t) · (x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .schedule import NoiseSchedule


def gaussian_marginal(mu: float, s: float, alpha_bar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of x_t when x_0 ~ N(μ, s²): (√ᾱ_t μ, √(ᾱ_t s² + 1 − ᾱ_t))."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return alpha_bar.sqrt() * mu, (alpha_bar * s ** 2 + 1 - alpha_bar).sqrt()


def gaussian_eps(xt: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, mu: float, s: float) -> torch.Tensor:
    """E[ε | x_t] = √(1 − ᾱ_t) (x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t) for data N(μ, s²) (0-based index t)."""
    ab = schedule.alpha_bars.to(xt.device)[t].reshape(-1, *[1] * (xt.ndim - 1)).to(xt.dtype)
    return (1 - ab).sqrt() * (xt - ab.sqrt() * mu) / (ab * s ** 2 + 1 - ab)


class GaussianOracle(nn.Module):
    """A drop-in ε-model (``oracle(x_t, t)``) that returns the exact E[ε | x_t] for data N(mu, s²).

    ``calls`` records the timestep tensor of every call, so a test or an exercise can count model calls and check
    the order in which a sampler visits the timesteps.
    """

    def __init__(self, schedule: NoiseSchedule, mu: float = 0.5, s: float = 0.2):
        super().__init__()
        if s <= 0:
            raise ValueError(f"the oracle's data standard deviation must be positive, got {s}")
        self.schedule, self.mu, self.s = schedule, float(mu), float(s)
        self.calls: List[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.detach().clone())
        return gaussian_eps(x, t, self.schedule, self.mu, self.s)
