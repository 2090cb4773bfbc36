"""Taught in notebooks 03, 04.

The optimiser's pieces: the EMA of the weights, Adam, and the learning-rate warm-up.

Core layer: imports only the foundation (config). The training loop (train.py) builds them from a TrainConfig.
"""
from __future__ import annotations

import itertools

import torch
from torch.optim.swa_utils import AveragedModel

from .config import TrainConfig


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    """EMA decay after n updates: min(decay, (1 + n)/(10 + n)) with warm-up, so that early samples come
    from recent weights rather than the random initialisation; the plain decay without."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


class EMA(AveragedModel):
    """Exponential moving average of the weights: θ_ema ← d·θ_ema + (1 − d)·θ (torch.optim.swa_utils).

    Keeps AveragedModel's structure (``.module``, ``n_averaged``) and averages float parameters and
    buffers (BatchNorm statistics) with multi-tensor ops; integer buffers are copied. The update
    count lives in Python, so an update never waits for the GPU.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        super().__init__(model, use_buffers=True)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        d = ema_decay_at(self.updates, self.decay, self.warmup)
        ema_f, new_f = [], []
        for e, m in zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                        itertools.chain(model.parameters(), model.buffers())):
            if e.dtype.is_floating_point:
                ema_f.append(e.detach())
                new_f.append(m.detach())
            else:
                e.copy_(m)
        if ema_f:
            torch._foreach_lerp_(ema_f, new_f, 1.0 - d)
        self.updates += 1
        self.n_averaged.fill_(self.updates)


def make_adam(params, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with the fused multi-tensor kernel where this torch has one for the device (CPU and CUDA
    since torch 2.4): one kernel for all parameters, 2× faster than the per-tensor loop on a CPU."""
    params = list(params)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


def lr_lambda(warmup_steps: int):
    """Linear learning-rate warm-up from 0 to the base rate over warmup_steps, then constant."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))
