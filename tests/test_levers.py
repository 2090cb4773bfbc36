"""The two training levers of issue 24, each checked against its equation computed by hand (float64 schedule),
their config fields (old checkpoints' dicts keep loading) and their command-line flags."""
import argparse
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ddpm_helpers import cli
from ddpm_helpers.checkpoint import config_from_dict, config_to_dict
from ddpm_helpers.config import TRAIN_PRESETS, TrainConfig
from ddpm_helpers.diffusion import min_snr_weight, perturbed_noise, q_sample, training_loss
from ddpm_helpers.errors import ConfigError
from ddpm_helpers.schedule import NoiseSchedule


def _alpha_bar(t: int, T: int = 1000) -> float:
    """ᾱ_t of the report's linear schedule, by hand in float64: ∏_{s ≤ t} (1 − β_s), β linear 1e-4 … 0.02."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return float(torch.cumprod(1 - betas, 0)[t])


def test_min_snr_weight_is_min_snr_gamma_over_snr():
    """w_t = min(SNR_t, γ)/SNR_t with SNR_t = ᾱ_t/(1 − ᾱ_t): γ/SNR at the clean end, exactly 1 at the noisy end."""
    s = NoiseSchedule.linear(1000)
    ts = [0, 10, 50, 100, 200, 500, 999]
    w = min_snr_weight(torch.tensor(ts), s, gamma=5.0)
    for t, got in zip(ts, w.tolist()):
        snr = _alpha_bar(t) / (1 - _alpha_bar(t))
        assert got == pytest.approx(min(snr, 5.0) / snr, rel=1e-5)
    assert w[0].item() == pytest.approx(5.0 * (1 - 0.9999) / 0.9999, rel=1e-4)   # ᾱ_0 = 1 − β_0
    assert w[-1].item() == 1.0 and w[0].item() < 1e-3


def test_min_snr_loss_is_the_weighted_mean_of_per_sample_errors():
    """L = mean_b w_{t_b} · mean_pixels (ε_b − ε_θ)²: with ε_θ = 0 and ε_b = c_b everywhere, L = mean_b w_b c_b²."""
    s = NoiseSchedule.linear(1000)
    t = torch.tensor([5, 500])
    noise = torch.stack([torch.full((1, 4, 4), 2.0), torch.full((1, 4, 4), 3.0)])
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    loss = training_loss(zero, torch.zeros_like(noise), s, t=t, noise=noise, min_snr_gamma=5.0)
    snr5 = _alpha_bar(5) / (1 - _alpha_bar(5))
    snr500 = _alpha_bar(500) / (1 - _alpha_bar(500))
    expect = (min(snr5, 5) / snr5 * 4.0 + min(snr500, 5) / snr500 * 9.0) / 2
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    assert training_loss(zero, torch.zeros_like(noise), s, t=t, noise=noise).item() == pytest.approx(6.5)


def test_input_perturbation_builds_xt_from_eps_plus_delta_xi_and_targets_eps():
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t)(ε + δξ) goes into the model; the loss compares its output with ε itself."""
    s = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(3)
    x0, noise, xi = (torch.randn(2, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([100, 700])
    seen = {}

    def oracle(x, t_):      # answers ε exactly and records its input
        seen["x"] = x
        return noise.clone()
    loss = training_loss(oracle, x0, s, t=t, noise=noise, input_perturbation=0.1, xi=xi)
    assert loss.item() == 0.0                                       # the target is ε, not ε + δξ
    for b, tb in enumerate(t.tolist()):
        ab = _alpha_bar(tb)
        expect = ab ** 0.5 * x0[b].double() + (1 - ab) ** 0.5 * (noise[b].double() + 0.1 * xi[b].double())
        assert torch.allclose(seen["x"][b].double(), expect, atol=1e-5)
    assert torch.equal(perturbed_noise(noise, xi, 0.1), noise + 0.1 * xi)
    ident = lambda x, t_: x  # noqa: E731
    got = training_loss(ident, x0, s, t=t, noise=noise, input_perturbation=0.1, xi=xi)
    xt = q_sample(x0, t, noise + 0.1 * xi, s)
    assert got.item() == pytest.approx(F.mse_loss(xt, noise).item(), rel=1e-6)


def test_defaults_draw_exactly_what_lsimple_drew():
    """Levers off: the same loss and the same generator state as L_simple's t-then-ε draws (old runs resume exactly)."""
    s = NoiseSchedule.linear(50)
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    model = lambda x, t: 0.5 * x  # noqa: E731
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    got = training_loss(model, x0, s, generator=g1, min_snr_gamma=None, input_perturbation=0.0)
    t = torch.randint(0, 50, (3,), generator=g2)
    eps = torch.randn(x0.shape, generator=g2)
    assert got.item() == pytest.approx(F.mse_loss(model(q_sample(x0, t, eps, s), t), eps).item(), rel=1e-6)
    assert torch.equal(g1.get_state(), g2.get_state())
    training_loss(model, x0, s, generator=g1, input_perturbation=0.1)       # ξ is one more draw
    torch.randint(0, 50, (3,), generator=g2), torch.randn(x0.shape, generator=g2), torch.randn(x0.shape, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_config_fields_default_to_todays_loss_and_old_dicts_load():
    cfg = TRAIN_PRESETS["smoke"]
    assert cfg.min_snr_gamma is None and cfg.input_perturbation == 0.0
    old = config_to_dict(dataclasses.replace(cfg, lr=3e-4))
    del old["min_snr_gamma"], old["input_perturbation"]            # a checkpoint written before the levers
    back = config_from_dict(old)
    assert back.lr == 3e-4 and back.min_snr_gamma is None and back.input_perturbation == 0.0
    new = dataclasses.replace(cfg, min_snr_gamma=5.0, input_perturbation=0.1)
    assert config_from_dict(config_to_dict(new)) == new


@pytest.mark.parametrize("field,value,flag", [("min_snr_gamma", 0.0, "--loss-weight"),
                                              ("min_snr_gamma", float("nan"), "--loss-weight"),
                                              ("input_perturbation", -0.1, "--input-perturbation"),
                                              ("input_perturbation", 2.0, "--input-perturbation")])
def test_bad_lever_values_are_one_line_config_errors(field, value, flag):
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(TrainConfig(), **{field: value})
    assert flag in str(e.value) and "\n" not in str(e.value)


def test_cli_flags_set_the_levers_and_reject_bad_values(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--preset", "smoke", "--loss-weight", "min-snr-5",
                              "--input-perturbation", "0.1"])
    _, cfg = cli.build_train_config(args)
    assert cfg.min_snr_gamma == 5.0 and cfg.input_perturbation == 0.1
    _, cfg = cli.build_train_config(parser.parse_args(["train", "--preset", "smoke", "--loss-weight", "none"]))
    assert cfg.min_snr_gamma is None and cfg.input_perturbation == 0.0
    assert cli.loss_weight("min-snr-2.5") == 2.5
    for bad in ("min-snr-0", "min-snr-x", "snr", "min-snr--1"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.loss_weight(bad)
    assert cli.main(["train", "--preset", "smoke", "--input-perturbation", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--input-perturbation" in err and "[0, 1]" in err
