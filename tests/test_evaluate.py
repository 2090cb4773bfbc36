"""Metric tests, offline: the stand-in SimpleFeatures extractor replaces Inception; torchmetrics does the math."""
import json
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ddpm_helpers import evaluate, swd
from ddpm_helpers.cli import main
from ddpm_helpers.evaluate import MetricsUnavailable, SimpleFeatures, compute_metrics, extract_features

N, SIZE = 128, 16
KID = dict(kid_subset_size=50, kid_subsets=20)


def textures(n: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields, uint8 (n, 3, SIZE, SIZE): one distribution, a new draw per seed."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (F.interpolate(low, size=SIZE, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def model_range(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


class CountingFeatures(SimpleFeatures):
    """SimpleFeatures that counts the images it has seen."""

    def __init__(self):
        super().__init__()
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return super().forward(x)


@pytest.fixture(scope="module")
def real():
    return textures(N, 0)


def test_identical_sets_score_about_zero(real):
    result = compute_metrics(real, real, feature=SimpleFeatures(), **KID)
    shifted = compute_metrics((model_range(real) + 0.1).clamp(-1, 1), real, feature=SimpleFeatures(), **KID)
    assert abs(result.fid) < 1e-3 * shifted.fid
    assert abs(result.kid_mean) < 0.2 * shifted.kid_mean
    assert (result.n_fake, result.n_real, result.kid_subset_size) == (N, N, 50)


def test_shifted_sets_score_higher_the_larger_the_shift(real):
    ext = SimpleFeatures()
    same_distribution = compute_metrics(textures(N, 1), real, feature=ext, **KID)
    shifted = [compute_metrics((model_range(real) + s).clamp(-1, 1), real, feature=ext, **KID) for s in (0.1, 0.3, 0.6)]
    fids, kids = [r.fid for r in shifted], [r.kid_mean for r in shifted]
    assert same_distribution.fid < fids[0] < fids[1] < fids[2]
    assert same_distribution.kid_mean < kids[0] < kids[1] < kids[2]
    noisy = (model_range(real) + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    assert compute_metrics(noisy, real, feature=ext, **KID).fid > 5 * same_distribution.fid


def test_every_input_form_gives_the_same_features(real, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, img in enumerate(real[:8]):
        torchvision.io.write_png(img, str(folder / f"{i:06d}.png"))
    torchvision.io.write_png(real[0, :, :8], str(folder / "grid.png"))   # not a sample: left out
    ext = SimpleFeatures()
    expected = extract_features(real[:8], ext)
    for form in (real[:8].permute(0, 2, 3, 1).numpy(), real[:8].numpy(), model_range(real[:8]), folder):
        torch.testing.assert_close(extract_features(form, ext, batch_size=3), expected)
    gray = real[:8, :1]
    torch.testing.assert_close(extract_features(gray, ext), extract_features(gray.expand(-1, 3, -1, -1), ext))


def test_reference_features_are_computed_once_and_reused(real, tmp_path):
    cache = tmp_path / "refs"
    fake = textures(64, 1)
    ext = CountingFeatures()
    first = compute_metrics(fake, real, feature=ext, reference_cache=cache, reference="textures", **KID)
    assert ext.images_seen == 64 + N and len(list(cache.glob("*.pt"))) == 1
    second = compute_metrics(fake, real, feature=ext, reference_cache=cache, reference="textures", **KID)
    assert ext.images_seen == 64 + N + 64                    # only the samples' features this time
    assert (second.fid, second.kid_mean) == pytest.approx((first.fid, first.kid_mean), rel=1e-6)
    other = real.clone()
    other[0] = 255 - other[0]                                # other images (the content is part of the key)
    compute_metrics(fake, other, feature=ext, reference_cache=cache, reference="textures", **KID)
    assert ext.images_seen == 64 + N + 64 + 64 + N and len(list(cache.glob("*.pt"))) == 2
    one_file = tmp_path / "ref.pt"                           # a .pt path holds one key; another key overwrites it
    compute_metrics(fake, real, feature=ext, reference_cache=one_file, reference="textures", **KID)
    with pytest.warns(UserWarning, match="other settings"):
        compute_metrics(fake, real, feature=ext, reference_cache=one_file, reference="a different set", **KID)
    one_file.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        again = compute_metrics(fake, real, feature=ext, reference_cache=one_file, reference="textures", **KID)
    assert again.fid == pytest.approx(first.fid, rel=1e-6)


def test_result_prints_every_number_with_its_context(real):
    result = compute_metrics(real, real, feature=SimpleFeatures(), sampler="DDIM η=0", steps=50,
                             reference="CelebA train (ddim_128 → 16 px)", **KID)
    fid_line, kid_line = str(result).splitlines()
    for line in (fid_line, kid_line):
        assert f"{N:,} samples (DDIM η=0, 50 steps)" in line and f"{N:,} real images (CelebA train" in line
        assert "simple-64-seed0" in line
    assert fid_line.startswith("FID ") and kid_line.startswith("KID ") and "20 subsets of 50" in kid_line
    assert json.loads(json.dumps(result.as_dict()))["steps"] == 50


def test_bad_inputs_are_refused_with_a_reason(real):
    with pytest.raises(ValueError, match="16×16 px.*32×32 px"):
        compute_metrics(real, F.interpolate(real.float(), size=32).to(torch.uint8), feature=SimpleFeatures())
    with pytest.raises(ValueError, match=r"model range \[-1, 1\]"):
        compute_metrics(real.float(), real, feature=SimpleFeatures())
    with pytest.raises(ValueError, match="unknown feature extractor"):
        compute_metrics(real, real, feature="vgg")


@pytest.mark.parametrize("error", [urllib.error.URLError("[Errno -2] Name or service not known"),
                                   ConnectionError("Connection refused")])
def test_inception_download_failure_is_a_clear_message(real, monkeypatch, error):
    import torchmetrics.image.fid as tm_fid

    def offline(*args, **kwargs):
        raise error
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", offline)
    with pytest.raises(MetricsUnavailable, match="could not be downloaded .no internet.*Kaggle enable Internet"):
        compute_metrics(real, real)
    assert issubclass(MetricsUnavailable, RuntimeError)


@pytest.fixture
def sample_folder(real, tmp_path, monkeypatch):
    """A folder of PNGs with a samples.json like write_samples', and prepare_images replaced by a tiny array."""
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, img in enumerate(textures(64, 1)):
        torchvision.io.write_png(img, str(folder / f"{i:06d}.png"))
    meta = {"sampler": "ddim", "steps": 50, "eta": 0.0, "seed": 0, "n": 64, "image_size": SIZE, "channels": 3,
            "data": {"crop": "center_140", "image_size": SIZE, "channels": 3}}
    (folder / "samples.json").write_text(json.dumps(meta))
    asked = []

    def fake_prepare(cfg, **kwargs):
        asked.append(cfg)
        return real.permute(0, 2, 3, 1).numpy(), f"test textures ({cfg.crop} → {cfg.image_size} px)"
    monkeypatch.setattr(evaluate, "prepare_images", fake_prepare)   # the names evaluate and swd call
    monkeypatch.setattr(swd, "prepare_images", fake_prepare)
    return folder, asked


def test_cli_prints_metrics_for_a_sample_folder(sample_folder, tmp_path, capsys):
    folder, asked = sample_folder
    assert main(["evaluate", "--samples", str(folder), "--feature", "simple", "--kid-subset-size", "50",
                 "--kid-subsets", "5", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--n-real", "100",
                 "--json", str(tmp_path / "m.json")]) == 0
    cfg = asked[0]
    assert (cfg.crop, cfg.image_size, cfg.channels, cfg.max_images) == ("center_140", SIZE, 3, 100)
    out = capsys.readouterr().out
    assert "64 samples (DDIM η=0, 50 steps) vs 128 real images (test textures (center_140 → 16 px))" in out
    assert json.loads((tmp_path / "m.json").read_text())["n_fake"] == 64
    assert list((tmp_path / "cache" / "reference_features").glob("reference_simple-64-seed0_16px_n128_*.pt"))


def test_cli_without_inception_weights_exits_with_the_message_not_a_traceback(sample_folder, tmp_path, monkeypatch,
                                                                             capsys):
    import torchmetrics.image.fid as tm_fid
    folder, _ = sample_folder

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", offline)
    assert main(["evaluate", "--samples", str(folder), "--device", "cpu", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: the Inception weights could not be downloaded")
    assert main(["evaluate", "--samples", str(folder), "--device", "cpu", "--cache-dir", str(tmp_path),
                 "--inception-weights", str(tmp_path / "missing.pth")]) == 2
    assert "no Inception weights file at" in capsys.readouterr().err
