"""The sampling wrapper (ddpm_helpers.fast_sampling) on the CPU: it must behave exactly like the model it wraps.

CUDA graphs need a GPU; their check (graph output == eager output, bit for bit) runs in
benchmarks/check_gpu_paths.py on the GPU. Here: the mode resolution, the plain fallback, the compile plumbing
(through torch.compile's "eager" backend, which traces without generating code, so it takes a second instead
of the minutes inductor needs on a 2-core machine), and the wrapper passing for the model in the samplers and
in generate().
"""
import pytest
import torch

from ddpm_helpers.config import unet_preset
from ddpm_helpers.diffusion import ddim_sample
from ddpm_helpers.fast_sampling import MODES, SamplingDenoiser, compile_for_sampling, resolve_mode
from ddpm_helpers.generate import generate, weights_fingerprint
from ddpm_helpers.schedule import NoiseSchedule
from ddpm_helpers.unet import UNet

SIZE, T = 16, 20


def _model(dropout: float = 0.3) -> UNet:
    torch.manual_seed(0)
    return UNet(unet_preset("tiny", dropout=dropout, image_size=SIZE))


def _inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randint(0, T, (batch,), generator=g)


@pytest.mark.parametrize("mode, cpu, cuda", [
    ("auto", "off", "cudagraph"), ("off", "off", "off"), ("cudagraph", "off", "cudagraph"),
    ("compile", "compile", "compile"), ("compile+cudagraph", "compile", "compile+cudagraph")])
def test_cuda_graph_modes_fall_back_off_cuda(mode, cpu, cuda):
    assert resolve_mode(mode, torch.device("cpu")) == cpu
    assert resolve_mode(mode, torch.device("cuda")) == cuda


def test_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of") as err:
        compile_for_sampling(_model(), mode="fast")
    assert all(m in str(err.value) for m in MODES)


@pytest.mark.parametrize("mode", ["auto", "off", "cudagraph"])
def test_fallback_gives_the_eager_models_outputs(mode):
    model = _model()
    fast = compile_for_sampling(model, mode=mode)
    assert fast.mode_used == "off"
    x, t = _inputs()
    expected = model.eval()(x, t)
    out = fast(x, t)
    assert torch.equal(out, expected)          # dropout 0.3 in the model: equal only because both run in eval
    assert not out.requires_grad               # sampling only: no graph of gradients is kept


@pytest.fixture(scope="module")
def compiled():
    """(model, its compiled wrapper): traced once for the module (batch 2), as tracing is the slow part."""
    model = _model()
    return model, compile_for_sampling(model, mode="compile", backend="eager")


def test_compiled_model_matches_eager(compiled):
    model, fast = compiled
    assert fast.mode_used == "compile"
    x, t = _inputs(2)
    torch.testing.assert_close(fast(x, t), model(x, t), rtol=1e-5, atol=1e-6)


def test_ddim_with_the_wrapper_is_ddim_with_the_model(compiled):
    model, fast = compiled
    schedule = NoiseSchedule.linear(T)
    noise = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    expected = ddim_sample(model.eval(), noise.shape, schedule, steps=5, noise=noise, progress=False)
    got = ddim_sample(fast, noise.shape, schedule, steps=5, noise=noise, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.std() > 0.1                     # real images, not a constant


def test_generate_sees_the_wrapped_model_weights_and_config():
    model, schedule = _model(), NoiseSchedule.linear(T)
    fast = compile_for_sampling(model)
    assert fast.cfg is model.cfg
    assert weights_fingerprint(fast) == weights_fingerprint(model)   # samples.json stays valid across modes
    a = generate(model, schedule, 4, sampler="ddim", steps=4, seed=3, progress=False)
    b = generate(fast, schedule, 4, sampler="ddim", steps=4, seed=3, progress=False)
    assert torch.equal(a, b)


def test_loading_weights_into_the_wrapper_loads_the_model():
    model, other = _model(), _model(dropout=0.0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    fast = compile_for_sampling(model)
    fast.load_state_dict(other.state_dict())
    x, t = _inputs()
    assert torch.equal(fast(x, t), other.eval()(x, t))


def test_training_mode_calls_the_model_with_gradients():
    model = _model()
    fast = compile_for_sampling(model)
    fast.train()
    x, t = _inputs()
    out = fast(x, t)
    assert out.requires_grad and model.training
    out.sum().backward()
    assert next(model.parameters()).grad is not None


def test_graphs_are_dropped_only_when_the_weights_move():
    fast = SamplingDenoiser(_model(), mode="off")
    fast._graphs["captured"] = object()        # stands for a CUDA graph, which reads the weights by address
    fast.to("cpu")                             # same storage: the graph stays valid
    assert "captured" in fast._graphs
    fast.to(torch.float64)                     # new storage: a replay would read freed memory
    assert fast._graphs == {}


def test_sample_command_fast_flag_gives_the_same_grid(tmp_path, capsys):
    from ddpm_helpers import cli
    from ddpm_helpers.checkpoint import FORMAT, atomic_save, config_to_dict
    from ddpm_helpers.config import DataConfig, DiffusionConfig, TrainConfig
    cfg = TrainConfig(model=unet_preset("tiny"), diffusion=DiffusionConfig(timesteps=T),
                      data=DataConfig(image_size=SIZE))
    model = UNet(cfg.model)
    path = atomic_save({"format": FORMAT, "config": config_to_dict(cfg), "model": model.state_dict(), "ema": None,
                        "step": 1}, tmp_path / "run" / "ckpt_00000001.pt")
    grids = {}
    for fast in ("off", "cudagraph"):        # on a CPU "cudagraph" runs the plain model: the same PNG, byte for byte
        argv = ["sample", "--checkpoint", str(path), "--n", "2", "--steps", "3", "--device", "cpu", "--quiet",
                "--fast", fast, "--out", str(tmp_path / f"{fast}.png")]
        assert cli.main(argv) == 0
        grids[fast] = (tmp_path / f"{fast}.png").read_bytes()
    assert grids["off"] == grids["cudagraph"]
    assert cli.main(argv[:-4] + ["--fast", "turbo"] + argv[-2:]) != 0
    assert "invalid choice: 'turbo'" in capsys.readouterr().err
