"""Figure tests: the loss curve's smoothing follows the loss; draw_figures writes every named file from a smoke
checkpoint (PNG decodes at the checkpoint's resolution, GIF animates, JSON holds the run's facts and SWD); the
data-dependent figures are skipped with a reason when the data is gone.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_helpers import plotting
from ddpm_helpers.config import train_preset
from ddpm_helpers.figures import draw_figures, facts_sentence, nearest_neighbours, write_grid_png


# ---------------------------------------------------------------------------------------------
# The loss curve
# ---------------------------------------------------------------------------------------------
def _falling_then_flat(rows: int = 120, every: int = 25) -> tuple[list, list]:
    """A loss logged every 25 steps: 1.0 falling 20× by step 100, then flat at 0.05 with ±10 % noise."""
    rng = np.random.default_rng(0)
    steps = [every * (i + 1) for i in range(rows)]
    loss = [max(0.05, 1.0 * 20 ** (-s / 100)) * math.exp(rng.normal(0, 0.1)) for s in steps]
    return steps, loss


def _old_linear_ema(values, factor=0.9):
    out, s = [], None
    for v in values:
        s = v if s is None else factor * s + (1 - factor) * v
        out.append(s)
    return out


def test_smoothed_loss_tracks_the_raw_level_after_a_fast_fall():
    steps, loss = _falling_then_flat()
    smoothed = plotting.smooth_log(loss)
    at_300 = steps.index(300)
    assert abs(smoothed[at_300] / 0.05 - 1) < 0.2                   # within 20 % of the raw level
    assert abs(_old_linear_ema(loss)[at_300] / 0.05 - 1) > 0.2       # the old linear EMA ran far above it
    assert smoothed[0] == pytest.approx(loss[0])                      # the start is not smoothed into the plateau
    spread = lambda xs: float(np.std(np.log(xs[10:])))
    assert spread(smoothed) < 0.6 * spread(loss)                      # a steadier line than the raw one


def test_smoothing_ignores_spikes_and_nans():
    values = [0.1] * 60 + [5.0] + [0.1] * 20 + [float("nan")] + [0.1] * 38
    smoothed = plotting.smooth_log(values, window=7)
    assert max(s for s in smoothed if not math.isnan(s)) == pytest.approx(0.1)
    assert len(smoothed) == len(values)


def test_loss_curve_is_column_wide_with_a_wrapped_title(tmp_path):
    steps, loss = _falling_then_flat()
    csv = tmp_path / "metrics.csv"
    csv.write_text("step,loss\n" + "".join(f"{s},{v}\n" for s, v in zip(steps, loss)))
    title = "L_simple, CelebA train (ddim_128 → 32 px), 4,500 images from /work/shared/data/celeba_5k_half"
    fig = plotting.plot_loss_curve(csv, tmp_path / "loss.png", title=title)
    ax = fig.axes[0]
    assert fig.get_size_inches()[0] == pytest.approx(plotting.COLUMN_WIDTH)
    assert ax.get_yscale() == "log" and len(ax.lines) == 2
    assert "\n" in ax.get_title()                                    # wrapped, not running off the figure
    with Image.open(tmp_path / "loss.png") as png:
        assert png.size[0] <= plotting.COLUMN_WIDTH * plotting.PRINT_DPI + 5


# ---------------------------------------------------------------------------------------------
# Helpers of draw_figures
# ---------------------------------------------------------------------------------------------
def test_nearest_neighbours_finds_the_copy_and_reports_rms_distance():
    pool = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    queries = torch.stack([pool[7], (pool[3] + 0.1).clamp(0, 1)])
    dist, idx = nearest_neighbours(queries, pool, k=2)
    assert idx[:, 0].tolist() == [7, 3]
    assert dist[0, 0] == pytest.approx(0.0, abs=1e-6)
    expected = ((queries[1] - pool[3]) ** 2).mean().sqrt()
    assert dist[1, 0] == pytest.approx(float(expected), rel=1e-5)


def test_grid_png_is_enlarged_by_whole_pixels(tmp_path):
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    path, factor = write_grid_png(images, tmp_path / "g.png", nrow=2, min_width=300)
    width = 2 * (16 + 2) + 2                                          # make_grid's padding of 2
    assert factor == math.ceil(300 / width)
    with Image.open(path) as png:
        assert png.size == (width * factor, width * factor) and round(png.info["dpi"][0]) == 300
        block = np.asarray(png)[2 * factor:3 * factor, 2 * factor:3 * factor]
        assert (block == block[0, 0]).all()                           # one source pixel = one flat block


# ---------------------------------------------------------------------------------------------
# The command on a smoke checkpoint
# ---------------------------------------------------------------------------------------------
def _fake_celeba(folder: Path, count: int) -> Path:
    """count smooth half-size JPEGs 000001.jpg …, no partition file."""
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:109, 0:89] / 109.0
    for i in range(count):
        rng = np.random.default_rng(i)
        channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
        Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)).save(folder / f"{i + 1:06d}.jpg")
    return folder


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke preset (16 px gray, T = 50) trained for 12 steps on the first 30 of 40 fake CelebA images."""
    from ddpm_helpers.train import train
    root = tmp_path_factory.mktemp("data")
    celeba = _fake_celeba(root / "celeba", 40)
    cfg = train_preset("smoke", out_dir=str(root / "run"))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(celeba), max_images=30,
                                                            cache_dir=str(root / "cache")))
    result = train(cfg, device="cpu", progress=False, verbose=False)
    return result.out_dir, celeba


EXPECTED = {"samples": ["samples.png"], "trajectory": ["trajectory.png", "trajectory.pdf"],
            "ddpm_vs_ddim": ["ddpm_vs_ddim.png", "ddpm_vs_ddim.pdf"], "eta": ["eta.png", "eta.pdf"],
            "loss": ["loss.png", "loss.pdf"], "lr_grad_norm": ["lr_grad_norm.png", "lr_grad_norm.pdf"],
            "nearest": ["nearest.png", "nearest.pdf"], "reverse": ["reverse.gif"]}


def test_figures_from_a_smoke_checkpoint_writes_every_file(smoke_run, tmp_path):
    run, _ = smoke_run
    out = tmp_path / "figs"
    result = draw_figures(run, out, prefix="smoke_", quick=True, device="cpu", log=None)
    for key, names in EXPECTED.items():
        assert [p.name for p in result.files[key]] == [f"smoke_{n}" for n in names], key
    for path in out.iterdir():
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            with Image.open(path) as png:
                png.load()
        elif path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF")
    with Image.open(out / "smoke_reverse.gif") as gif:
        assert gif.n_frames == 10 + 1                                   # x_t before each of 10 steps, and x_0
    # the grid holds 16 tiles of the checkpoint's 16 px, enlarged by whole pixels
    factor = result.facts["grid_enlargement"]
    with Image.open(out / "smoke_samples.png") as png:
        assert png.size == ((4 * 18 + 2) * factor,) * 2

    record = json.loads((out / "smoke_figures.json").read_text())
    facts = record["facts"]
    assert facts["preset"] == "smoke" and facts["step"] == 12 and facts["images_seen"] == 12 * 8
    assert facts["image_size"] == 16 and facts["channels"] == 1 and facts["seed"] == 0
    assert facts["sampler"] == "DDIM 10 steps, η = 0" and facts["checkpoint"].endswith("ckpt_00000012.pt")
    for key in ("date", "drawn_on", "parameters", "data", "schedule"):
        assert facts[key], key
    swd = record["swd"]                                                  # 10 held-out images: 31 … 40
    assert swd["samples_vs_heldout"]["n"] == swd["real_vs_real"]["n"] == 10
    assert swd["samples_vs_heldout"]["mean"] > 0 and "31–40" in swd["reference"]
    assert record["skipped"] == {}
    captions = (out / "smoke_captions.md").read_text()
    assert "SWD" in captions and "smoke_nearest.png" in captions and "12 steps" in captions
    assert captions.count("Model: smoke preset") == 1 and "σ_t² = beta" not in captions    # said once, in symbols
    assert captions.startswith(f"# Figures from {run.name}/ckpt_00000012.pt")                # no absolute path
    assert all(c.endswith(facts_sentence(facts)) for c in record["captions"].values())   # the JSON's stand alone

    # redrawing one part keeps the rest of the record
    draw_figures(run, out, prefix="smoke_", quick=True, device="cpu", parts=("reverse",), log=None)
    again = json.loads((out / "smoke_figures.json").read_text())
    assert set(again["files"]) == set(EXPECTED) and again["swd"] == swd
    assert again["facts"]["nearest_rms_samples_median"] == facts["nearest_rms_samples_median"]


def test_without_data_the_data_figures_are_skipped_with_a_reason(smoke_run, tmp_path):
    run, _ = smoke_run
    lines = []
    result = draw_figures(run, tmp_path, quick=True, device="cpu", data=False, parts=("data",), log=lines.append)
    assert set(result.skipped) == {"nearest", "swd"} and result.files == {}
    assert any("skipped nearest" in line for line in lines)
    assert json.loads((tmp_path / "figures.json").read_text())["swd"] is None
    missing = draw_figures(run, tmp_path / "b", quick=True, device="cpu", n=4, data_root=tmp_path / "nowhere",
                           parts=("data",), log=None)
    assert set(missing.skipped) == {"nearest", "swd"} and "not available" in missing.skipped["nearest"]
    with pytest.raises(ValueError, match="unknown figure parts"):
        draw_figures(run, tmp_path, parts=("grid",))


def test_the_figures_command_writes_the_grid_and_facts(smoke_run, tmp_path, capsys):
    from ddpm_helpers.cli import main
    run, _ = smoke_run
    code = main(["figures", "--checkpoint", str(run), "--out", str(tmp_path), "--quick", "--only", "samples",
                 "--no-data", "--seed", "3", "--trained-on", "2 CPU cores", "--quiet"])
    assert code == 0 and "1 figure files" in capsys.readouterr().out
    facts = json.loads((tmp_path / "figures.json").read_text())["facts"]
    assert facts["seed"] == 3 and facts["trained_on"] == "2 CPU cores"
    with Image.open(tmp_path / "samples.png") as png:
        png.load()
    assert main(["figures", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
