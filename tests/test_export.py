"""Export tests: a checkpoint's EMA weights as safetensors, read back without unpickling; the shipped model."""
import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from ddpm_helpers.checkpoint import FORMAT, CheckpointError, atomic_save, config_to_dict, load_model
from ddpm_helpers.config import DataConfig, DiffusionConfig, TrainConfig, unet_preset
from ddpm_helpers.diffusion import ddim_sample
from ddpm_helpers.export import FORMAT as EXPORT_FORMAT
from ddpm_helpers.export import (
    export_model,
    load_exported,
    read_exported,
    shipped_model,
    shipped_model_facts,
    shipped_model_path,
)
from ddpm_helpers.unet import UNet

SIZE, T = 16, 20


def _config(tmp_path) -> TrainConfig:
    return TrainConfig(model=unet_preset("tiny", base_channels=8), diffusion=DiffusionConfig(timesteps=T),
                       data=DataConfig(image_size=SIZE, root=str(tmp_path / "secret_data")),
                       out_dir=str(tmp_path / "runs" / "mine"))


def _checkpoint(tmp_path, nan: bool = False):
    torch.manual_seed(0)
    raw = UNet(_config(tmp_path).model).eval()
    ema = copy.deepcopy(raw)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if nan:
            next(ema.parameters()).view(-1)[0] = float("nan")
    ckpt = {"format": FORMAT, "config": config_to_dict(_config(tmp_path)), "model": raw.state_dict(),
            "ema": ema.state_dict(), "step": 7, "elapsed": 30.0}
    return atomic_save(ckpt, tmp_path / "run" / "ckpt_00000007.pt")


def test_export_round_trip_samples_equal_the_checkpoints(tmp_path):
    ckpt = _checkpoint(tmp_path)
    out = export_model(tmp_path / "run", tmp_path / "model.safetensors", facts={"note": "test"})
    m1, s1, c1 = load_model(ckpt)
    m2, s2, c2 = load_exported(out)
    assert c2.model == c1.model and c2.diffusion == c1.diffusion
    noise = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(m1, noise.shape, s1, steps=5, noise=noise, progress=False)
    b = ddim_sample(m2, noise.shape, s2, steps=5, noise=noise, progress=False)
    assert torch.equal(a, b)
    _, _, facts = read_exported(out)
    assert facts["step"] == 7 and facts["weights"] == "ema" and facts["note"] == "test"
    assert facts["images_seen"] == 7 * c1.batch_size
    assert facts["parameters"] == sum(p.numel() for p in m1.parameters())


def test_export_strips_machine_paths(tmp_path):
    out = export_model(_checkpoint(tmp_path), tmp_path / "m.safetensors")
    header = out.read_bytes()[:200_000]
    assert str(tmp_path).encode() not in header
    _, cfg, _ = read_exported(out)
    assert cfg.data.root is None and cfg.out_dir == "mine"


def test_export_refuses_nan_weights_and_a_wrong_suffix(tmp_path):
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        export_model(_checkpoint(tmp_path, nan=True), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(CheckpointError, match="must end in .safetensors"):
        export_model(_checkpoint(tmp_path), tmp_path / "m.pt")


def test_foreign_and_hostile_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled = tmp_path / "evil.safetensors"
    torch.save({"x": Payload()}, pickled)
    with pytest.raises(CheckpointError, match="evil.safetensors"):
        load_exported(pickled)
    assert not marker.exists()
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something else"})
    with pytest.raises(CheckpointError, match="not a ddpm_helpers export"):
        load_exported(foreign)
    with pytest.raises(CheckpointError, match="no such file"):
        load_exported(tmp_path / "missing.safetensors")


def test_the_shipped_model_loads_weights_only_and_samples_faces_shaped_output():
    path = shipped_model_path()
    assert path.stat().st_size < 5_000_000
    model, schedule, cfg = shipped_model()
    facts = shipped_model_facts()
    assert cfg.data.image_size == 32 and cfg.data.channels == 3 and schedule.T == 1000
    assert facts["step"] > 0 and facts["images_seen"] == facts["step"] * cfg.batch_size
    assert "004501" in facts["held_out"]
    assert json.loads(json.dumps(facts)) == facts
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = ddim_sample(model, noise.shape, schedule, steps=4, noise=noise, progress=False)
    assert torch.isfinite(x).all() and x.abs().max() <= 1
    assert x.std() > 0.1          # not a constant image
    meta_format = read_exported(path)[2]
    assert meta_format is not None and EXPORT_FORMAT.startswith("ddpm_helpers/")


def test_the_export_command_round_trips_through_sample(tmp_path, capsys):
    """`export` then `sample` from the .safetensors file writes the same PNGs as `sample` from the checkpoint."""
    from ddpm_helpers.cli import main
    from ddpm_helpers.generate import read_sample_folder
    _checkpoint(tmp_path)
    facts_in = tmp_path / "facts.json"
    facts_in.write_text(json.dumps({"preset": "tiny", "step": 999, "swd": {"step": 3, "value": 1.0}}))
    out = tmp_path / "share" / "model.safetensors"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--facts", str(facts_in)]) == 0
    sidecar = json.loads((tmp_path / "share" / "model.json").read_text())
    assert sidecar["step"] == 7 and sidecar["preset"] == "tiny" and "swd" not in sidecar     # stale SWD dropped
    assert sidecar["made_with"].startswith("python -m ddpm_helpers export --checkpoint")
    for source, folder in ((tmp_path / "run", "a"), (out, "b")):
        assert main(["sample", "--checkpoint", str(source), "--out-dir", str(tmp_path / folder), "--n", "3",
                     "--steps", "4", "--seed", "5", "--device", "cpu", "--quiet"]) == 0
    assert torch.equal(read_sample_folder(tmp_path / "a"), read_sample_folder(tmp_path / "b"))
    assert "model.safetensors" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    (["--out", "{tmp}/model"], "must end in .safetensors"),
    (["--out", "{tmp}/m.safetensors", "--facts", "{tmp}/latin1.json"], "not UTF-8"),
    (["--out", "{tmp}/m.safetensors", "--facts", "{tmp}/list.json"], "must hold a JSON object"),
    (["--out", "{tmp}/m.safetensors", "--checkpoint", "{tmp}/empty"], "no checkpoint"),
])
def test_export_refuses_bad_flags_in_one_line(tmp_path, capsys, args, expected):
    from ddpm_helpers.cli import main
    _checkpoint(tmp_path)
    (tmp_path / "latin1.json").write_bytes('{"data": "Céline"}'.encode("latin-1"))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    words = [w.format(tmp=tmp_path) for w in args]
    if "--checkpoint" not in words:
        words += ["--checkpoint", str(tmp_path / "run")]
    assert main(["export", *words]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*.tmp"))


def test_the_shipped_facts_file_matches_the_shipped_model():
    """ddpm_helpers/models/celeba32.json: the training facts the spec asks for, and the digest of the file beside it."""
    import hashlib
    path = shipped_model_path()
    facts = json.loads(path.with_name("celeba32.json").read_text(encoding="utf-8"))
    for key in ("preset", "step", "images_seen", "training_minutes", "data", "held_out", "command", "made_with"):
        assert facts.get(key) not in (None, ""), key
    assert facts["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    embedded = shipped_model_facts()
    assert {k: facts[k] for k in embedded} == embedded              # the JSON repeats the file's own facts
    assert facts["made_with"].split()[:4] == ["python", "-m", "ddpm_helpers", "export"]
    assert "ddpm_helpers/models/celeba32.safetensors" in facts["made_with"]
    pyproject = (path.parents[2] / "pyproject.toml").read_text()
    assert '"models/*.safetensors", "models/*.json"' in pyproject     # both go into the wheel
