"""Issue 20: files made by others never run code. Every load path meets a planted pickle payload (an object whose
__reduce__ writes a marker file): the marker never appears and the user gets one line naming the file."""
from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from ddpm_helpers import checkpoint as ckpt_io
from ddpm_helpers import evaluate, session, swd
from ddpm_helpers.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_model
from ddpm_helpers.cli import main
from ddpm_helpers.config import train_preset
from ddpm_helpers.evaluate import MetricsUnavailable, build_extractor
from ddpm_helpers.notebook_setup import Run
from ddpm_helpers.train import train

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm_helpers"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_CHECKPOINT = FIXTURES / "old_checkpoint_fc30687.pt"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import blobs  # noqa: E402  (the fixture's own data recipe)


class Payload:
    """Unpickling this creates the marker file: what a hostile checkpoint would do with os.system instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> Path:
    """A file that looks like a ddpm_helpers checkpoint, with the payload in its weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "config": {}, "model": Payload(marker), "ema": Payload(marker)}, path)
    return path


def one_line_naming(message: str, path: Path) -> bool:
    return "\n" not in message.strip() and str(path) in message


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "the planted payload ran"


def test_no_full_unpickle_anywhere_in_the_package():
    """Every torch.load call in ddpm_helpers/ passes weights_only=True (read with ast, not grep)."""
    calls = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                    and getattr(node.func.value, "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                calls.append((path.name, isinstance(kw.get("weights_only"), ast.Constant)
                              and kw["weights_only"].value is True))
    assert calls and all(ok for _, ok in calls), calls
    assert not any("weights_only=False" in p.read_text() for p in PACKAGE.glob("*.py"))


def test_a_new_checkpoint_holds_only_plain_types_and_the_old_one_loads_weights_only(tmp_path, monkeypatch):
    cfg = train_preset("smoke", out_dir=str(tmp_path / "run"), max_steps=1, checkpoint_every=1, sample_every=0)
    result = train(cfg, images=blobs(), device="cpu", progress=False, verbose=False)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(result.checkpoint) == []
    plain = torch.load(result.checkpoint, weights_only=True)        # no allowlist at all
    assert isinstance(plain["rng"]["numpy"]["keys"], torch.Tensor) and plain["rng"]["numpy"]["keys"].shape == (624,)
    assert plain["rng"]["python"]["state"].shape == (625,)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    model, schedule, old_cfg = load_model(OLD_CHECKPOINT)            # the previous release's file
    ck = load_checkpoint(OLD_CHECKPOINT)
    assert seen == [True, True] and old_cfg.data.image_size == 16 and isinstance(ck["rng"]["numpy"], tuple)


def test_the_rng_state_round_trips_through_tensors():
    import random

    import numpy as np

    from ddpm_helpers.state import rng_state, set_rng_state
    gen = torch.Generator().manual_seed(3)
    np.random.seed(5)
    random.seed(7)
    np.random.standard_normal()                       # has_gauss = 1: the cached Gaussian must come back too
    random.gauss(0, 1)
    saved = rng_state(gen)
    expected = (np.random.standard_normal(3), random.gauss(0, 1), random.random(), torch.rand(2))
    np.random.seed(0), random.seed(0), torch.manual_seed(0)
    set_rng_state(saved, gen)
    again = (np.random.standard_normal(3), random.gauss(0, 1), random.random(), torch.rand(2))
    assert np.array_equal(expected[0], again[0]) and expected[1:3] == again[1:3] and torch.equal(expected[3], again[3])


def test_payload_as_a_run_folders_newest_checkpoint(tmp_path, marker, capsys):
    evil = plant(tmp_path / "run" / "ckpt_00000009.pt", marker)
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "g.png"), "--n", "1",
                 "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert one_line_naming(err, evil) and "could run code" in err
    assert not (tmp_path / "g.png").exists()


def test_payload_given_to_resume(tmp_path, marker):
    evil = plant(tmp_path / "elsewhere" / "ckpt_00000004.pt", marker)
    cfg = train_preset("smoke", out_dir=str(tmp_path / "run"), max_steps=2, sample_every=0)
    with pytest.raises(CheckpointError) as e:
        train(cfg, resume=str(evil), images=blobs(), device="cpu", progress=False, verbose=False)
    assert one_line_naming(str(e.value), evil)


def test_payload_named_by_samples_json(tmp_path, marker, caplog):
    evil = plant(tmp_path / "ckpt_00000001.pt", marker)
    with caplog.at_level(logging.WARNING):
        assert swd._run_data_config({"checkpoint": str(evil)}, None) == (None, None)
    assert len(caplog.records) == 1 and one_line_naming(caplog.records[0].getMessage(), evil)


@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_payload_in_a_kaggle_input_tree(tmp_path, marker, capsys, kind):
    kin = tmp_path / "input" / "datasets" / "mallory" / "great-faces"
    name = "ckpt_00000050.pt" if kind == "checkpoint" else "model.safetensors"
    evil = plant(kin / "04_small" / name, marker)
    out = tmp_path / "working"
    out.mkdir()
    run = Run(on_kaggle=True, on_colab=False, in_ci=True, device="cpu", n_gpus=0, full=False, celeba=None,
              celeba_is_sample=False, figures_dir=out / "figures", out_dir=out, repo_root=None, started=0.0)
    assert session.sampling_candidates(run, "04_small", tmp_path / "input") == [evil]
    assert session.find_model_for_sampling(run, "04_small", kaggle_input=tmp_path / "input") is None
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"cannot use {evil}") and one_line_naming(printed, evil)


def test_payload_as_inception_weights(tmp_path, marker, monkeypatch):
    import torchmetrics.image.fid as tm_fid
    opened = []
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", lambda *a, **k: opened.append(k) or torch.load(
        k["feature_extractor_weights_path"], weights_only=False))   # what torch-fidelity would do with the file
    evil = tmp_path / evaluate.INCEPTION_FILE
    torch.save({"w": Payload(marker)}, evil)
    with pytest.raises(MetricsUnavailable) as e:
        build_extractor("inception", evil)
    assert one_line_naming(str(e.value), evil) and "SHA-256" in str(e.value) and not opened
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))     # a poisoned torch.hub cache
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    evil.rename(tmp_path / "hub" / "checkpoints" / evaluate.INCEPTION_FILE)
    with pytest.raises(MetricsUnavailable, match="torch.hub's cache") as e:
        build_extractor("inception")
    assert "\n" not in str(e.value) and not opened


def test_the_inception_check_accepts_the_known_digest(tmp_path, monkeypatch):
    """The check compares size then SHA-256: a file with the recorded digest passes (the digest is patched here to
    the test file's own, since the 95-MB weights are not in the repository)."""
    good = tmp_path / "w.pth"
    good.write_bytes(b"inception" * 100)
    monkeypatch.setattr(evaluate, "INCEPTION_BYTES", good.stat().st_size)
    monkeypatch.setattr(evaluate, "INCEPTION_SHA256", evaluate.sha256_of(good))
    assert evaluate.check_inception_weights(good) == good
    good.write_bytes(b"inceptioN" * 100)                                       # same size, one byte differs
    with pytest.raises(MetricsUnavailable, match="SHA-256 differs"):
        evaluate.check_inception_weights(good)


def test_a_checkpoint_that_only_a_full_unpickle_could_read_is_refused_in_one_line(tmp_path, marker):
    odd = tmp_path / "ckpt_00000001.pt"
    torch.save({"format": FORMAT, "config": {}, "model": {}, "extra": Path("/x")}, odd)   # a harmless foreign class
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(odd)
    assert one_line_naming(str(e.value), odd) and "PosixPath" in str(e.value)


def test_an_export_in_a_run_folder_is_found_for_sampling_and_refused_for_resume(tmp_path):
    from ddpm_helpers.export import export_model
    cfg = train_preset("smoke", out_dir=str(tmp_path / "run"), max_steps=1, checkpoint_every=1, sample_every=0)
    ck = train(cfg, images=blobs(), device="cpu", progress=False, verbose=False).checkpoint
    exported = export_model(ck, tmp_path / "shared" / "04_small" / "m.safetensors")
    assert ckpt_io.model_step(exported) == 1 and ckpt_io.model_step(ck) == 1
    with pytest.raises(CheckpointError, match="exported model holds only weights") as e:
        train(cfg.__class__(**{**cfg.__dict__, "out_dir": str(tmp_path / "run2")}), resume=str(exported),
              images=blobs(), device="cpu", progress=False, verbose=False)
    assert "\n" not in str(e.value)
    assert json.loads(json.dumps(load_checkpoint(exported)["exported"]))["step"] == 1
