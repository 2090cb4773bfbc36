"""Figures in the page (webfigures), the print rule (plotting), the U-Net diagram and loss by timestep."""
import base64
import io
import json

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from ddpm_helpers import diagram, plotting, webfigures  # noqa: E402
from ddpm_helpers.config import UNET_PRESETS  # noqa: E402
from ddpm_helpers.schedule import NoiseSchedule  # noqa: E402
from ddpm_helpers.unet import UNet  # noqa: E402

BOOKS = webfigures.notebooks()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_reduction_factor_is_the_smallest_whole_factor_that_fits():
    assert webfigures.reduction_factor((800, 10)) == 1
    assert webfigures.reduction_factor((801, 10)) == 2
    assert webfigures.reduction_factor((10, 3014)) == 4          # 3014 / 4 = 753.5 ≤ 800 < 3014 / 3
    assert webfigures.reduction_factor((2400, 900), max_side=800) == 3


def test_web_png_of_a_block_enlarged_grid_keeps_every_pixel():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)             # few colours: the palette step is exact
    small = colours[rng.integers(0, 16, (50, 300))]
    big = small.repeat(4, 0).repeat(4, 1)                         # 1200 × 200, each pixel a 4 × 4 block
    web = np.asarray(Image.open(io.BytesIO(webfigures.web_png(_png(big)))).convert("RGB"))
    assert web.shape == (100, 600, 3)                             # factor 2: long side 600 ≤ 800
    np.testing.assert_array_equal(web, small.repeat(2, 0).repeat(2, 1))


def test_update_embeds_the_web_copy_and_is_idempotent(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(_png(np.full((10, 1000, 3), 7, dtype=np.uint8)))
    nb = {"cells": [{"cell_type": "markdown", "id": "x", "metadata": {}, "source": ["![a](attachment:a.png)\n"]},
                    {"cell_type": "markdown", "id": "y", "metadata": {}, "source": ["text"],
                     "attachments": {"old.png": {"image/png": "AA=="}}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "notebooks" / "01_x.ipynb"
    path.write_text(webfigures.notebook_text(nb), encoding="utf-8")
    assert webfigures.update(tmp_path, check=True)                # stale before
    changed = webfigures.update(tmp_path)
    assert {p.name for p in changed} == {"a.png", "SOURCES.json", "01_x.ipynb"}
    first = path.read_bytes()
    assert webfigures.update(tmp_path) == [] and path.read_bytes() == first
    out = json.loads(first)
    web = (tmp_path / "figures" / "web" / "a.png").read_bytes()
    assert base64.b64decode(out["cells"][0]["attachments"]["a.png"]["image/png"]) == web
    assert "attachments" not in out["cells"][1]                   # a cell that links nothing loses stale ones
    assert Image.open(io.BytesIO(web)).size == (500, 5)


@pytest.mark.parametrize("path", BOOKS, ids=[p.stem for p in BOOKS])
def test_committed_notebook_embeds_its_figures_as_in_figures_web(path):
    nb = webfigures.read_notebook(path)
    names = webfigures.attachment_names(nb)
    embedded = webfigures.embedded_bytes(nb)
    assert len(names) >= 2, f"{path.name} shows fewer than 2 committed figures"
    assert sorted(embedded) == sorted(names)
    web = path.parents[1] / "figures" / "web"
    for name in names:
        assert embedded[name] == (web / name).read_bytes(), f"{name} in {path.name} differs from figures/web: " \
                                                            "run python -m ddpm_helpers.webfigures"
    assert path.stat().st_size < webfigures.NOTEBOOK_MAX_BYTES
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb["cells"]
               if c["cell_type"] == "code")


def test_web_copies_are_not_stale():
    root = webfigures.ROOT
    names = sorted({n for p in BOOKS for n in webfigures.attachment_names(webfigures.read_notebook(p))})
    web = root / "figures" / "web"
    manifest = json.loads((web / "SOURCES.json").read_text(encoding="utf-8"))["files"]
    assert sorted(manifest) == names
    stale = [n for n in names if webfigures.sha256(root / "figures" / n) != manifest[n]["source_sha256"]
             or webfigures.sha256(web / n) != manifest[n]["web_sha256"]]
    assert not stale, f"figures/web copies older than their print files: {stale}; run python -m ddpm_helpers.webfigures"
    for n in names:
        assert max(Image.open(web / n).size) <= webfigures.WEB_MAX_SIDE
    small = min(names, key=lambda n: (root / "figures" / n).stat().st_size)         # one copy remade in full
    assert webfigures.web_copy(root / "figures" / small) == (web / small).read_bytes()


def test_image_rows_are_whole_pixel_blocks_at_print_dpi(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = {"a": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, "b\nc": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1}
    fig = plotting.plot_image_rows(rows, ["x", "y", "z"], scale=1.0)
    png, pdf = plotting.save_figure(fig, tmp_path / "rows", dpi=80)             # a low dpi is raised to the rule
    image = Image.open(png)
    assert round(image.info["dpi"][0]) == plotting.PRINT_DPI and pdf.suffix == ".pdf"
    z = round(plotting.PRINT_DPI / 17)                                           # 16-px tile + 1-px gap
    mosaic = plotting.tile_mosaic(list(rows.values()))                           # (2·17+1, 3·17+1, 3)
    a = np.asarray(image.convert("RGB")).astype(int)
    mh, mw = mosaic.shape[0] * z, mosaic.shape[1] * z
    region = a[a.shape[0] - 4 - mh:a.shape[0] - 4, a.shape[1] - 4 - mw:a.shape[1] - 4]
    expected = np.round(mosaic.repeat(z, 0).repeat(z, 1) * 255).astype(int)
    assert np.abs(region - expected).max() <= 1


@pytest.mark.parametrize("preset,size", [("report", 64), ("small", 32)])
def test_diagram_follows_the_preset(preset, size):
    cfg = UNET_PRESETS[preset]
    blocks = diagram.unet_blocks(cfg, size)
    net = UNet(cfg)
    convs = [net.inc.conv1] + [d.conv.conv1 for d in net.downs] + [u.conv.conv1 for u in net.ups]
    assert [(b.c_in, b.c_out) for b in blocks] == [(c.in_channels, c.out_channels) for c in convs]
    assert [b.size for b in blocks] == [size >> b.level for b in blocks]
    assert sum(b.op == "MaxPool 2×2" for b in blocks) == cfg.depth
    assert sum(b.op.startswith("ConvTranspose") for b in blocks) == cfg.depth
    fig = diagram.draw_unet(cfg, size)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(t == "MaxPool 2×2" for t in texts) == cfg.depth
    assert any("self-attention" in t for t in texts) == cfg.attention
    assert any("Linear → SiLU → Linear" in t for t in texts)
    assert sum(t.startswith("skip: copy") for t in texts) == cfg.depth
    matplotlib.pyplot.close(fig)


def test_loss_by_timestep_of_a_zero_predictor_is_the_mean_square_of_the_fixed_noise():
    schedule = NoiseSchedule.linear(1000)
    x0 = torch.zeros(5, 1, 4, 4)
    centres, losses = plotting.loss_by_timestep(lambda x, t: torch.zeros_like(x), schedule, x0, bins=4, seed=3,
                                                batch=2)
    assert centres == [125.5, 375.5, 625.5, 875.5]                      # band [0, 249] → report's t 1 … 250
    for b, loss in enumerate(losses):
        g = torch.Generator().manual_seed(3 * 100_003 + b)
        torch.randint(250 * b, 250 * (b + 1), (5,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        assert loss == pytest.approx(float((noise ** 2).mean()), rel=1e-6)


# Every committed PNG is checked, the README's main-job figures included.
PRINTED = sorted((webfigures.ROOT / "figures").glob("*.png"))


@pytest.mark.parametrize("path", PRINTED, ids=[p.stem for p in PRINTED])
def test_committed_figure_meets_the_print_rule(path):
    image = Image.open(path)
    assert max(image.size) >= 900, f"{path.name}: {image.size} px, under 900 on the long side"
    assert round(image.info.get("dpi", (0,))[0]) >= plotting.PRINT_DPI, f"{path.name} is not tagged 300 dpi"
    is_grid = path.stem.endswith(("_samples", "training_step_00000500", "training_step_00001500"))
    assert is_grid or path.with_suffix(".pdf").is_file(), f"{path.name} has no PDF"


def test_captions_and_the_figure_index_carry_no_machine_paths():
    folder = webfigures.ROOT / "figures"
    for path in [folder / "README.md", *folder.glob("*_captions.md"), *folder.glob("*.json"),
                 folder / "web" / "SOURCES.json"]:
        text = path.read_text(encoding="utf-8")
        for marker in ("/work/", "/home/", "/tmp/", "/root/", "/Users/", "C:\\"):
            assert marker not in text, f"{path.name} names a machine path ({marker})"
