"""`sample --sampler dpm++2m|dpm++3m [--spacing …]`: a tiny U-Net checkpoint sampled in-process into a resumable
folder whose samples.json records sampler, order and grid; a resumed folder refuses another sampler or grid."""
import json

import pytest
import torch

from ddpm_helpers.checkpoint import FORMAT, atomic_save, config_to_dict
from ddpm_helpers.cli import main
from ddpm_helpers.config import DataConfig, DiffusionConfig, TrainConfig, unet_preset
from ddpm_helpers.data import from_model_range
from ddpm_helpers.dpm_solver import dpm_solver_sample
from ddpm_helpers.generate import initial_noise, read_sample_folder, read_samples_json
from ddpm_helpers.schedule import NoiseSchedule
from ddpm_helpers.unet import UNet

SIZE, T = 8, 20


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(model=unet_preset("tiny", base_channels=8), diffusion=DiffusionConfig(timesteps=T),
                      data=DataConfig(image_size=SIZE))
    model = UNet(cfg.model).eval()
    state = {"format": FORMAT, "config": config_to_dict(cfg), "model": model.state_dict(), "ema": model.state_dict(),
             "optimizer": None, "scaler": None, "step": 1, "epoch": 0, "batch_in_epoch": 0, "rng": None,
             "sample_noise": None, "bad_steps": 0, "elapsed": 0.0}
    return atomic_save(state, tmp_path / "run" / "ckpt_00000001.pt"), model


def _sample(path, out_dir, *extra):
    return main(["sample", "--checkpoint", str(path), "--n", "3", "--batch-size", "2", "--out-dir", str(out_dir),
                 "--device", "cpu", "--quiet", *extra])


def test_sample_dpm_solver_writes_the_solver_images_and_records_sampler_order_grid(ckpt, tmp_path, capsys):
    path, model = ckpt
    out_dir = tmp_path / "s"
    assert _sample(path, out_dir, "--sampler", "dpm++3m", "--steps", "5") == 0
    assert "DPM++3M-5 (logsnr grid)" in capsys.readouterr().out
    meta = read_samples_json(out_dir)
    assert (meta["sampler"], meta["order"], meta["spacing"], meta["steps"]) == ("dpm++3m", 3, "logsnr", 5)
    x_T = initial_noise(0, 0, 3, (model.cfg.in_channels, SIZE, SIZE))
    expected = dpm_solver_sample(model, x_T.shape, NoiseSchedule.linear(T), steps=5, order=3, spacing="logsnr",
                                 noise=x_T, progress=False)
    assert torch.equal(read_sample_folder(out_dir), from_model_range(expected))
    assert _sample(path, out_dir, "--sampler", "dpm++3m", "--steps", "5") == 0          # resumed: nothing to do
    assert "wrote 0 PNGs, kept 3" in capsys.readouterr().out


@pytest.mark.parametrize("change, field", [(["--sampler", "dpm++3m"], "sampler"), (["--spacing", "uniform"], "spacing"),
                                           (["--sampler", "ddim"], "sampler")])
def test_a_resumed_folder_refuses_another_sampler_or_grid(ckpt, tmp_path, capsys, change, field):
    path, _ = ckpt
    out_dir = tmp_path / "s"
    assert _sample(path, out_dir, "--sampler", "dpm++2m", "--steps", "4") == 0
    capsys.readouterr()
    assert _sample(path, out_dir, "--sampler", "dpm++2m", "--steps", "4", *change) == 2
    err = capsys.readouterr().err
    assert "refusing to mix" in err and f"{field}: folder has" in err


def test_ddim_spacing_is_recorded_and_old_ddim_folders_still_resume(ckpt, tmp_path, capsys):
    path, _ = ckpt
    out_dir = tmp_path / "d"
    assert _sample(path, out_dir, "--steps", "4", "--spacing", "quadratic") == 0
    assert read_samples_json(out_dir)["spacing"] == "quadratic"
    assert _sample(path, out_dir, "--steps", "4") == 2                                   # uniform ≠ quadratic
    old = tmp_path / "old"
    assert _sample(path, old, "--steps", "4") == 0
    meta = read_samples_json(old)
    for key in ("spacing", "order"):                                                    # as written before them
        del meta[key]
    (old / "samples.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert _sample(path, old, "--steps", "4") == 0 and "wrote 0 PNGs" in capsys.readouterr().out


def test_bad_solver_arguments_are_one_line_errors(ckpt, tmp_path, capsys):
    path, _ = ckpt
    assert _sample(path, tmp_path / "a", "--sampler", "dpm++2m", "--steps", str(T + 1)) == 2
    err = capsys.readouterr().err.strip()
    assert "between 1 and T=20" in err and len(err.splitlines()) == 1
    assert _sample(path, tmp_path / "b", "--sampler", "dpm++2m", "--spacing", "bogus") == 2
    assert "--spacing: invalid choice: 'bogus'" in capsys.readouterr().err


def test_bench_solvers_dry_run_writes_one_row_per_sampler_grid_and_calls(tmp_path):
    """benchmarks/bench_solvers.py on a tiny random model (its numbers mean nothing): the JSON's rows and fields."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_solvers
    out = tmp_path / "solvers.json"
    result = bench_solvers.main(["--dry-run", "--n", "4", "--calls", "2", "3", "--samplers", "ddim", "dpm++2m",
                                 "--grids", "dpm++3m:quadratic", "--batch-size", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    got = [(r["sampler"], r["order"], r["spacing"], r["calls"], len(r["swd"])) for r in result["rows"]]
    assert got == [("ddim", None, "uniform", 2, 2), ("ddim", None, "uniform", 3, 2), ("dpm++2m", 2, "logsnr", 2, 2),
                   ("dpm++2m", 2, "logsnr", 3, 2), ("dpm++3m", 3, "quadratic", 2, 2), ("dpm++3m", 3, "quadratic", 3, 2)]
    r = result["rows"][0]
    assert r["swd_spread"] == pytest.approx(max(r["swd"]) - min(r["swd"])) and r["seconds_per_image"] > 0
    assert result["real_vs_real"] > 0 and result["n"] == 4 and result["seeds"] == [0, 1]
