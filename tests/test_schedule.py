"""Schedule tests: pinned values from the equations (checked to 1e-5), and the timestep convention."""
import math

import pytest
import torch

from ddpm_helpers.schedule import NoiseSchedule, extract


def test_linear_endpoints_and_alpha_bars_pinned():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert s.T == len(s.betas) == len(s.alphas) == len(s.alpha_bars) == 1000
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-9)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-9)
    # ᾱ at index 0 is 1 − β_1 (the report's t = 1).
    assert s.alpha_bars[0].item() == pytest.approx(0.9999, abs=1e-7)
    # ᾱ_T = ∏ (1 − β_t) for linear 1e-4..0.02, pinned (computed once in float64 outside the package).
    assert s.alpha_bars[-1].item() == pytest.approx(4.0358297653756754e-05, rel=1e-5)
    assert s.alpha_bars[487].item() == pytest.approx(0.08858573232059307, rel=1e-5)


def test_posterior_variance_pinned_at_487():
    """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (Ho et al. Eq. 7) ≈ 0.00979 at t = 487 (diffusers' pinned value)."""
    s = NoiseSchedule.linear()
    assert s.posterior_variance[487].item() == pytest.approx(0.00979, abs=1e-5)
    # and it is below β_t everywhere, equal to 0 at index 0 (x_0 is known exactly)
    assert s.posterior_variance[0].item() == 0.0
    assert bool((s.posterior_variance <= s.betas + 1e-9).all())


def test_derived_terms_match_definitions():
    s = NoiseSchedule.linear(50, 1e-3, 0.2)
    b = s.betas.double()
    a = 1 - b
    ab = torch.cumprod(a, 0)
    torch.testing.assert_close(s.alphas.double(), a, atol=1e-7, rtol=0)
    torch.testing.assert_close(s.alpha_bars.double(), ab, atol=1e-7, rtol=0)
    assert s.alpha_bars_prev[0].item() == 1.0
    torch.testing.assert_close(s.alpha_bars_prev[1:], s.alpha_bars[:-1])
    torch.testing.assert_close(s.sqrt_alpha_bars ** 2 + s.sqrt_one_minus_alpha_bars ** 2, torch.ones(50))
    torch.testing.assert_close(s.sigmas("beta") ** 2, s.betas)
    torch.testing.assert_close(s.sigmas("posterior") ** 2, s.posterior_variance)


def test_cosine_schedule_follows_its_formula():
    """ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal Eq. 17)."""
    T, s_ = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    for i in [0, 10, 500, 900]:
        assert s.alpha_bars[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-5)
    assert s.betas.max().item() <= 0.999 + 1e-7
    # cosine destroys information more slowly than linear in the middle
    assert s.alpha_bars[500] > NoiseSchedule.linear().alpha_bars[500]


def test_extract_broadcasts_per_sample():
    vals = torch.arange(10.0)
    t = torch.tensor([0, 3, 9])
    out = extract(vals, t, (3, 2, 4, 4))
    assert out.shape == (3, 1, 1, 1)
    assert out.flatten().tolist() == [0.0, 3.0, 9.0]


def test_snr_decreasing_and_bad_betas_rejected():
    s = NoiseSchedule.linear()
    assert bool((s.snr()[1:] < s.snr()[:-1]).all())
    with pytest.raises(ValueError):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError):
        s.sigmas("large")
