"""Taught in notebook 01.

Monte Carlo checks of the forward process: run many chains and compare their moments with the closed form.

Notebook 01 shows these numbers and ``tests/test_diffusion.py`` asserts them; both call :func:`chain_moments`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from .diffusion import forward_step
from .schedule import NoiseSchedule


@dataclass
class ChainMoments:
    """Measured moments of x_t over many chains that all start from the same x_0, at the recorded steps.

    slope: the per-pixel mean E[x_t] regressed on x_0 (closed form: √ᾱ_t); variance: the per-pixel variance averaged
    over pixels (closed form: 1 − ᾱ_t). worst_z: the largest deviation from the closed form over all recorded steps, in
    standard errors of each measurement (sampling noise of n chains), per quantity.
    """

    steps: List[int] = field(default_factory=list)
    slope: List[float] = field(default_factory=list)
    variance: List[float] = field(default_factory=list)
    worst_z: Dict[str, float] = field(default_factory=lambda: {"pixel mean": 0.0, "slope": 0.0, "variance": 0.0})


def chain_moments(x0: torch.Tensor, schedule: NoiseSchedule, n_chains: int, every: int = 25,
                  generator: Optional[torch.Generator] = None) -> ChainMoments:
    """Iterate x_t = √(1 − β_t)·x_{t−1} + √β_t·ε for n_chains copies of x0 (1, C, H, W) over all T steps and measure,
    every ``every`` steps (and at index 0), how far the chains' moments are from
    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I).
    """
    out, P = ChainMoments(), x0.numel()
    x = x0.expand(n_chains, -1, -1, -1)                               # (N, C, H, W)
    for t in range(schedule.T):
        x = forward_step(x, torch.full((n_chains,), t), torch.randn(x.shape, generator=generator), schedule)
        if t % every == every - 1 or t == 0:
            ab = schedule.alpha_bars[t]
            mean, var = x.mean(0), x.var(0)                           # per pixel, over the chains: (C, H, W)
            out.steps.append(t)
            out.slope.append(((mean * x0[0]).sum() / x0.pow(2).sum()).item())
            out.variance.append(var.mean().item())
            se = ((1 - ab) / n_chains).sqrt()                         # standard error of one pixel's mean
            z = {"pixel mean": ((mean - ab.sqrt() * x0[0]).abs() / se).max(),
                 "slope": abs(out.slope[-1] - ab.sqrt()) / (se / x0.pow(2).sum().sqrt()),
                 "variance": abs(out.variance[-1] - (1 - ab)) / ((1 - ab) * (2 / ((n_chains - 1) * P)) ** 0.5)}
            out.worst_z = {k: max(out.worst_z[k], float(v)) for k, v in z.items()}
    return out
