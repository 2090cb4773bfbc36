"""Issue 20, second round of faults: each ends in a correct result or one line naming the flag or file and the fix,
never a traceback or "this is a bug" (exit 1); nothing a user wrote is overwritten or left half-written."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_helpers import generate as generate_module
from ddpm_helpers.celeba import read_partition
from ddpm_helpers.checkpoint import FORMAT, CheckpointError, atomic_save, config_to_dict, load_model
from ddpm_helpers.cli import EXIT_BUG, EXIT_ERROR, main
from ddpm_helpers.config import DataConfig, DiffusionConfig, TrainConfig, train_preset, unet_preset
from ddpm_helpers.files import decode_text
from ddpm_helpers.images import DamagedImageError, png_problem, read_png
from ddpm_helpers.plotting import read_metrics
from ddpm_helpers.train import train
from ddpm_helpers.unet import UNet

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import blobs  # noqa: E402  (the fixture's own data recipe)

SIZE, T = 16, 20


def _checkpoint(tmp_path: Path, nan: bool = False, drop: str = "") -> Path:
    cfg = TrainConfig(model=unet_preset("tiny", base_channels=8), diffusion=DiffusionConfig(timesteps=T),
                      data=DataConfig(image_size=SIZE), out_dir=str(tmp_path / "run"))
    torch.manual_seed(0)
    model = UNet(cfg.model)
    ema = copy.deepcopy(model)
    if nan:
        with torch.no_grad():
            next(ema.parameters()).view(-1)[0] = float("nan")
    ck = {"format": FORMAT, "config": config_to_dict(cfg), "model": model.state_dict(), "ema": ema.state_dict(),
          "step": 3}
    for key in drop.split(","):
        ck.pop(key, None)
    return atomic_save(ck, tmp_path / "run" / "ckpt_00000003.pt")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bug" not in err, err
    return err


# ---- numbers at their edges -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["1764770000123456789", "4294967296", "-1"])
def test_a_clock_seed_is_one_line_naming_the_flag(tmp_path, capsys, seed):
    ck = _checkpoint(tmp_path)
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "g.png"), f"--seed={seed}"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "--seed" in err and "date" in err and not (tmp_path / "g.png").exists()


def test_the_largest_seed_samples(tmp_path):
    ck = _checkpoint(tmp_path)
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "g.png"), "--seed", str(2 ** 32 - 1),
                 "--n", "2", "--steps", "2", "--device", "cpu", "--quiet"]) == 0
    assert (tmp_path / "g.png").is_file()


def test_steps_above_t_and_a_count_of_zero_are_one_line(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    base = ["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "g.png"), "--device", "cpu", "--quiet"]
    assert main([*base, "--steps", str(T + 1)]) == EXIT_ERROR
    assert f"T={T}" in _one_line_error(capsys)
    assert main([*base, "--n", "0"]) == EXIT_ERROR
    assert "--n" in capsys.readouterr().err


# ---- damaged or hostile files -------------------------------------------------------------------------------
def test_nan_weights_are_refused_naming_the_file(tmp_path, capsys):
    ck = _checkpoint(tmp_path, nan=True)
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        load_model(ck)
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "g.png"), "--device", "cpu"]) == 2
    assert str(ck) in _one_line_error(capsys) and not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("drop, named", [("model,ema", "weights"), ("config", "config")])
def test_a_checkpoint_without_a_key_is_one_line(tmp_path, capsys, drop, named):
    ck = _checkpoint(tmp_path, drop=drop)
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / "g.png"), "--device", "cpu"]) == 2
    err = _one_line_error(capsys)
    assert str(ck) in err and named in err


def test_non_finite_samples_are_reported_not_written_black(tmp_path, monkeypatch):
    model = UNet(unet_preset("tiny", base_channels=8)).eval()
    from ddpm_helpers.schedule import NoiseSchedule
    schedule = NoiseSchedule.from_config(DiffusionConfig(timesteps=T))
    monkeypatch.setattr(generate_module, "ddim_sample", lambda *a, **k: torch.full((2, 3, SIZE, SIZE), float("nan")))
    with pytest.raises(generate_module.NonFiniteSamplesError, match="2 of samples 0…1 hold NaN") as e:
        generate_module.write_samples(model, schedule, tmp_path / "s", n=2, steps=2, device="cpu", progress=False,
                                      image_size=SIZE, channels=3)
    assert "\n" not in str(e.value) and not list((tmp_path / "s").glob("*.png"))


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming width × height gray pixels, with a tiny (truncated) IDAT: a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\0" * 100_000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [12_000, 100_000])   # 144 M pixels: PIL only warns, and would decode 144 MB
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    bomb = _bomb_png(tmp_path / "000000.png", side, side)             # under 1 KB on disk
    with pytest.raises(DamagedImageError, match="pixels") as e:
        read_png(bomb)
    assert "\n" not in str(e.value) and str(bomb) in str(e.value)
    problem = png_problem(bomb, (3, SIZE, SIZE))                      # the sample is redone, nothing inflated
    assert problem.startswith(f"is {side}×{side}") or "decompression bomb" in problem
    from ddpm_helpers.celeba import load_image
    with pytest.raises((DamagedImageError, Image.DecompressionBombError)):
        load_image(bomb, "center_140", SIZE, 3)


def test_csv_files_that_are_not_utf8_or_end_in_nul_bytes(tmp_path):
    part = tmp_path / "list_eval_partition.csv"
    part.write_bytes("image_id,partition\n000001.jpg,0\nCéline.jpg,1\n".encode("latin-1"))
    assert read_partition(part) == {"000001.jpg": 0, "C\ufffdline.jpg": 1}
    part.write_bytes("image_id,partition\r\n000001.jpg,2\r\n".encode("utf-16"))      # Notepad's "Unicode"
    assert read_partition(part) == {"000001.jpg": 2}
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(b"step,loss\n1,0.9\n2,0.8\n3,0.\0\0" + b"\0" * 4096)         # a power loss mid-append
    assert read_metrics(metrics) == {"step": [1.0, 2.0], "loss": [0.9, 0.8]}
    assert decode_text(b"a\nb\0c\nd\xff") == "a\nd\ufffd"


def test_a_resume_over_a_nul_tailed_metrics_csv_keeps_its_rows(tmp_path):
    cfg = train_preset("smoke", out_dir=str(tmp_path / "run"), max_steps=2, checkpoint_every=2, sample_every=0,
                       log_every=1)
    train(cfg, images=blobs(), device="cpu", progress=False, verbose=False)
    metrics = tmp_path / "run" / "metrics.csv"
    metrics.write_bytes(metrics.read_bytes() + b"\0" * 512)
    lines = []
    train(cfg.__class__(**{**cfg.__dict__, "max_steps": 3}), resume=True, images=blobs(), device="cpu",
          progress=False, verbose=False)
    assert read_metrics(metrics)["step"] == [1.0, 2.0, 3.0] and b"\0" not in metrics.read_bytes()
    assert not lines


# ---- records a user keeps -----------------------------------------------------------------------------------
def test_a_fresh_run_keeps_an_earlier_runs_metrics_csv(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    earlier = "step,epoch,loss\n100,1,0.05\n200,2,0.04\n"
    (run / "metrics.csv").write_text(earlier)                       # its checkpoints were moved away
    cfg = train_preset("smoke", out_dir=str(run), max_steps=1, checkpoint_every=1, sample_every=0, log_every=1)
    train(cfg, images=blobs(), device="cpu", progress=False, verbose=True)
    kept = list(run.glob("metrics.before-*.csv"))
    assert len(kept) == 1 and kept[0].read_text() == earlier
    assert read_metrics(run / "metrics.csv")["step"] == [1.0]
    assert f"kept as {kept[0].name}" in capsys.readouterr().out


# ---- paths that alias ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["grid", "grid.jpg", "folder"])
def test_a_grid_path_without_png_or_that_is_a_folder(tmp_path, capsys, out):
    ck = _checkpoint(tmp_path)
    (tmp_path / "folder").mkdir()
    assert main(["sample", "--checkpoint", str(ck), "--out", str(tmp_path / out), "--device", "cpu"]) == 2
    err = _one_line_error(capsys)
    assert "--out" in err and ".png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "run"]


def test_train_out_inside_the_data_folder_is_refused(tmp_path, capsys):
    data = tmp_path / "celeba"
    data.mkdir()
    assert main(["train", "--preset", "smoke", "--data", str(data), "--out", str(data / "run")]) == 2
    assert "inside the data folder" in _one_line_error(capsys) and not (data / "run").exists()


@pytest.mark.parametrize("where", ["inside", "replacing"])
def test_kaggle_out_never_touches_the_package_source(tmp_path, capsys, where):
    repo = tmp_path / ("ddpm-helpers-code" if where == "replacing" else "repo")
    (repo / "ddpm_helpers").mkdir(parents=True)
    (repo / "ddpm_helpers" / "__init__.py").write_text("# the user's source\n")
    (repo / "notebooks").mkdir()
    (repo / "notebooks" / "01_x.ipynb").write_text("{}")
    out = repo / "ddpm_helpers" / "build" if where == "inside" else tmp_path
    assert main(["kaggle", "--user", "me", "--repo-root", str(repo), "--notebooks", str(repo / "notebooks"),
                 "--out", str(out)]) == 2
    assert "package's own source" in _one_line_error(capsys)
    assert (repo / "ddpm_helpers" / "__init__.py").read_text() == "# the user's source\n"
    assert sorted(p.name for p in (repo / "ddpm_helpers").iterdir()) == ["__init__.py"]


# ---- interrupts at every phase ------------------------------------------------------------------------------
CTRL_C_WHILE_WORKERS_START = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from PIL import Image
    from ddpm_helpers import cache
    folder, target = sys.argv[1], sys.argv[2]
    paths = []
    for i in range(64):
        p = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(np.full((40, 40, 3), i * 3, np.uint8)).save(p)
        paths.append(p)
    starting = cache._worker_ignores_sigint
    def ctrl_c_then_start():                 # one Ctrl-C reaches the terminal's whole group as the first worker starts
        try:
            os.close(os.open(os.path.join(folder, "sent"), os.O_CREAT | os.O_EXCL))
            os.killpg(0, signal.SIGINT)
        except FileExistsError:
            pass
        starting()
    cache._worker_ignores_sigint = ctrl_c_then_start
    try:
        cache.build_cache(paths, target, "center_140", 16, 3, workers=2, progress=False)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    print("finished")
""")


@pytest.mark.skipif(not hasattr(os, "killpg") or not sys.platform.startswith("linux"), reason="POSIX fork + signals")
def test_ctrl_c_while_the_cache_workers_start(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    target = tmp_path / "cache" / "c.npy"
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_WHILE_WORKERS_START)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(images), str(target)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip() == "interrupted"
    time.sleep(0.5)
    orphans = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split()
    for pid in orphans:                                    # a worker that outlived its parent: stop it, then fail
        os.kill(int(pid), signal.SIGKILL)
    assert not orphans
    left = sorted(p.name for p in target.parent.glob("*")) if target.parent.exists() else []
    assert left in ([], ["c.lock"])                        # the builders' lock file at most: no .tmp.npy, no cache


def test_cli_exit_codes_are_distinct():
    assert EXIT_BUG != EXIT_ERROR and signal.SIGINT
    assert np.iinfo(np.uint32).max == 2 ** 32 - 1


def test_a_kid_subset_of_one_is_refused_not_nan():
    from ddpm_helpers.errors import ConfigError
    from ddpm_helpers.evaluate import kernel_distance
    features = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="--kid-subset-size 1: .* at least 2") as e:
        kernel_distance(features, features + 1, subset_size=1, subsets=3)
    assert "\n" not in str(e.value)
    mean, std = kernel_distance(features, features + 1, subset_size=2, subsets=3)
    assert np.isfinite(mean) and np.isfinite(std)


def test_export_to_a_folder_is_one_line(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    (tmp_path / "d.safetensors").mkdir()
    assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "is a folder" in _one_line_error(capsys) and not list(tmp_path.glob(".*.tmp"))
