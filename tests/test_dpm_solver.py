"""DPM-Solver++ and the timestep grids: diffusers cross-check, DDIM equivalence, Gaussian oracle, bad inputs.

diffusers is a dev requirement and imported plainly: a missing diffusers fails this file instead of skipping the
cross-check.
"""
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from ddpm_helpers import dpm_solver_sample, timestep_grid
from ddpm_helpers.diffusion import ddim_sample
from ddpm_helpers.dpm_solver import step_orders, unipc_sample
from ddpm_helpers.oracle import GaussianOracle, gaussian_eps
from ddpm_helpers.schedule import SPACINGS, NoiseSchedule, check_timesteps, log_snr

S_LIN = NoiseSchedule.linear()
MU, SD = 0.5, 0.2


# --- grids -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_grid_has_exactly_S_distinct_descending_indices_ending_at_0(spacing):
    small = NoiseSchedule.linear(20, 1e-3, 0.2)
    for sched, counts in ((small, range(2, 21)), (S_LIN, (2, 5, 10, 20, 50, 100, 500, 1000))):
        for S in counts:
            g = timestep_grid(sched, S, spacing)
            assert len(g) == S and g[-1] == 0 and g[0] <= sched.T - 1, (S, g)
            assert all(a > b for a, b in zip(g, g[1:])), (S, g)
    assert timestep_grid(S_LIN, 1000, spacing) == list(range(999, -1, -1))


def test_grids_follow_their_equations():
    assert timestep_grid(1000, 10, "uniform") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timestep_grid(1000, 10, "linspace") == [round(i * 999 / 9) for i in range(9, -1, -1)]
    # DDIM App. D.2 "quadratic": ⌊(i · √(0.8 T)/(S − 1))²⌋, no repeats at S = 10
    assert timestep_grid(1000, 10, "quadratic") == [math.floor((i * math.sqrt(800) / 9) ** 2) for i in range(9, -1, -1)]
    # logsnr: each index has the λ nearest to a uniform grid from λ_{T−1} to λ_0
    lam = log_snr(S_LIN)
    g = timestep_grid(S_LIN, 10, "logsnr")
    targets = torch.linspace(lam[-1].item(), lam[0].item(), 10, dtype=torch.float64)   # λ rises as t falls
    assert g == [int((lam - tg).abs().argmin()) for tg in targets]
    assert g[0] == 999 and g[-1] == 0


def test_repeated_rounding_is_spread_to_distinct_indices():
    """quadratic at S = 100 rounds its first points to 0, 0, 0, 0, 1, …: made 0, 1, 2, 3, 4, … (still S calls)."""
    g = timestep_grid(1000, 100, "quadratic")[::-1]
    assert g[:5] == [0, 1, 2, 3, 4] and len(set(g)) == 100


def test_grid_and_explicit_timestep_errors():
    with pytest.raises(ValueError, match="unknown timestep spacing 'bogus'"):
        timestep_grid(1000, 10, "bogus")
    with pytest.raises(ValueError, match="between 1 and T=1000"):
        timestep_grid(1000, 1001)
    with pytest.raises(ValueError, match="needs the noise schedule"):
        timestep_grid(1000, 10, "logsnr")
    for bad, msg in (([5, 5, 0], "descending"), ([0, 5], "descending"), ([10, 5], "end at index 0"),
                     ([1000, 0], r"0\.\.999"), ([], "empty")):
        with pytest.raises(ValueError, match=msg):
            check_timesteps(bad, 1000)


# --- the solver --------------------------------------------------------------------------------------------------
def test_step_orders_match_diffusers_lower_order_final():
    assert step_orders(5, 3) == [1, 2, 3, 2, 1]          # < 15 steps: penultimate at most 2, last 1
    assert step_orders(20, 3) == [1, 2] + [3] * 17 + [1]
    assert step_orders(10, 2) == [1] + [2] * 8 + [1]
    assert step_orders(1, 3) == [1] and step_orders(3, 1) == [1, 1, 1]


def _linear_model(x, t):
    return gaussian_eps(x, t, S_LIN, MU, SD)                      # exact ε of Gaussian data: affine in x


_W = torch.randn(4, 4, generator=torch.Generator().manual_seed(3)) * 0.5


def _nonlinear_model(x, t):
    scale = (t.float() / 1000).reshape(-1, 1, 1, 1)
    return gaussian_eps(x, t, S_LIN, MU, SD) + 0.3 * torch.tanh(torch.einsum("ij,bjhw->bihw", _W, x)) * (1 - scale)


def _diffusers_run(model, noise, taus, order):
    sched = DPMSolverMultistepScheduler(num_train_timesteps=S_LIN.T, trained_betas=S_LIN.betas.double().numpy(),
                                        algorithm_type="dpmsolver++", solver_order=order, final_sigmas_type="zero")
    sched.set_timesteps(timesteps=taus)
    assert sched.timesteps.tolist() == taus
    x = noise.clone()
    for tau in sched.timesteps:
        x = sched.step(model(x, tau.repeat(x.shape[0])), tau, x).prev_sample
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("model", [_linear_model, _nonlinear_model])
def test_matches_diffusers_dpmsolver_pp_to_float32_rounding(model, order):
    noise = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(order))
    for spacing, S in (("logsnr", 10), ("uniform", 20), ("quadratic", 7)):   # 20 ≥ 15: 3rd order to the end
        taus = timestep_grid(S_LIN, S, spacing)
        ref = _diffusers_run(model, noise, taus, order)
        ours = dpm_solver_sample(model, noise.shape, S_LIN, order=order, timesteps=taus, noise=noise, clip=False,
                                 progress=False)
        torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())


@pytest.mark.parametrize("spacing", SPACINGS)
def test_order_1_is_ddim(spacing):
    noise = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    a = dpm_solver_sample(_nonlinear_model, noise.shape, S_LIN, steps=12, order=1, spacing=spacing, noise=noise,
                          clip=False, progress=False)
    b = ddim_sample(_nonlinear_model, noise.shape, S_LIN, steps=12, spacing=spacing, noise=noise, clip=False,
                    progress=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_S_steps_call_the_model_S_times_on_the_grid(steps):
    oracle = GaussianOracle(S_LIN, MU, SD)
    x, traj = dpm_solver_sample(oracle, (3, 1, 2, 2), S_LIN, steps=steps, order=3, spacing="logsnr",
                                generator=torch.Generator().manual_seed(0), keep_steps=[0], progress=False)
    taus = timestep_grid(S_LIN, steps, "logsnr")
    assert [c.tolist() for c in oracle.calls] == [[tau] * 3 for tau in taus]
    assert traj.steps == [0] and traj.xt.shape == (1, 3, 1, 2, 2) and float(x.abs().max()) <= 1


# --- Gaussian oracle ---------------------------------------------------------------------------------------------
X_T = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1)


def _mean_std_errors(sampler, steps, spacing="logsnr"):
    """With the oracle every sampler here is affine in x_T, so x_T = 0 and 1 give the output's mean b and std a
    for x_T ~ N(0, 1) exactly (no sampling error). Errors are against the exact probability-flow ODE from the grid's
    first index τ_0: x_0 = μ + s (x − √ᾱ μ)/√(ᾱ s² + 1 − ᾱ), so a start that is not quite N(0, 1) counts for none."""
    oracle = GaussianOracle(S_LIN, MU, SD)
    if sampler == "ddim":
        out = ddim_sample(oracle, X_T.shape, S_LIN, steps=steps, spacing=spacing, noise=X_T, clip=False, progress=False)
    else:
        out = dpm_solver_sample(oracle, X_T.shape, S_LIN, steps=steps, order=sampler, spacing=spacing, noise=X_T,
                                clip=False, progress=False)
    out = out.flatten().double()
    ab = S_LIN.alpha_bars[timestep_grid(S_LIN, steps, spacing)[0]].double().item()
    sd = math.sqrt(ab * SD ** 2 + 1 - ab)
    return abs(out[0].item() - (MU - SD * math.sqrt(ab) * MU / sd)), abs((out[1] - out[0]).item() - SD / sd)


def test_oracle_dpm_solver_2m_at_10_calls_is_several_times_closer_than_ddim_10():
    ddim_mean, ddim_std = _mean_std_errors("ddim", 10)                      # 1.5e-4, 4.7e-2 (measured)
    dpm_mean, dpm_std = _mean_std_errors(2, 10)                             # 1.2e-5, 3.7e-3
    assert dpm_mean * 5 < ddim_mean and dpm_std * 5 < ddim_std
    _, ddim_default_std = _mean_std_errors("ddim", 10, "uniform")           # DDIM's default grid: 9.5e-2
    assert dpm_std * 20 < ddim_default_std


def test_oracle_error_falls_with_order_and_steps():
    errs = {(k, S): _mean_std_errors(k, S) for k in ("ddim", 2, 3) for S in (5, 20, 50)}
    for S in (5, 20, 50):
        assert errs["ddim", S][1] > errs[2, S][1] > errs[3, S][1]
    for k in ("ddim", 2, 3):
        assert errs[k, 5][1] > errs[k, 20][1] > errs[k, 50][1]
        assert errs[k, 5][0] > errs[k, 50][0]
    assert errs[3, 50][1] < 1e-4


def test_grids_end_at_0_so_the_variance_does_not_shrink():
    """diffusers' own linspace grid for 20 steps ends at index 50 and jumps to x̂_0 from there: std 0.148 instead of
    0.2 on the oracle. Every grid here ends at index 0, and 2M at 20 calls keeps the std within 1.5 %."""
    oracle = GaussianOracle(S_LIN, 0.0, SD)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=S_LIN.T, trained_betas=S_LIN.betas.double().numpy(),
                                        algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    sched.set_timesteps(20)
    assert sched.timesteps[-1].item() == 50                                  # the trap
    x = X_T.clone()
    for tau in sched.timesteps:
        x = sched.step(oracle(x, tau.repeat(2)), tau, x).prev_sample
    assert (x[1] - x[0]).item() == pytest.approx(0.148, abs=0.003)
    for spacing in SPACINGS:
        assert timestep_grid(S_LIN, 20, spacing)[-1] == 0
    ours = dpm_solver_sample(oracle, X_T.shape, S_LIN, steps=20, noise=X_T, clip=False, progress=False).flatten()
    assert (ours[1] - ours[0]).item() == pytest.approx(SD, rel=0.015)


def test_bad_inputs_raise_one_line_value_errors():
    shape = (1, 1, 2, 2)
    cases = [{"order": 0}, {"order": 4}, {"steps": 0}, {"steps": 1001}, {"spacing": "bogus"},
             {"timesteps": [10, 10, 0]}, {"timesteps": [0, 10]}, {"timesteps": [20, 10]}]
    for kwargs in cases:
        with pytest.raises(ValueError) as info:
            dpm_solver_sample(_linear_model, shape, S_LIN, progress=False, **kwargs)
        assert "\n" not in str(info.value), kwargs


# --- UniPC (stretch): UniP predictor + UniC corrector, cross-checked against diffusers ----------------------------
def _diffusers_unipc_run(model, noise, taus, order):
    """diffusers' UniPCMultistepScheduler has no set_timesteps(timesteps=…): its grid is set here as its default
    path would build it for these indices (σ = √((1 − ᾱ)/ᾱ) at each index, then 0 for final_sigmas_type="zero")."""
    sched = UniPCMultistepScheduler(num_train_timesteps=S_LIN.T, trained_betas=S_LIN.betas.double().numpy(),
                                    solver_order=order, final_sigmas_type="zero")
    sched.set_timesteps(len(taus))
    ab = sched.alphas_cumprod.double().numpy()
    sigmas = np.sqrt((1 - ab) / ab)[taus]
    sched.timesteps = torch.tensor(taus)
    sched.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    x = noise.clone()
    for tau in sched.timesteps:
        x = sched.step(model(x, tau.repeat(x.shape[0])), tau, x).prev_sample
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("model", [_linear_model, _nonlinear_model])
def test_unipc_matches_diffusers_to_float32_rounding(model, order):
    noise = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(order))
    for spacing, S in (("logsnr", 10), ("uniform", 20), ("quadratic", 7)):
        taus = timestep_grid(S_LIN, S, spacing)
        ref = _diffusers_unipc_run(model, noise, taus, order)
        ours = unipc_sample(model, noise.shape, S_LIN, order=order, timesteps=taus, noise=noise, clip=False,
                            progress=False)
        torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())


def test_unipc_calls_the_model_once_per_grid_index_and_its_corrector_changes_the_result():
    oracle = GaussianOracle(S_LIN, MU, SD)
    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    x = unipc_sample(oracle, noise.shape, S_LIN, steps=10, order=2, noise=noise, clip=False, progress=False)
    assert [c[0].item() for c in oracle.calls] == timestep_grid(S_LIN, 10, "logsnr")
    y = dpm_solver_sample(oracle, noise.shape, S_LIN, steps=10, order=2, noise=noise, clip=False, progress=False)
    assert (x - y).abs().max() > 1e-4            # UniP-2 is DPM-Solver++(2M): the difference is UniC's
