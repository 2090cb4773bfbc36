"""Diffusion tests: each checks an equation against a computation by hand or a statistic of the noise."""
import pytest
import torch

from ddpm_helpers.diffusion import (
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    forward_step,
    p_mean,
    p_sample,
    predict_x0,
    q_posterior_mean,
    q_sample,
    training_loss,
)
from ddpm_helpers.oracle import GaussianOracle
from ddpm_helpers.schedule import NoiseSchedule
from ddpm_helpers.unet import build_unet


def test_closed_form_matches_iterated_markov_chain_in_mean_and_variance():
    """Iterating x_t = √(1−β_t) x_{t−1} + √β_t ε (report) gives q(x_t|x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I) (Eq. 4)."""
    s = NoiseSchedule.linear(200, 1e-3, 0.05)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    x = x0.clone()
    for i in range(120):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        x = forward_step(x, t, torch.randn(x.shape, generator=g), s)
    t_last = torch.full((x.shape[0],), 119, dtype=torch.long)
    closed = q_sample(x0, t_last, torch.randn(x.shape, generator=g), s)
    ab = s.alpha_bars[119].item()
    for sample in (x, closed):
        assert sample.mean().item() == pytest.approx(ab ** 0.5 * 0.7, abs=0.01)
        assert sample.var().item() == pytest.approx(1 - ab, rel=0.03)
    assert x.mean().item() == pytest.approx(closed.mean().item(), abs=0.015)


def test_q_sample_is_the_closed_form_on_fixed_tensors():
    s = NoiseSchedule.linear()
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 487, 999])
    out = q_sample(x0, t, eps, s)
    for b in range(3):
        ab = s.alpha_bars[t[b]]
        torch.testing.assert_close(out[b], ab.sqrt() * x0[b] + (1 - ab).sqrt() * eps[b])
    # and its inverse
    torch.testing.assert_close(predict_x0(out, t, eps, s), x0, atol=2e-4, rtol=1e-4)


def test_reverse_step_equals_the_report_update_by_hand():
    """x_{t−1} = 1/√α_t (x_t − (1−α_t)/√(1−ᾱ_t) ε_θ) + σ_t z with σ_t = √β_t."""
    s = NoiseSchedule.linear()
    xt, z = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    model = lambda x, t: eps
    t = torch.tensor([487, 10])
    out = p_sample(model, xt, t, s, noise=z)
    for b in range(2):
        i = t[b].item()
        a, ab, beta = s.alphas[i], s.alpha_bars[i], s.betas[i]
        by_hand = (xt[b] - (1 - a) / (1 - ab).sqrt() * eps[b]) / a.sqrt() + beta.sqrt() * z[b]
        torch.testing.assert_close(out[b], by_hand)
    # the posterior-variance option uses σ_t² = β̃_t
    out_post = p_sample(model, xt, t, s, noise=z, variance="posterior")
    torch.testing.assert_close(out_post - out,
                               (s.posterior_variance[t].sqrt() - s.betas[t].sqrt()).reshape(2, 1, 1, 1) * z)


def test_no_noise_at_the_last_step():
    s = NoiseSchedule.linear()
    xt, eps = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    t = torch.zeros(4, dtype=torch.long)                   # index 0 = the report's t = 1
    a = p_sample(lambda x, t: eps, xt, t, s, noise=torch.randn_like(xt))
    b = p_sample(lambda x, t: eps, xt, t, s, noise=torch.randn_like(xt))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, p_mean(xt, t, eps, s))


def test_eps_mean_equals_posterior_mean_of_predicted_x0():
    """μ_θ from ε (Eq. 11) equals μ̃(x̂_0, x_t) (Eq. 7) — the two forms of the reverse mean agree."""
    s = NoiseSchedule.linear()
    xt, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([1, 300, 999])
    torch.testing.assert_close(p_mean(xt, t, eps, s), q_posterior_mean(predict_x0(xt, t, eps, s), xt, t, s),
                               atol=1e-4, rtol=1e-4)


def test_ddpm_loop_applies_the_report_update_at_every_step():
    s = NoiseSchedule.linear(20, 1e-3, 0.2)
    oracle = GaussianOracle(s)
    g = torch.Generator().manual_seed(3)
    out, traj = ddpm_sample(oracle, (2, 1, 2, 2), s, generator=g, keep_steps=range(20), progress=False, clip=False)
    assert [c[0].item() for c in oracle.calls] == list(range(19, -1, -1))
    # replay by hand with the same generator stream
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 2, 2, generator=g)
    for i in range(19, -1, -1):
        t = torch.full((2,), i)
        z = torch.randn(x.shape, generator=g) if i > 0 else torch.zeros_like(x)
        x = p_sample(oracle, x, t, s, noise=z)
    torch.testing.assert_close(out, x)
    assert traj.steps == list(range(19, -1, -1)) and traj.xt.shape == (20, 2, 1, 2, 2)


def test_samplers_recover_known_gaussian_data():
    """With the exact ε of N(0.5, 0.2²) data and T = 1000, DDPM (σ² = β and β̃), DDIM η = 1 and DDIM η = 0
    over all steps sample that distribution; DDIM η = 1 draws the same samples as DDPM with β̃."""
    s = NoiseSchedule.linear()
    shape = (4000, 1, 1, 1)
    runs = {
        "ddpm_beta": lambda g: ddpm_sample(GaussianOracle(s), shape, s, generator=g, progress=False),
        "ddpm_post": lambda g: ddpm_sample(GaussianOracle(s), shape, s, generator=g, variance="posterior",
                                           progress=False),
        "ddim_eta1": lambda g: ddim_sample(GaussianOracle(s), shape, s, steps=1000, eta=1.0, generator=g,
                                           progress=False),
        "ddim_eta0": lambda g: ddim_sample(GaussianOracle(s), shape, s, steps=1000, eta=0.0, generator=g,
                                           progress=False),
    }
    out = {k: f(torch.Generator().manual_seed(0)) for k, f in runs.items()}
    for name, x in out.items():
        assert x.mean().item() == pytest.approx(0.5, abs=0.015), name
        assert x.std().item() == pytest.approx(0.2, abs=0.01), name
    torch.testing.assert_close(out["ddim_eta1"], out["ddpm_post"], atol=1e-3, rtol=0)


def test_coarse_ddim_shrinks_variance_as_the_algebra_says():
    """One deterministic DDIM jump on Gaussian data gives Var = c² / v_t with
    c = √(ᾱ_t ᾱ_p) s² + √((1−ᾱ_t)(1−ᾱ_p)), v_t = ᾱ_t s² + 1 − ᾱ_t (Cauchy–Schwarz: ≤ v_p)."""
    s = NoiseSchedule.linear()
    oracle = GaussianOracle(s, mu=0.0, s=0.2)
    t, tp = 800, 300
    ab, abp = s.alpha_bars[t].double(), s.alpha_bars[tp].double()
    v_t = ab * 0.04 + 1 - ab
    xt = torch.randn(200000, 1, 1, 1, generator=torch.Generator().manual_seed(0)) * v_t.sqrt().float()
    tt = torch.full((xt.shape[0],), t)
    x_prev, _ = ddim_step(xt, tt, torch.full_like(tt, tp), oracle(xt, tt), s, eta=0.0)
    c = (ab * abp).sqrt() * 0.04 + ((1 - ab) * (1 - abp)).sqrt()
    assert x_prev.var().item() == pytest.approx((c ** 2 / v_t).item(), rel=0.02)
    assert (c ** 2 / v_t) < abp * 0.04 + 1 - abp


def test_ddim_eta0_deterministic_given_noise_and_eta1_is_ddpm_posterior():
    s = NoiseSchedule.linear(50, 1e-3, 0.2)
    oracle = GaussianOracle(s)
    noise = torch.randn(3, 1, 2, 2)
    a = ddim_sample(oracle, noise.shape, s, steps=10, noise=noise, progress=False)
    b = ddim_sample(oracle, noise.shape, s, steps=10, noise=noise, generator=torch.Generator().manual_seed(9),
                    progress=False)
    torch.testing.assert_close(a, b)
    # η = 1, consecutive steps: σ² = β̃_t and the mean is μ̃(x̂_0, x_t)
    xt, eps = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    t, tp = torch.tensor([5, 20, 49]), torch.tensor([4, 19, 48])
    z = torch.randn_like(xt)
    x_prev, _ = ddim_step(xt, t, tp, eps, s, eta=1.0, noise=z)
    expected = p_mean(xt, t, eps, s) + s.posterior_variance[t].sqrt().reshape(3, 1, 1, 1) * z
    torch.testing.assert_close(x_prev, expected, atol=1e-4, rtol=1e-4)


def test_ddim_uniform_spacing_is_the_papers_floor_of_i_T_over_S():
    """Song et al. App. D.2 "linear": τ_i = ⌊i·T/S⌋ → 980, 960, …, 0 for T = 1000, S = 50."""
    taus = ddim_timesteps(1000, 50)
    assert taus == list(range(980, -1, -20))
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 3) == [666, 333, 0]            # ⌊2000/3⌋, ⌊1000/3⌋, 0
    assert ddim_timesteps(1000, 1) == [0]


def test_ddim_linspace_spacing_starts_at_pure_noise_and_rounds():
    taus = ddim_timesteps(1000, 50, spacing="linspace")
    assert taus[:4] == [999, 979, 958, 938] and taus[-1] == 0 and len(taus) == 50
    assert ddim_timesteps(1000, 1, spacing="linspace") == [999]


def test_ddim_timesteps_refuses_bad_counts_and_spacings():
    with pytest.raises(ValueError, match="between 1 and T=10"):
        ddim_timesteps(10, 11)
    with pytest.raises(ValueError, match="between 1 and T=10"):
        ddim_timesteps(10, 0)
    with pytest.raises(ValueError, match="unknown timestep spacing 'bogus'"):
        ddim_timesteps(10, 5, spacing="bogus")


def test_training_loss_is_mse_of_the_noise():
    s = NoiseSchedule.linear()
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([3, 900])
    zero_model = lambda x, t: torch.zeros_like(x)
    assert training_loss(zero_model, x0, s, t=t, noise=eps).item() == pytest.approx(eps.pow(2).mean().item(), rel=1e-6)
    perfect = lambda x, tt: eps
    assert training_loss(perfect, x0, s, t=t, noise=eps).item() == 0.0


def test_tiny_unet_learns_on_a_handful_of_images():
    """A small model on 8 images drives L_simple clearly down in a few hundred CPU steps."""
    torch.manual_seed(0)
    s = NoiseSchedule.linear(100, 1e-3, 0.1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    images = torch.stack([torch.sin(3 * xx + k) * torch.cos(2 * yy - k) for k in range(8)]).unsqueeze(1)
    model = build_unet("tiny", in_channels=1, out_channels=1, base_channels=16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        loss = training_loss(model, images, s, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-50:]) / 50
    assert last < 0.5 * first, (first, last)


def _batchnorm_unet():
    from ddpm_helpers.unet import build_unet
    torch.manual_seed(0)
    return build_unet("tiny", norm="batch", in_channels=1, out_channels=1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_put_the_model_in_eval_mode_and_restore_every_module(sampler):
    """A BatchNorm U-Net left in training mode: sample i must not depend on the rest of the batch,
    running statistics must not move, and each module's mode is given back afterwards."""
    model = _batchnorm_unet().train()
    model.attn.eval()                                     # a mixed state to give back exactly
    modes = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    s = NoiseSchedule.linear(20)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    run = (lambda x: ddpm_sample(model, x.shape, s, noise=x, generator=torch.Generator().manual_seed(2),
                                 progress=False)) \
        if sampler == "ddpm" else (lambda x: ddim_sample(model, x.shape, s, steps=5, noise=x, progress=False))
    together = run(noise)
    if sampler == "ddim":                                 # deterministic: sample 0 alone must be the same
        torch.testing.assert_close(run(noise[:1]), together[:1], atol=1e-5, rtol=1e-5)
    assert [m.training for m in model.modules()] == modes
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_eval_mode_gives_the_modes_back_after_an_error():
    from ddpm_helpers.diffusion import eval_mode
    model = _batchnorm_unet().train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_unet_cast_to_half_precision_runs_and_samples(dtype):
    """model.to(bf16) must work end to end: the float32 time embedding and the float32 sampler state are
    cast to the model's dtype, and its prediction stays close to the float32 model's."""
    from ddpm_helpers.unet import build_unet
    torch.manual_seed(0)
    model = build_unet("tiny", in_channels=1, out_channels=1).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 17])
    with torch.no_grad():
        ref = model(x, t)
        half = model.to(dtype)
        out = half(x.to(dtype), t)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    sample = ddim_sample(half, (2, 1, 8, 8), NoiseSchedule.linear(20), steps=4,
                         generator=torch.Generator().manual_seed(0), progress=False)
    assert sample.dtype == torch.float32 and torch.isfinite(sample).all()


def test_chain_moments_agree_with_the_closed_form_and_catch_a_wrong_step():
    """Many single-step chains from one x_0: slope √ᾱ_t and variance 1 − ᾱ_t within sampling noise; a chain that uses
    α_t in place of √α_t (a classic slip) is dozens of standard errors off."""
    from ddpm_helpers.stats import chain_moments
    s = NoiseSchedule.linear(100, 1e-3, 0.1)
    x0 = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    good = chain_moments(x0, s, n_chains=2000, every=10, generator=torch.Generator().manual_seed(1))
    assert good.steps == [0, 9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
    assert max(good.worst_z.values()) < 5.5
    torch.testing.assert_close(torch.tensor(good.slope), s.sqrt_alpha_bars[good.steps], atol=0.05, rtol=0)
    wrong = NoiseSchedule(s.betas.clone())
    wrong.betas = 1 - (1 - s.betas) ** 2                 # forward_step would now use √(1−β') = α_t: the slip
    bad = chain_moments(x0, wrong, n_chains=2000, every=10, generator=torch.Generator().manual_seed(1))
    bad_slopes = torch.tensor(bad.slope)
    assert (bad_slopes - s.sqrt_alpha_bars[bad.steps]).abs().max() > 0.1   # measured against the true closed form
