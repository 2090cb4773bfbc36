"""Generation tests: a tiny U-Net saved as a real checkpoint, sampled to a grid and to a resumable folder."""
import copy

import pytest
import torch
import torchvision
from PIL import Image

import ddpm_helpers.generate as gen
from ddpm_helpers.checkpoint import FORMAT, CheckpointError, atomic_save, config_to_dict
from ddpm_helpers.cli import main
from ddpm_helpers.config import DataConfig, DiffusionConfig, TrainConfig, unet_preset
from ddpm_helpers.generate import SampleFolderError, generate, read_samples_json, sample_from_checkpoint
from ddpm_helpers.images import DamagedImageError, png_problem, read_png
from ddpm_helpers.schedule import NoiseSchedule
from ddpm_helpers.unet import UNet

SIZE, T = 16, 20


def _config() -> TrainConfig:
    return TrainConfig(model=unet_preset("tiny", base_channels=8), diffusion=DiffusionConfig(timesteps=T),
                       data=DataConfig(image_size=SIZE))


def _save_checkpoint(path, raw: UNet, ema: UNet, step: int = 100):
    """A checkpoint dict in the documented "ddpm_helpers/1" format; training-only keys left empty."""
    ckpt = {"format": FORMAT, "config": config_to_dict(_config()), "model": raw.state_dict(), "ema": ema.state_dict(),
            "optimizer": None, "scaler": None, "step": step, "epoch": 0, "batch_in_epoch": 0, "rng": None,
            "sample_noise": None, "bad_steps": 0, "elapsed": 0.0}
    return atomic_save(ckpt, path)


@pytest.fixture
def run(tmp_path):
    """(checkpoint path, raw model, EMA model, schedule), the EMA weights visibly different from the raw ones."""
    torch.manual_seed(0)
    raw = UNet(_config().model).eval()
    ema = copy.deepcopy(raw)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.2 * torch.randn_like(p))
    path = _save_checkpoint(tmp_path / "run" / "ckpt_00000100.pt", raw, ema)
    return path, raw, ema, NoiseSchedule.linear(T)


def _count_sampler_calls(monkeypatch):
    """Wrap both samplers in ddpm_helpers.generate; returns the list of batch sizes they were called with."""
    calls = []
    for name in ("ddim_sample", "ddpm_sample"):
        original = getattr(gen, name)

        def counted(model, shape, *args, _original=original, **kwargs):
            calls.append(shape[0])
            return _original(model, shape, *args, **kwargs)
        monkeypatch.setattr(gen, name, counted)
    return calls


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_i_depends_only_on_seed_and_index(run, sampler):
    _, raw, _, schedule = run
    kw = dict(sampler=sampler, steps=5, seed=3, image_size=SIZE, progress=False)
    whole = generate(raw, schedule, 8, batch_size=4, **kw)
    tail = generate(raw, schedule, 4, batch_size=4, start=4, **kw)
    assert whole.shape == (8, 3, SIZE, SIZE) and whole.min() >= -1 and whole.max() <= 1
    torch.testing.assert_close(tail, whole[4:], atol=1e-5, rtol=0)
    assert not torch.allclose(whole, generate(raw, schedule, 8, batch_size=4, **{**kw, "seed": 4}))
    if sampler == "ddim":   # deterministic DDIM: the batching does not matter either
        torch.testing.assert_close(generate(raw, schedule, 3, batch_size=2, start=5, **kw), whole[5:], atol=1e-5,
                                   rtol=0)


def test_cli_writes_a_grid_of_the_right_pixel_size(run, tmp_path, capsys):
    path, *_ = run
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path.parent), "--n", "4", "--steps", "5", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    assert Image.open(out).size == (2 * SIZE + 3 * 2, 2 * SIZE + 3 * 2)   # 2×2 grid, 2 px padding
    assert "ckpt_00000100.pt (EMA weights)" in capsys.readouterr().out


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_resume_regenerates_only_the_missing_files_identically(run, tmp_path, monkeypatch, sampler):
    path, *_ = run
    out_dir = tmp_path / "samples"
    kw = dict(n=10, sampler=sampler, steps=5, out_dir=out_dir, batch_size=4, device="cpu", progress=False)
    first = sample_from_checkpoint(path, **kw)
    assert (first.folder.written, first.folder.skipped) == (10, 0)
    files = sorted(out_dir.glob("*.png"))
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(10)]
    original = {p.name: p.read_bytes() for p in files}
    for i in (1, 2, 9):
        (out_dir / f"{i:06d}.png").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.png")}

    calls = _count_sampler_calls(monkeypatch)
    second = sample_from_checkpoint(path, **kw)
    assert (second.folder.written, second.folder.skipped) == (3, 7)
    assert calls == [4, 2]                                  # batches [0, 4) and [8, 10) only
    assert {p.name: p.read_bytes() for p in out_dir.glob("*.png")} == original
    assert {n: (out_dir / n).stat().st_mtime_ns for n in kept} == kept   # untouched files not rewritten
    calls.clear()
    assert sample_from_checkpoint(path, **kw).folder.written == 0 and calls == []
    assert not list(out_dir.glob(".*.tmp"))


def test_samples_json_describes_the_folder_and_other_settings_are_refused(run, tmp_path, capsys):
    path, *_ = run
    out_dir = tmp_path / "samples"
    sample_from_checkpoint(path, n=3, steps=5, eta=0.0, seed=1, out_dir=out_dir, device="cpu", progress=False)
    meta = read_samples_json(out_dir)
    assert meta["checkpoint"] == str(path.resolve()) and meta["ema"] is True
    assert (meta["sampler"], meta["steps"], meta["eta"], meta["seed"], meta["n"]) == ("ddim", 5, 0.0, 1, 3)
    assert meta["data"]["image_size"] == SIZE and meta["data"]["crop"] == DataConfig().crop
    for change, field in [({"steps": 6}, "steps"), ({"seed": 2}, "seed"), ({"eta": 0.5}, "eta"),
                          ({"ema": False}, "weights"), ({"sampler": "ddpm"}, "sampler")]:
        kw = {**dict(n=3, steps=5, eta=0.0, seed=1, out_dir=out_dir, device="cpu", progress=False), **change}
        with pytest.raises(SampleFolderError, match=field):
            sample_from_checkpoint(path, **kw)
    assert main(["sample", "--checkpoint", str(path), "--n", "3", "--steps", "7", "--seed", "1", "--out-dir",
                 str(out_dir), "--device", "cpu", "--quiet"]) == 2
    assert "refusing to mix" in capsys.readouterr().err
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "000000.png").write_bytes(b"not ours")
    with pytest.raises(SampleFolderError, match="no samples.json"):
        sample_from_checkpoint(path, n=3, steps=5, out_dir=stray, device="cpu", progress=False)


def test_ema_weights_by_default_raw_weights_with_no_ema(run, tmp_path):
    path, raw, ema, schedule = run
    kw = dict(sampler="ddim", steps=5, seed=0, image_size=SIZE, progress=False)
    expected_ema, expected_raw = generate(ema, schedule, 4, **kw), generate(raw, schedule, 4, **kw)
    assert not torch.allclose(expected_ema, expected_raw, atol=1e-3)
    got_ema = sample_from_checkpoint(path, n=4, steps=5, out=tmp_path / "a.png", device="cpu", progress=False).images
    got_raw = sample_from_checkpoint(path, n=4, steps=5, out=tmp_path / "b.png", device="cpu", ema=False,
                                     progress=False).images
    torch.testing.assert_close(got_ema, expected_ema, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_raw, expected_raw, atol=1e-5, rtol=0)


def test_run_folder_uses_its_newest_checkpoint_and_grid_matches_folder(run, tmp_path):
    path, raw, ema, _ = run
    newer = _save_checkpoint(path.parent / "ckpt_00000200.pt", raw, raw, step=200)
    result = sample_from_checkpoint(path.parent, n=3, steps=5, out=tmp_path / "g.png", out_dir=tmp_path / "s",
                                    device="cpu", progress=False)
    assert result.checkpoint == newer
    folder = torch.stack([torchvision.io.read_image(str(tmp_path / "s" / f"{i:06d}.png")) for i in range(3)])
    torch.testing.assert_close(result.images, folder.float() / 127.5 - 1)


def test_missing_checkpoint_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        sample_from_checkpoint(tmp_path / "nope.pt", out=tmp_path / "g.png")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match=r"holds no ckpt_\*\.pt"):
        sample_from_checkpoint(tmp_path / "empty_run", out=tmp_path / "g.png")
    assert main(["sample", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "g.png")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no checkpoint at {tmp_path / 'nope.pt'}")
    assert main(["sample", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_stochastic_folder_refuses_another_batch_layout(run, tmp_path):
    """DDPM's per-step noise is drawn per batch: resuming with another batch size would silently mix images."""
    path, _, _, _ = run
    out = tmp_path / "ddpm"
    sample_from_checkpoint(path, n=4, sampler="ddpm", seed=0, out_dir=out, batch_size=2, device="cpu", progress=False)
    (out / "000003.png").unlink()
    with pytest.raises(SampleFolderError, match="batch_layout"):
        sample_from_checkpoint(path, n=4, sampler="ddpm", seed=0, out_dir=out, batch_size=4, device="cpu",
                               progress=False)
    # DDIM with eta = 0 is deterministic given the starting noise: any batch size resumes it exactly
    ddim = tmp_path / "ddim"
    sample_from_checkpoint(path, n=4, sampler="ddim", steps=5, seed=0, out_dir=ddim, batch_size=2, device="cpu",
                           progress=False)
    (ddim / "000003.png").unlink()
    sample_from_checkpoint(path, n=4, sampler="ddim", steps=5, seed=0, out_dir=ddim, batch_size=4, device="cpu",
                           progress=False)
    assert (ddim / "000003.png").exists()


def _damage(path, how):
    """Damage a PNG the ways a killed copy or a full disk does, or replace it with a valid image of another size."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero bytes":
        path.write_bytes(b"")
    elif how == "flipped byte":
        damaged = bytearray(data)
        damaged[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(damaged))
    elif how == "other size":
        torchvision.io.write_png(torch.zeros(3, SIZE // 2, SIZE // 2, dtype=torch.uint8), str(path))
    elif how == "gray":
        torchvision.io.write_png(torch.zeros(1, SIZE, SIZE, dtype=torch.uint8), str(path))


@pytest.mark.parametrize("how", ["truncated", "zero bytes", "flipped byte", "other size", "gray"])
def test_a_damaged_png_is_detected_and_regenerated_identically(run, tmp_path, monkeypatch, how):
    path, *_ = run
    out_dir = tmp_path / "samples"
    kw = dict(n=6, sampler="ddim", steps=5, out_dir=out_dir, batch_size=3, device="cpu", progress=False)
    sample_from_checkpoint(path, **kw)
    original = {p.name: p.read_bytes() for p in out_dir.glob("*.png")}
    assert all(png_problem(out_dir / name, (3, SIZE, SIZE)) is None for name in original)
    _damage(out_dir / "000004.png", how)
    assert png_problem(out_dir / "000004.png", (3, SIZE, SIZE)) is not None
    calls = _count_sampler_calls(monkeypatch)
    report = sample_from_checkpoint(path, **kw).folder
    assert (report.written, report.skipped, list(report.damaged)) == (1, 5, [4])
    assert calls == [3]                                     # only the batch [3, 6) holding it
    assert {p.name: p.read_bytes() for p in out_dir.glob("*.png")} == original


def test_read_png_names_a_damaged_file(run, tmp_path):
    path, *_ = run
    sample_from_checkpoint(path, n=1, steps=5, out_dir=tmp_path / "s", device="cpu", progress=False)
    png = tmp_path / "s" / "000000.png"
    assert read_png(png).shape == (3, SIZE, SIZE)
    _damage(png, "truncated")
    with pytest.raises(DamagedImageError, match="cannot decode .*000000.png"):
        read_png(png)


def test_progress_in_a_log_is_one_bar_without_cursor_moves(run, tmp_path, capsys):
    """Output that is not a terminal (a log, CI, a notebook) gets the batch bar only: no nested per-step bar, whose
    redraws would leave '\\x1b[A' residue."""
    path, *_ = run
    assert main(["sample", "--checkpoint", str(path.parent), "--n", "4", "--batch-size", "2", "--steps", "5",
                 "--out-dir", str(tmp_path / "s"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "DDIM → s" in err and "DDIM-5" not in err and "\x1b[A" not in err
