"""SWD tests: the Laplacian pyramid's algebra, the sliced distance on a known shift, the ordering of the metric
(identical < two real sets < blurred < noise) on real faces, determinism, clear errors, and the held-out set.

Real faces: the 100 offline LFW faces of scikit-image (no download, no CelebA needed), 16 px gray.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ddpm_helpers.config import DataConfig
from ddpm_helpers.data import offline_faces
from ddpm_helpers.swd import (
    heldout_images,
    laplacian_pyramid,
    normalise_descriptors,
    pyr_down,
    pyr_up,
    pyramid_levels,
    sliced_wasserstein,
    swd,
    swd_report,
)

FAST = dict(patches_per_image=32, dir_repeats=2, dirs_per_repeat=64)   # small, for speed


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """100 real faces, uint8 (100, 1, 16, 16)."""
    return torch.as_tensor(offline_faces(16, 1)).permute(0, 3, 1, 2).contiguous()


def test_pyramid_levels_reconstruct_the_image_exactly():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    levels = laplacian_pyramid(x, 3)
    assert [tuple(l.shape[-2:]) for l in levels] == [(32, 32), (16, 16), (8, 8)]
    rebuilt = levels[-1]
    for lap in reversed(levels[:-1]):                      # G_k = L_k + up(G_{k+1})
        rebuilt = lap + pyr_up(rebuilt)
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-12)


def test_blur_keeps_constants_and_halves_the_side():
    x = torch.full((1, 2, 16, 16), 0.7, dtype=torch.float64)
    down = pyr_down(x)
    assert down.shape == (1, 2, 8, 8)
    torch.testing.assert_close(down, torch.full_like(down, 0.7))
    torch.testing.assert_close(pyr_up(down), torch.full_like(x, 0.7))   # 4 × filter on a quarter of the pixels


def test_pyramid_depth_follows_the_resolution():
    assert [pyramid_levels(s) for s in (8, 16, 32, 64, 128)] == [1, 2, 3, 4, 4]
    with pytest.raises(ValueError, match="at least 8"):
        pyramid_levels(4)


def test_sliced_distance_of_a_shifted_set_is_the_mean_projected_shift():
    # b = a + s·e_1: every projection on θ is shifted by s·θ_1, so W_1 along θ is exactly s·|θ_1|.
    a = torch.randn(500, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = a.clone()
    b[:, 0] += 0.5
    got = sliced_wasserstein(a, b, torch.Generator().manual_seed(7), dir_repeats=3, dirs_per_repeat=20)
    g = torch.Generator().manual_seed(7)
    expected = np.mean([(0.5 * (d[:, 0] / d.norm(dim=1)).abs()).mean().item()
                        for d in (torch.randn(20, 10, generator=g, dtype=torch.float64) for _ in range(3))])
    assert got == pytest.approx(expected, rel=1e-9)
    shuffled = a[torch.randperm(500)]
    assert sliced_wasserstein(a, shuffled, torch.Generator().manual_seed(7)) == pytest.approx(0, abs=1e-12)


def test_descriptors_are_normalised_per_channel():
    desc = torch.randn(400, 3, 7, 7) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1) + 3
    flat = normalise_descriptors(desc).view(400, 3, 49)
    torch.testing.assert_close(flat.mean(dim=(0, 2)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(flat.std(dim=(0, 2)), torch.ones(3), rtol=0, atol=1e-4)


def test_identical_below_real_below_blurred_below_noise(faces):
    a, b = faces[:50], faces[50:]
    blurred = TF.gaussian_blur(b.float(), kernel_size=5, sigma=1.5).round().to(torch.uint8)
    noise = torch.randint(0, 256, b.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    scores = {name: swd(a, other, seed=0, **FAST).mean
              for name, other in [("identical", a), ("real", b), ("blurred", blurred), ("noise", noise)]}
    assert scores["identical"] < scores["real"] < scores["blurred"] < scores["noise"], scores
    assert scores["noise"] > 2 * scores["real"]                      # clearly worse, not by a hair
    assert scores["identical"] < 0.6 * scores["real"]                # about the floor of patch sampling at this n


def test_float_model_range_and_uint8_give_the_same_number(faces):
    as_float = faces[:20].float() / 127.5 - 1.0                       # the range generate() returns
    assert swd(faces[:20], faces[20:40], **FAST).mean == pytest.approx(swd(as_float, faces[20:40], **FAST).mean,
                                                                        rel=1e-5)


def test_seeded_and_deterministic(faces):
    first = swd(faces[:30], faces[30:60], seed=5, **FAST)
    again = swd(faces[:30], faces[30:60], seed=5, **FAST)
    other = swd(faces[:30], faces[30:60], seed=6, **FAST)
    assert first == again
    assert first.mean != other.mean
    assert first.resolutions == (16, 8) and len(first.per_level) == 2 and first.n == 30
    assert first.mean == pytest.approx(np.mean(first.per_level))


def test_report_pairs_samples_with_real_vs_real_at_the_same_n(faces):
    report = swd_report(faces[:40], faces[40:70], faces[70:], seed=1, **FAST)      # n = the smallest set, 30
    assert report.samples.n == report.real_vs_real.n == 30
    assert report.real_vs_real == swd(faces[70:], faces[40:70], seed=1, n=30, **FAST)
    text = str(report)
    assert "held-out" in text and "real vs real" in text and f"{report.samples.mean:.2f}" in text


def test_bad_inputs_raise_clear_errors(faces):
    with pytest.raises(ValueError, match="differ in shape"):
        swd(faces[:4], torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n"):
        swd(faces[:4], faces[4:8], n=10)


def _plain_folder(folder: Path, count: int) -> Path:
    """count half-size (89×109) JPEGs 000001.jpg … with no partition file, like celeba_5k_half."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, count + 1):
        Image.fromarray(rng.integers(0, 256, (109, 89, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg")
    return folder


def test_heldout_set_is_the_split_after_max_images(tmp_path, monkeypatch):
    monkeypatch.delenv("CELEBA_DIR", raising=False)
    root = _plain_folder(tmp_path / "celeba", 7)
    cfg = DataConfig(root=str(root), image_size=16, channels=3, max_images=5, cache_dir=str(tmp_path / "cache"))
    images, description = heldout_images(cfg)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert "6–7" in description and "first 5" in description
    from ddpm_helpers.celeba import load_image
    np.testing.assert_array_equal(images[0], load_image(root / "000006.jpg", "ddim_128", 16, 3))
    with pytest.raises(ValueError, match="no held-out images"):
        heldout_images(DataConfig(root=str(root), image_size=16, cache_dir=str(tmp_path / "cache")))


def _sample_folder(folder: Path, count: int, size: int = 16) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return folder


def test_sample_folder_is_scored_against_its_runs_heldout_images(tmp_path, monkeypatch):
    from ddpm_helpers.checkpoint import FORMAT, atomic_save, config_to_dict
    from ddpm_helpers.config import train_preset
    from ddpm_helpers.swd import swd_of_sample_folder
    monkeypatch.delenv("CELEBA_DIR", raising=False)
    root = _plain_folder(tmp_path / "celeba", 12)
    cache = str(tmp_path / "cache")
    cfg = train_preset("smoke")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_channels=3, out_channels=3),
                              data=DataConfig(root=str(root), image_size=16, channels=3, max_images=8, cache_dir=cache))
    ckpt = atomic_save({"format": FORMAT, "config": config_to_dict(cfg)}, tmp_path / "run" / "ckpt_00000001.pt")
    samples = _sample_folder(tmp_path / "samples", 6)
    reference = DataConfig(root=str(root), image_size=16, max_images=12, cache_dir=cache, offline_fallback=False)
    report = swd_of_sample_folder(samples, {"checkpoint": str(ckpt)}, reference)
    assert report.samples.n == report.real_vs_real.n == 4                       # held-out: images 9–12
    assert "9–12" in report.reference and "first 4 training" in report.comparison
    fallback = swd_of_sample_folder(samples, {}, reference)                      # no checkpoint named: labelled
    assert fallback.samples.n == 6 and "not known to be held out" in fallback.reference
    every = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_images=None))
    ckpt_all = atomic_save({"format": FORMAT, "config": config_to_dict(every)}, tmp_path / "all" / "ckpt_00000001.pt")
    nothing_held = swd_of_sample_folder(samples, {"checkpoint": str(ckpt_all)}, reference)
    assert "trained on every image" in nothing_held.reference and nothing_held.samples.n == 6


# ---------------------------------------------------------------------------------------------
# Without CelebA: the offline faces' held-out 20 are the reference of evaluate and figures
# ---------------------------------------------------------------------------------------------
def test_offline_faces_split_into_80_to_train_and_20_held_out():
    from ddpm_helpers.data import OFFLINE_HELDOUT
    every, train, held = (offline_faces(16, 1, part=p) for p in ("all", "train", "heldout"))
    assert (len(train), len(held), OFFLINE_HELDOUT) == (80, 20, 20)
    np.testing.assert_array_equal(np.concatenate([train, held]), every)       # disjoint, in order, nothing lost
    with pytest.raises(ValueError, match="part must be"):
        offline_faces(16, 1, part="test")


def test_an_offline_run_gets_a_quality_number_without_celeba(tmp_path, monkeypatch, capsys):
    """The main job's situation: no CelebA anywhere; train, sample, then evaluate and figures both score SWD against
    the 20 held-out faces (which the run never saw), say so, and evaluate exits 0."""
    from ddpm_helpers.cli import main
    from ddpm_helpers.figures import draw_figures
    monkeypatch.delenv("CELEBA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)                                                  # no ./data here
    assert main(["train", "--preset", "smoke", "--max-steps", "2", "--out", "run", "--no-progress"]) == 0
    import torch as _torch
    identity = _torch.load(sorted((tmp_path / "run").glob("ckpt_*.pt"))[-1], weights_only=False)["data_identity"]
    assert (identity["kind"], identity["count"], identity["heldout"]) == ("offline", 80, 20)
    assert main(["sample", "--checkpoint", "run", "--n", "6", "--steps", "3", "--out-dir", "s", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--samples", "s", "--feature", "simple"]) == 0
    out, err = capsys.readouterr()
    assert "20 held-out offline LFW faces" in out and "n = 6 images per set" in out
    assert "no FID/KID" in err and err.count("Places searched") == 0                 # one line, not the block
    figures = draw_figures(tmp_path / "run", tmp_path / "f", quick=True, device="cpu", parts=("data",), log=None)
    assert "held-out offline LFW faces" in figures.swd.reference and figures.swd.samples.n == 20   # all 20
