"""Taught in notebooks 01, 04.

Noise schedules and every term derived from them.

Timestep convention (used everywhere in this package)
-----------------------------------------------------
Timesteps are 0-based indices ``t ∈ {0, …, T−1}``. Index ``t`` is the report's step ``t + 1``:
index 0 is the report's t = 1, the last reverse step (where no noise is added, z = 0), and index
T − 1 is the report's t = T, pure noise. So ``betas[t]`` is the report's β_{t+1} and
``alpha_bars[t] = ∏_{s ≤ t} (1 − β_s)``; ``alpha_bars_prev[0] = 1`` (x_0 is the clean image).

All terms are computed in float64 and stored as float32.
"""
from __future__ import annotations

import math

import torch


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear schedule of Ho et al. 2020 (Sec. 4): β evenly spaced from beta_start to beta_end. (T,) float64."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal 2021 (Eq. 17).

    ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2);  β_t = 1 − ᾱ(t)/ᾱ(t−1), clipped at max_beta.
    Returns (T,) float64.
    """
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((steps / T) + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bars = f / f[0]
    betas = 1 - alpha_bars[1:] / alpha_bars[:-1]
    return betas.clamp(max=max_beta)


def extract(values: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    """Take ``values[t]`` for each batch element and shape it to broadcast against x.

    values: (T,); t: (B,) int64 → (B, 1, 1, …) with len(x_shape) dims.
    """
    out = values.to(t.device).gather(0, t.long())
    return out.reshape(t.shape[0], *([1] * (len(x_shape) - 1)))


class NoiseSchedule:
    """β_t and the quantities derived from it, as float32 tensors of length T.

    Attributes: betas, alphas (α_t = 1 − β_t), alpha_bars (ᾱ_t = ∏ α_s), alpha_bars_prev (ᾱ_{t−1},
    with ᾱ_{−1} = 1), sqrt_alpha_bars, sqrt_one_minus_alpha_bars, posterior_variance
    (β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), Ho et al. Eq. 7), posterior_mean_coef1/2 (Eq. 7),
    and sigmas_beta (σ_t = √β_t, the report's choice).
    """

    def __init__(self, betas: torch.Tensor, name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.name = name
        self.T = len(betas)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        post_var = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
        terms = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "sqrt_alpha_bars": alpha_bars.sqrt(),
            "sqrt_one_minus_alpha_bars": (1.0 - alpha_bars).sqrt(),
            "posterior_variance": post_var,
            "posterior_mean_coef1": betas * alpha_bars_prev.sqrt() / (1.0 - alpha_bars),
            "posterior_mean_coef2": (1.0 - alpha_bars_prev) * alphas.sqrt() / (1.0 - alpha_bars),
            "sigmas_beta": betas.sqrt(),
        }
        for key, value in terms.items():
            setattr(self, key, value.float())

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """The report's (and Ho et al.'s) schedule: β linear from 1e-4 to 0.02 over T = 1000 steps."""
        return cls(linear_betas(T, beta_start, beta_end), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> "NoiseSchedule":
        """Nichol & Dhariwal's cosine schedule: a slower destruction of information at the start."""
        return cls(cosine_betas(T, s), name="cosine")

    @classmethod
    def from_config(cls, cfg) -> "NoiseSchedule":
        """Build from a :class:`~ddpm_helpers.config.DiffusionConfig`."""
        if cfg.schedule == "linear":
            return cls.linear(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        if cfg.schedule == "cosine":
            return cls.cosine(cfg.timesteps)
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use 'linear' or 'cosine'")

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at each step. (T,)"""
        return self.alpha_bars / (1.0 - self.alpha_bars)

    def sigmas(self, variance: str = "beta") -> torch.Tensor:
        """Reverse-step noise scale σ_t: √β_t (the report's, "fixed large") or √β̃_t ("fixed small"). (T,)"""
        if variance == "beta":
            return self.sigmas_beta
        if variance == "posterior":
            return self.posterior_variance.sqrt()
        raise ValueError(f"unknown variance {variance!r}; use 'beta' or 'posterior'")

    def to(self, device) -> "NoiseSchedule":
        """Move every tensor to device (in place) and return self."""
        for key, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(device))
        return self

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name}, T={self.T}, beta[0]={self.betas[0]:.2e}, beta[-1]={self.betas[-1]:.2e})"
