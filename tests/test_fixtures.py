"""Files written by older code still load: a checkpoint and a sample folder made by main at fc30687/65e4d38
(tests/fixtures/make_fixtures.py says how) are read, resumed and extended by today's code."""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ddpm_helpers.checkpoint import load_checkpoint, load_model
from ddpm_helpers.generate import read_sample_folder, write_samples
from ddpm_helpers.train import train

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_CHECKPOINT = FIXTURES / "old_checkpoint_fc30687.pt"
OLD_SAMPLES = FIXTURES / "old_samples_fc30687"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import STEPS, blobs  # noqa: E402  (the fixture's own data recipe, not a copy of it)


def test_an_old_checkpoint_loads_for_sampling():
    model, schedule, cfg = load_model(OLD_CHECKPOINT)
    ck = load_checkpoint(OLD_CHECKPOINT)
    assert ck["step"] == STEPS and schedule.T == 50 and cfg.data.image_size == 16 and cfg.model.base_channels == 4
    for name, value in model.state_dict().items():           # load_model gives the EMA weights by default
        assert torch.equal(value, ck["ema"][name]), name
    x = torch.randn(1, 1, 16, 16)
    assert model(x, torch.tensor([3])).shape == (1, 1, 16, 16)


@pytest.fixture
def one_thread():
    """The fixture was written with one thread; Adam's first steps (±lr whatever |g|) amplify reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_an_old_checkpoint_resumes_where_a_straight_run_would_be(tmp_path, one_thread):
    """2 old steps + 2 new ones == 4 steps straight with today's code (same data, same seed, one thread)."""
    _, _, cfg = load_model(OLD_CHECKPOINT)
    cfg = dataclasses.replace(cfg, max_steps=2 * STEPS, checkpoint_every=2 * STEPS)
    resumed = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "resumed")), resume=OLD_CHECKPOINT,
                    images=blobs(), device="cpu", progress=False, verbose=False)
    straight = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "straight")), images=blobs(), device="cpu",
                     progress=False, verbose=False)
    assert resumed.step == straight.step == 2 * STEPS
    a, b = load_checkpoint(resumed.checkpoint), load_checkpoint(straight.checkpoint)
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"])
    assert [s["step"] for s in a["optimizer"]["state"].values()] == [s["step"] for s in b["optimizer"]["state"].values()]
    moved = 0
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.allclose(value.float(), b[key][name].float(), rtol=1e-4, atol=1e-6), f"{key}.{name}"
            moved += int(not torch.equal(value, load_checkpoint(OLD_CHECKPOINT)[key][name]))
    assert moved > 0                                          # the two new steps changed the weights


def test_an_old_sample_folder_is_read_and_its_settings_still_match(tmp_path):
    images = read_sample_folder(OLD_SAMPLES)
    assert images.shape == (2, 1, 16, 16) and images.dtype == torch.uint8
    record = json.loads((OLD_SAMPLES / "samples.json").read_text())
    folder = tmp_path / "samples"
    shutil.copytree(OLD_SAMPLES, folder)
    model, schedule, cfg = load_model(OLD_CHECKPOINT)
    report = write_samples(model, schedule, folder, n=3, sampler=record["sampler"], steps=record["steps"],
                           batch_size=record["batch_size"], seed=record["seed"], device="cpu", progress=False,
                           image_size=16, channels=1)
    assert (report.written, report.skipped) == (1, 2)         # same weights fingerprint and settings: kept
    assert json.loads((folder / "samples.json").read_text())["weights"] == record["weights"]
    # regenerating image 0 from scratch gives the old file's pixels
    fresh = write_samples(model, schedule, tmp_path / "fresh", n=2, sampler="ddim", steps=5, batch_size=2, seed=0,
                          device="cpu", progress=False, image_size=16, channels=1)
    assert fresh.written == 2
    assert torch.equal(read_sample_folder(tmp_path / "fresh"), images)
