"""Taught in notebook 05.

DPM-Solver++ multistep (Lu et al. 2022, arXiv:2211.01095): DDIM-quality samples in 10–20 model calls.

Deterministic DDIM (η = 0) follows the probability-flow ODE of the trained ε-model. Written in the half
log-SNR λ_t = log(α_t/σ_t) (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)) and for the data prediction
x̂_0(x, t) = (x − σ_t ε_θ(x, t)) / α_t, its exact solution from s to t (λ_t > λ_s) is

    x_t = (σ_t/σ_s) · x_s + σ_t · ∫_{λ_s}^{λ_t} e^{λ} x̂_0(x_λ, λ) dλ            (DPM-Solver++ Eq. 6)

The linear part is integrated exactly; only x̂_0 is approximated. Holding it constant over the step gives
DDIM (order 1); a multistep method reuses the x̂_0 of the previous one or two steps for a linear or
quadratic fit in λ (orders 2 and 3), at no extra model call: S steps call the model exactly S times.

Conventions as :mod:`ddpm_helpers.diffusion`: 0-based timestep indices on a grid from
:func:`ddpm_helpers.schedule.timestep_grid`, descending and ending at index 0 (the report's t = 1); the last
update goes from index 0 to σ = 0 and lands on x̂_0. Warm-up and the end use lower orders as diffusers does
by default (``lower_order_final=True`` with ``final_sigmas_type="zero"``): step i uses order ≤ i + 1, the last
step is first order (into σ = 0), and with fewer than 15 steps the penultimate step is at most second order.
The tests check every step against diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")``.
:func:`unipc_sample` (UniPC: a predictor as above plus a corrector that reuses the next model call) is checked
against diffusers' ``UniPCMultistepScheduler`` the same way.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

# the private helpers are the ones ddim_sample uses: same noise, same trajectory records, same device choice
from .diffusion import Model, _initial_noise, _params, _Recorder, eval_mode, predict_eps, predict_x0
from .schedule import NoiseSchedule, check_timesteps, timestep_grid

ORDERS = (1, 2, 3)
# the grid with the smallest std error on the Gaussian oracle over 5-50 calls for 2M and 3M (2M: 3.7e-3 at 10
# calls vs 1.3e-2 uniform, 2.8e-3 at 20 vs 5.1e-2 uniform; measured as in tests/test_dpm_solver.py)
DEFAULT_SPACING = "logsnr"


class LogSNRPoint(NamedTuple):
    """α = √ᾱ, σ = √(1 − ᾱ) and λ = log(α/σ) at one grid point (float64 Python floats); σ = 0 ↔ λ = +∞."""
    alpha: float
    sigma: float
    lam: float


def log_snr_point(alpha_bar: float) -> LogSNRPoint:
    """(α, σ, λ) = (√ᾱ, √(1 − ᾱ), log √ᾱ − log √(1 − ᾱ)); ᾱ = 1 is the clean end x_0 (σ = 0, λ = +∞)."""
    alpha_bar = float(alpha_bar)
    if alpha_bar >= 1.0:
        return LogSNRPoint(1.0, 0.0, math.inf)
    alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    return LogSNRPoint(alpha, sigma, math.log(alpha) - math.log(sigma))


def dpm_solver_first_order_update(x_s: torch.Tensor, x0_s: torch.Tensor, s: LogSNRPoint,
                                  t: LogSNRPoint) -> torch.Tensor:
    """DPM-Solver++(1), one step from s to t (Lu et al. 2022, Eq. 8 with x̂_0 held constant; it is DDIM, η = 0).

    x_t = (σ_t/σ_s) · x_s − α_t (e^{−h} − 1) · x̂_0(s),   h = λ_t − λ_s.
    Into σ_t = 0 (h = ∞) it returns x̂_0(s).  x_s, x0_s: (B, C, H, W).
    """
    h = t.lam - s.lam
    return (t.sigma / s.sigma) * x_s - (t.alpha * math.expm1(-h)) * x0_s


def dpm_solver_second_order_update(x_s: torch.Tensor, x0_s: torch.Tensor, x0_r: torch.Tensor, r: LogSNRPoint,
                                   s: LogSNRPoint, t: LogSNRPoint) -> torch.Tensor:
    """DPM-Solver++(2M), one step from s to t reusing x̂_0 at the previous point r (Lu et al. 2022, Algorithm 2).

    h = λ_t − λ_s,  r_0 = (λ_s − λ_r)/h,  D = (1 + 1/(2 r_0)) · x̂_0(s) − 1/(2 r_0) · x̂_0(r),
    x_t = (σ_t/σ_s) · x_s − α_t (e^{−h} − 1) · D.
    (diffusers' "midpoint" form: D = D0 + ½ D1 with D0 = x̂_0(s), D1 = (x̂_0(s) − x̂_0(r))/r_0.)
    """
    h, r0 = t.lam - s.lam, (s.lam - r.lam) / (t.lam - s.lam)
    d1 = (x0_s - x0_r) / r0
    return (t.sigma / s.sigma) * x_s - (t.alpha * math.expm1(-h)) * (x0_s + 0.5 * d1)


def dpm_solver_third_order_update(x_s: torch.Tensor, x0_s: torch.Tensor, x0_r: torch.Tensor, x0_q: torch.Tensor,
                                  q: LogSNRPoint, r: LogSNRPoint, s: LogSNRPoint, t: LogSNRPoint) -> torch.Tensor:
    """DPM-Solver++(3M), one step from s to t reusing x̂_0 at the two previous points r, q (Lu et al. 2022, App. B;
    the data-prediction form of DPM-Solver-3's multistep update, as in their code and diffusers).

    h = λ_t − λ_s,  r_0 = (λ_s − λ_r)/h,  r_1 = (λ_r − λ_q)/h,
    D1_0 = (x̂_0(s) − x̂_0(r))/r_0,  D1_1 = (x̂_0(r) − x̂_0(q))/r_1,
    D1 = D1_0 + r_0/(r_0 + r_1) · (D1_0 − D1_1),  D2 = (D1_0 − D1_1)/(r_0 + r_1),
    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂_0(s) + α_t ((e^{−h} − 1)/h + 1) D1 − α_t ((e^{−h} − 1 + h)/h² − ½) D2.
    """
    h = t.lam - s.lam
    r0, r1 = (s.lam - r.lam) / h, (r.lam - q.lam) / h
    d1_0, d1_1 = (x0_s - x0_r) / r0, (x0_r - x0_q) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    em1 = math.expm1(-h)
    return ((t.sigma / s.sigma) * x_s - (t.alpha * em1) * x0_s + (t.alpha * (em1 / h + 1.0)) * d1
            - (t.alpha * ((em1 + h) / h ** 2 - 0.5)) * d2)


def step_orders(n: int, order: int) -> list[int]:
    """The order of each of n steps (diffusers' lower_order_final=True, final_sigmas_type="zero"):
    min(order, i + 1) for step i (warm-up), 1 for the last step (into σ = 0), at most 2 for the one before it
    when n < 15."""
    orders = [min(order, i + 1) for i in range(n)]
    if n >= 2 and n < 15:
        orders[-2] = min(orders[-2], 2)
    orders[-1] = 1
    return orders


def solver_grid(schedule: NoiseSchedule, steps: int = 20, spacing: str = DEFAULT_SPACING,
                timesteps: Sequence[int] | None = None) -> list[int]:
    """The model-call indices of a run: ``timesteps`` checked (descending, distinct, ending at 0), or
    :func:`ddpm_helpers.schedule.timestep_grid` (schedule, steps, spacing). ValueError when either is bad."""
    if timesteps is not None:
        return check_timesteps(timesteps, schedule.T)
    return timestep_grid(schedule, steps, spacing)


def _solver_setup(model: Model, schedule: NoiseSchedule, order: int, steps: int, spacing: str,
                  timesteps: Sequence[int] | None, device):
    """The checks and the grid every multistep sampler starts with: (grid τ, device, λ-points of the grid and of
    σ = 0 after it)."""
    if order not in ORDERS:
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    taus = solver_grid(schedule, steps, spacing, timesteps)
    device = device or next(_params(model), torch.empty(0)).device
    alpha_bars = schedule.alpha_bars.double().cpu()
    return taus, device, [log_snr_point(alpha_bars[tau]) for tau in taus] + [log_snr_point(1.0)]


@torch.no_grad()
def dpm_solver_sample(model: Model, shape: Sequence[int], schedule: NoiseSchedule, steps: int = 20, order: int = 2,
                      spacing: str = DEFAULT_SPACING, timesteps: Sequence[int] | None = None,
                      noise: torch.Tensor | None = None, generator: torch.Generator | None = None, clip: bool = True,
                      keep_steps: Iterable[int] | None = None, progress: bool = True, device=None):
    """DPM-Solver++ multistep sampling (Lu et al. 2022) of an ε-model, orders 1 (= DDIM, η = 0), 2 (2M) and 3 (3M).

    x_T ~ N(0, I) (or ``noise``), then one update per grid index τ_i with the model called once at each: at τ_i,
    x̂_0 = (x − σ ε_θ(x, τ_i))/α, and the order of :func:`step_orders` picks the update function (first, second
    or third order) into τ_{i+1} (or into σ = 0 after index 0). The grid: ``timesteps`` (descending, distinct,
    ending at 0) or ``steps`` indices of ``spacing`` (see :func:`ddpm_helpers.schedule.timestep_grid`).
    Same other arguments and return value as :func:`ddpm_helpers.diffusion.ddim_sample`: x_0 (B, C, H, W),
    clamped to [−1, 1] with clip, or (x_0, Trajectory) with keep_steps (x_t and x̂_0 at the kept indices).
    """
    taus, device, points = _solver_setup(model, schedule, order, steps, spacing, timesteps, device)
    orders = step_orders(len(taus), order)
    x = _initial_noise(shape, device, generator, noise)
    rec = _Recorder(keep_steps)
    x0s: list[torch.Tensor] = []                      # x̂_0 of the last three points, newest last
    with eval_mode(model):
        desc = f"DPM-Solver++({order}M)-{len(taus)}"
        for i, tau in enumerate(tqdm(taus, desc=desc, disable=not progress, leave=False)):
            t = torch.full((shape[0],), tau, device=device, dtype=torch.long)
            x0 = predict_x0(x, t, predict_eps(model, x, t), schedule)
            rec(tau, x, x0)
            x0s = (x0s + [x0])[-3:]
            s, nxt = points[i], points[i + 1]
            if orders[i] == 1:
                x = dpm_solver_first_order_update(x, x0, s, nxt)
            elif orders[i] == 2:
                x = dpm_solver_second_order_update(x, x0, x0s[-2], points[i - 1], s, nxt)
            else:
                x = dpm_solver_third_order_update(x, x0, x0s[-2], x0s[-3], points[i - 2], points[i - 1], s, nxt)
    if clip:
        x = x.clamp(-1, 1)
    return (x, rec.result()) if keep_steps is not None else x


# ---------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023, arXiv:2302.04867): the same exponential integrator with a corrector at no extra call
# ---------------------------------------------------------------------------------------------
def _unipc_rhos(rks: list[float], h: float, order: int, corrector: bool) -> tuple[float, list[float]]:
    """B(h) = e^{−h} − 1 ("bh2") and the weights ρ of UniP/UniC-p in data prediction (Zhao et al. 2023, Alg. 2/3):
    R_{ij} = r_j^{i−1}, b_i = (i−1)! · h φ_{i+1}(−h) / B(h), h φ_1(−h) = e^{−h} − 1, φ_{k+1} = (φ_k − 1/k!)/(−h);
    ρ_p solves the first order−1 rows (½ for UniP-2), ρ_c all order rows (½ for UniC-1)."""
    hh = -h
    h_phi_k, factorial, b = math.expm1(hh) / hh - 1.0, 1, []
    b_h = math.expm1(hh)
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    if not corrector:
        if order == 2:
            return b_h, [0.5]
        m = order - 1
        R = torch.tensor([[r ** i for r in rks[:m]] for i in range(m)], dtype=torch.float64)
        return b_h, torch.linalg.solve(R, torch.tensor(b[:m], dtype=torch.float64)).tolist() if m else []
    if order == 1:
        return b_h, [0.5]
    R = torch.tensor([[r ** i for r in rks] for i in range(order)], dtype=torch.float64)
    return b_h, torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc_update(x_s: torch.Tensor, x0s: list[torch.Tensor], points: list[LogSNRPoint], t: LogSNRPoint, order: int,
                 x0_t: torch.Tensor | None = None) -> torch.Tensor:
    """One UniP-p step from s = points[-1] to t (x0_t None), or the UniC-p correction of the point t that UniP reached
    from s, given x̂_0 there (x0_t) — Zhao et al. 2023, Eq. 8 and Alg. 2–3, "bh2", data prediction:

    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂_0(s) − α_t B(h) (Σ_k ρ_k D_k [+ ρ_p (x̂_0(t) − x̂_0(s))]),
    D_k = (x̂_0(s_k) − x̂_0(s))/r_k,  r_k = (λ_{s_k} − λ_s)/h, over the previous points s_k (newest first).
    x0s, points: x̂_0 and (α, σ, λ) of the last ``order`` points, oldest first, s last.
    """
    s, m0 = points[-1], x0s[-1]
    h = t.lam - s.lam
    prev = list(zip(reversed(x0s[:-1]), reversed(points[:-1])))[:order - 1]
    rks = [(p.lam - s.lam) / h for _, p in prev] + [1.0]
    d1s = [(m - m0) / r for (m, _), r in zip(prev, rks)]
    b_h, rhos = _unipc_rhos(rks, h, order, corrector=x0_t is not None)
    res = sum((rho * d for rho, d in zip(rhos, d1s)), torch.zeros_like(m0))
    if x0_t is not None:
        res = res + rhos[-1] * (x0_t - m0)
    return (t.sigma / s.sigma) * x_s - (t.alpha * math.expm1(-h)) * m0 - (t.alpha * b_h) * res


@torch.no_grad()
def unipc_sample(model: Model, shape: Sequence[int], schedule: NoiseSchedule, steps: int = 10, order: int = 2,
                 spacing: str = DEFAULT_SPACING, timesteps: Sequence[int] | None = None,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None, clip: bool = True,
                 keep_steps: Iterable[int] | None = None, progress: bool = True, device=None):
    """UniPC (Zhao et al. 2023): UniP-p predictor steps, each point after the first corrected by UniC with the model
    output already computed there (no extra call), as diffusers' UniPCMultistepScheduler (bh2, predict_x0,
    lower_order_final). Orders: step i uses min(order, i + 1, S − i); UniP-2 is DPM-Solver++(2M).
    Arguments and return value as :func:`dpm_solver_sample`.
    """
    taus, device, points = _solver_setup(model, schedule, order, steps, spacing, timesteps, device)
    n = len(taus)
    x = _initial_noise(shape, device, generator, noise)
    rec = _Recorder(keep_steps)
    x0s: list[torch.Tensor] = []
    last_x, last_order = None, 0
    with eval_mode(model):
        for i, tau in enumerate(tqdm(taus, desc=f"UniPC-{order}-{n}", disable=not progress, leave=False)):
            t = torch.full((shape[0],), tau, device=device, dtype=torch.long)
            x0 = predict_x0(x, t, predict_eps(model, x, t), schedule)
            if last_x is not None:                                     # UniC: correct x_i with its own x̂_0
                x = unipc_update(last_x, x0s[-last_order:], points[i - last_order:i], points[i], last_order, x0)
            rec(tau, x, x0)
            x0s = (x0s + [x0])[-3:]
            last_x, last_order = x, min(order, i + 1, n - i)
            x = unipc_update(x, x0s[-last_order:], points[i + 1 - last_order:i + 1], points[i + 1], last_order)
    if clip:
        x = x.clamp(-1, 1)
    return (x, rec.result()) if keep_steps is not None else x
