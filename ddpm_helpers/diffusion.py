"""Taught in notebooks 01, 04, 05.

The diffusion process: forward noising, the training objective, the reverse step and samplers.

The math owns no network: the model is passed into each call (``p_sample(model, x, t, schedule)``),
so the forward process can be taught and tested before a U-Net exists. Timesteps are 0-based
indices; see :mod:`ddpm_helpers.schedule` for the convention (index 0 = the report's t = 1).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .schedule import SPACINGS, NoiseSchedule, extract, timestep_grid

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Forward process
# ---------------------------------------------------------------------------------------------
def forward_step(x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """One step of the forward Markov chain q(x_t | x_{t−1}) (the report's first equation; Ho et al. Eq. 2).

    x_t = √(1 − β_t) · x_{t−1} + √β_t · ε.   x_prev, noise: (B, C, H, W); t: (B,) int64.
    """
    beta = extract(schedule.betas, t, x_prev.shape)
    return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Jump straight to step t of the forward process (Ho et al. 2020, Eq. 4).

    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε.   x0, noise: (B, C, H, W); t: (B,) int64.
    """
    return (extract(schedule.sqrt_alpha_bars, t, x0.shape) * x0
            + extract(schedule.sqrt_one_minus_alpha_bars, t, x0.shape) * noise)


def q_posterior_mean(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Mean of q(x_{t−1} | x_t, x_0) (Ho et al. Eq. 7): μ̃ = c1 · x_0 + c2 · x_t.  All (B, C, H, W)."""
    return (extract(schedule.posterior_mean_coef1, t, xt.shape) * x0
            + extract(schedule.posterior_mean_coef2, t, xt.shape) * xt)


def sample_timesteps(batch: int, T: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform t ∈ {0, …, T−1} for training (every step, the last one included, is trained). (B,) int64."""
    return torch.randint(0, T, (batch,), device=device, generator=generator)


def min_snr_weight(t: torch.Tensor, schedule: NoiseSchedule, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weight for ε-prediction (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR").

    w_t = min(SNR_t, γ) / SNR_t,  SNR_t = ᾱ_t / (1 − ᾱ_t): 1 at the noisy steps (SNR_t ≤ γ), γ/SNR_t < 1 at the
    nearly clean ones, whose easy, conflicting gradients it damps. t: (B,) int64 → (B,) float32.
    """
    snr = (schedule.sqrt_alpha_bars[t] / schedule.sqrt_one_minus_alpha_bars[t]) ** 2   # both kept exact from float64
    return snr.clamp(max=gamma) / snr


def perturbed_noise(noise: torch.Tensor, xi: torch.Tensor, delta: float) -> torch.Tensor:
    """The noise that builds x_t under input perturbation (Ning et al. 2023, "DDPM-IP"): ε' = ε + δ · ξ, ξ ~ N(0, I).

    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · (ε + δ · ξ), while the target stays ε: training sees inputs a little off the
    forward process, as sampling does after its own errors (exposure bias). noise, xi: (B, C, H, W).
    """
    return noise + delta * xi


def training_loss(model: Model, x0: torch.Tensor, schedule: NoiseSchedule, t: Optional[torch.Tensor] = None,
                  noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None, *,
                  min_snr_gamma: Optional[float] = None, input_perturbation: float = 0.0,
                  xi: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The simplified objective L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² (Ho et al. Eq. 14).

    Averaged over batch and pixels (a scalar). x0: (B, C, H, W) in [−1, 1]. Two optional levers (off by default,
    and then not a single extra random number is drawn):
    min_snr_gamma γ: each sample's mean squared error weighted by min_snr_weight, L = mean_b w_{t_b} · ‖·‖²_b;
    input_perturbation δ > 0: x_t built from perturbed_noise(ε, ξ, δ), target ε; ξ drawn after ε unless given.
    """
    if t is None:
        t = sample_timesteps(x0.shape[0], schedule.T, x0.device, generator)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_noise = noise
    if input_perturbation:
        if xi is None:
            xi = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_noise = perturbed_noise(noise, xi, input_perturbation)
    eps_pred = predict_eps(model, q_sample(x0, t, x_noise, schedule), t)
    if min_snr_gamma is None:
        return F.mse_loss(eps_pred, noise.float())
    per_sample = (eps_pred - noise.float()).pow(2).flatten(1).mean(1)            # (B,)
    return (min_snr_weight(t, schedule, min_snr_gamma) * per_sample).mean()


# ---------------------------------------------------------------------------------------------
# Reverse process
# ---------------------------------------------------------------------------------------------
def predict_x0(xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Invert Eq. 4 for the clean image: x̂_0 = (x_t − √(1 − ᾱ_t) · ε_θ) / √ᾱ_t.  All (B, C, H, W)."""
    return ((xt - extract(schedule.sqrt_one_minus_alpha_bars, t, xt.shape) * eps)
            / extract(schedule.sqrt_alpha_bars, t, xt.shape))


def p_mean(xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Mean of the reverse step (Ho et al. Eq. 11, the report's update without the noise term).

    μ_θ = 1/√α_t · (x_t − (1 − α_t)/√(1 − ᾱ_t) · ε_θ(x_t, t)).  All (B, C, H, W).
    """
    alpha = extract(schedule.alphas, t, xt.shape)
    coef = (1.0 - alpha) / extract(schedule.sqrt_one_minus_alpha_bars, t, xt.shape)
    return (xt - coef * eps) / alpha.sqrt()


def p_sample(model: Model, xt: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
             noise: Optional[torch.Tensor] = None, variance: str = "beta",
             generator: Optional[torch.Generator] = None, return_x0: bool = False):
    """One reverse step, the report's update (Ho et al. Algorithm 2, line 4).

    x_{t−1} = 1/√α_t · (x_t − (1 − α_t)/√(1 − ᾱ_t) · ε_θ(x_t, t)) + σ_t · z,
    σ_t = √β_t (variance="beta", the report's) or √β̃_t (variance="posterior"); z ~ N(0, I),
    except z = 0 where t = 0 (the report's last step, t = 1).
    xt: (B, C, H, W); t: (B,) int64; noise: optional z shaped like xt.
    Returns x_{t−1}, or (x_{t−1}, x̂_0) with return_x0.
    """
    eps = predict_eps(model, xt, t)
    mean = p_mean(xt, t, eps, schedule)
    if noise is None:
        noise = torch.randn(xt.shape, device=xt.device, dtype=xt.dtype, generator=generator)
    sigma = extract(schedule.sigmas(variance), t, xt.shape)
    nonzero = (t != 0).float().reshape(-1, *([1] * (xt.ndim - 1)))   # z = 0 at the last step
    x_prev = mean + nonzero * sigma * noise
    if return_x0:
        return x_prev, predict_x0(xt, t, eps, schedule)
    return x_prev


def predict_eps(model: Model, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε_θ(x_t, t) in float32, whatever precision the model was cast to (float32 / bf16 / fp16).

    xt: (B, C, H, W) float32; t: (B,) int64 → (B, C, H, W) float32.
    """
    dtype = model_dtype(model)
    return model(xt.to(dtype) if dtype is not None else xt, t).float()


def model_dtype(model: Model) -> Optional[torch.dtype]:
    """The floating dtype of the model's parameters (None for a plain function)."""
    for p in _params(model):
        if p.is_floating_point():
            return p.dtype
    return None


@contextlib.contextmanager
def eval_mode(model: Model) -> Iterator[Model]:
    """Run the body with the model in eval mode, then put every submodule back in the mode it was in.

    The samplers use it, so that a BatchNorm U-Net left in training mode neither normalises with the
    statistics of the sampling batch (which would make sample i depend on the rest of the batch) nor
    updates its running statistics while sampling.
    """
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    was_training = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield model
    finally:
        for m, mode in zip(modules, was_training):
            m.training = mode


@dataclass
class Trajectory:
    """Intermediate states of a sampling run, for figures.

    steps: the timestep index of each kept state (x_t *before* the step at t, so steps[0] = T−1
    holds pure noise); xt and x0_pred: (K, B, C, H, W) on the CPU.
    """
    steps: List[int] = field(default_factory=list)
    xt: Optional[torch.Tensor] = None
    x0_pred: Optional[torch.Tensor] = None


class _Recorder:
    def __init__(self, keep: Optional[Iterable[int]]):
        self.keep = set(int(k) for k in keep) if keep is not None else set()
        self.steps, self.xt, self.x0 = [], [], []

    def __call__(self, step: int, xt: torch.Tensor, x0: torch.Tensor):
        if step in self.keep:
            self.steps.append(step)
            self.xt.append(xt.detach().float().cpu())
            self.x0.append(x0.detach().float().cpu())

    def result(self) -> Trajectory:
        if not self.steps:
            return Trajectory()
        return Trajectory(self.steps, torch.stack(self.xt), torch.stack(self.x0))


def _randn(shape, device, generator):
    """Standard normal noise on device, drawn from generator's device when one is given (so a CPU
    generator gives the same numbers on every machine) and directly on device otherwise."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _initial_noise(shape, device, generator, noise):
    return noise.to(device) if noise is not None else _randn(shape, device, generator)


@torch.no_grad()
def ddpm_sample(model: Model, shape: Sequence[int], schedule: NoiseSchedule,
                generator: Optional[torch.Generator] = None, device=None, variance: str = "beta",
                noise: Optional[torch.Tensor] = None, keep_steps: Optional[Iterable[int]] = None,
                progress: bool = True, clip: bool = True):
    """Ancestral sampling (Ho et al. Algorithm 2): x_T ~ N(0, I), then the report's update for t = T … 1.

    shape: (B, C, H, W). generator: a torch.Generator (on the CPU or on ``device``) that makes the
    run reproducible. noise: optional x_T. keep_steps: indices t whose x_t and x̂_0 to keep.
    Returns x_0 (B, C, H, W) clamped to [−1, 1] (with clip), or (x_0, Trajectory) when keep_steps is given.
    """
    device = device or next(_params(model), torch.empty(0)).device
    x = _initial_noise(shape, device, generator, noise)
    rec = _Recorder(keep_steps)
    with eval_mode(model):
        for i in tqdm(range(schedule.T - 1, -1, -1), desc="DDPM", disable=not progress, leave=False):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            z = _randn(x.shape, device, generator) if i > 0 else torch.zeros_like(x)
            x_new, x0 = p_sample(model, x, t, schedule, noise=z, variance=variance, return_x0=True)
            rec(i, x, x0)
            x = x_new
    if clip:
        x = x.clamp(-1, 1)
    return (x, rec.result()) if keep_steps is not None else x


DDIM_SPACINGS = SPACINGS


def ddim_timesteps(T, steps: int, spacing: str = "uniform") -> list[int]:
    """The sub-sequence τ of timestep indices that DDIM visits, descending (Song et al. 2020, App. D.2).

    Kept for existing callers: the grids ("uniform", the default, so that FIDs compare with published DDIM
    CelebA numbers; "linspace"; "quadratic"; "logsnr") are :func:`ddpm_helpers.schedule.timestep_grid`'s,
    documented there. T: the number of training steps, or the NoiseSchedule ("logsnr" needs it). 1 ≤ S ≤ T.
    """
    return timestep_grid(T, steps, spacing)


def ddim_step(xt: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, eps: torch.Tensor,
              schedule: NoiseSchedule, eta: float = 0.0, noise: Optional[torch.Tensor] = None,
              clip_x0: bool = False):
    """One DDIM update from τ_i = t to τ_{i−1} = t_prev (Song et al. 2020, Eq. 12).

    x_prev = √ᾱ_prev · x̂_0 + √(1 − ᾱ_prev − σ²) · ε_θ + σ · z,
    σ = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)  (Eq. 16).  t_prev = −1 means ᾱ_prev = 1.
    η = 0 is deterministic; η = 1 with every step is DDPM with σ² = β̃_t.
    Returns (x_prev, x̂_0).
    """
    ab = extract(schedule.alpha_bars, t, xt.shape)
    ones = torch.ones_like(schedule.alpha_bars[:1])
    ab_all = torch.cat([ones, schedule.alpha_bars])                    # index shift: −1 → 0
    ab_prev = extract(ab_all, t_prev + 1, xt.shape)
    x0 = predict_x0(xt, t, eps, schedule)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (xt - ab.sqrt() * x0) / (1 - ab).sqrt()                # keep ε consistent with clipped x̂_0
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn_like(xt)
        x_prev = x_prev + sigma * noise
    return x_prev, x0


@torch.no_grad()
def ddim_sample(model: Model, shape: Sequence[int], schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                generator: Optional[torch.Generator] = None, device=None, noise: Optional[torch.Tensor] = None,
                clip_x0: bool = False, keep_steps: Optional[Iterable[int]] = None, progress: bool = True,
                clip: bool = True, spacing: str = "uniform"):
    """DDIM sampling (Song et al. 2020) over ``steps`` timesteps chosen by :func:`ddim_timesteps`.

    Same arguments and return value as :func:`ddpm_sample`; keep_steps refers to timestep indices τ_i;
    spacing: a grid of :func:`ddpm_helpers.schedule.timestep_grid` ("uniform", the DDIM paper's, is the default).
    """
    device = device or next(_params(model), torch.empty(0)).device
    x = _initial_noise(shape, device, generator, noise)
    rec = _Recorder(keep_steps)
    taus = timestep_grid(schedule, steps, spacing)
    with eval_mode(model):
        for i, tau in enumerate(tqdm(taus, desc=f"DDIM-{len(taus)}", disable=not progress, leave=False)):
            t = torch.full((shape[0],), tau, device=device, dtype=torch.long)
            t_prev = torch.full_like(t, taus[i + 1] if i + 1 < len(taus) else -1)
            eps = predict_eps(model, x, t)
            z = _randn(x.shape, device, generator) if eta > 0 else None
            x_new, x0 = ddim_step(x, t, t_prev, eps, schedule, eta=eta, noise=z, clip_x0=clip_x0)
            rec(tau, x, x0)
            x = x_new
    if clip:
        x = x.clamp(-1, 1)
    return (x, rec.result()) if keep_steps is not None else x


def _params(model):
    return model.parameters() if hasattr(model, "parameters") else iter(())
