"""session.py: what notebooks 04 and 05 call to resume, place the cache, run torchrun, and find the model to sample."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from ddpm_helpers import session
from ddpm_helpers.cache import cache_dir_for, cache_file_name
from ddpm_helpers.checkpoint import checkpoint_step, load_model
from ddpm_helpers.config import train_preset
from ddpm_helpers.generate import weights_fingerprint
from ddpm_helpers.notebook_setup import Run, small_training_config
from ddpm_helpers.runtime import TrainingError


def _run(tmp_path: Path, on_kaggle: bool = False, full: bool = False, n_gpus: int = 0, started: float = 0.0) -> Run:
    out = tmp_path / "working"
    out.mkdir(exist_ok=True)
    return Run(on_kaggle=on_kaggle, on_colab=False, in_ci=not full, device="cpu", n_gpus=n_gpus, full=full,
               celeba=None, celeba_is_sample=False, figures_dir=out / "figures", out_dir=out, repo_root=None,
               started=started)


def _checkpoints(folder: Path, steps, metrics: str = "step,loss\n10,0.9\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in steps:
        (folder / f"ckpt_{s:08d}.pt").write_bytes(b"")
    (folder / "metrics.csv").write_text(metrics)
    return folder


def test_session_time_left_counts_from_the_notebook_start(tmp_path):
    run = _run(tmp_path, started=1000.0)
    assert session.session_time_left(run, 3600.0, now=1600.0) == 3000.0     # 10 min of setup and cache are spent
    assert session.session_time_left(run, 60.0, now=2000.0) == 1.0          # over: train one last moment, checkpoint
    assert session.session_time_left(run, None, now=2000.0) is None


@pytest.mark.parametrize("mount", ["ddpm-04-training", "notebooks/alice/ddpm-04-training"])
def test_resume_source_previous_version_in_both_mount_schemes(tmp_path, mount):
    kin = tmp_path / "input"
    _checkpoints(kin / mount / "celeba64", (1000, 2000), metrics="step,loss\n10,0.9\n2000,0.1\n")
    _checkpoints(kin / mount / "report64", (9000,))                           # another run: never taken
    out = tmp_path / "working" / "celeba64"
    kaggle_run = _run(tmp_path, on_kaggle=True)
    found = session.resume_source(out, kaggle_run, kaggle_input=kin)
    assert found == kin / mount / "celeba64" / "ckpt_00002000.pt"
    assert (out / "metrics.csv").read_text().endswith("2000,0.1\n")          # the loss log continues
    (out / "metrics.csv").write_text("step,loss\n2010,0.09\n")
    assert session.resume_source(out, kaggle_run, kaggle_input=kin) == found
    assert (out / "metrics.csv").read_text() == "step,loss\n2010,0.09\n"     # never overwrites this run's own log
    assert session.resume_source(out, _run(tmp_path), kaggle_input=kin) is None   # off Kaggle: /kaggle/input ignored


def test_resume_source_prefers_this_runs_own_folder(tmp_path):
    kin = tmp_path / "input"
    _checkpoints(kin / "ddpm-04-training" / "celeba64", (5000,))
    out = _checkpoints(tmp_path / "working" / "celeba64", (3000, 4000))
    assert session.resume_source(out, _run(tmp_path, on_kaggle=True), kaggle_input=kin) == out / "ckpt_00004000.pt"
    assert session.resume_source(tmp_path / "working" / "fresh", _run(tmp_path, on_kaggle=True), kin) is None


def _plant_celeba(root: Path, n: int = 3) -> Path:
    from PIL import Image
    images = root / "img_align_celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    for i in range(1, n + 1):
        Image.new("RGB", (178, 218), (40 * i, 90, 60)).save(images / f"{i:06d}.jpg")
    rows = "".join(f"{i:06d}.jpg,0\n" for i in range(1, n + 1))
    (root / "list_eval_partition.csv").write_text("image_id,partition\n" + rows)
    return images


def test_cache_dir_reuses_a_committed_cache_from_the_input_and_never_copies_it(tmp_path):
    from ddpm_helpers.config import DataConfig
    kin = tmp_path / "input"
    images = _plant_celeba(kin / "datasets" / "jessicali9530" / "celeba-dataset")
    data = DataConfig(root=str(images), image_size=16, max_images=2)
    run = _run(tmp_path, on_kaggle=True)
    assert cache_dir_for(_run(tmp_path), data, kin) == run.out_dir / "cache"      # off Kaggle: its own
    assert cache_dir_for(run, data, kin) == run.out_dir / "cache"                 # nothing to reuse yet
    name = cache_file_name(data, kin)
    assert name == "celeba_train_ddim_128_16px_c3_n2.npy"
    previous = kin / "notebooks" / "alice" / "ddpm-04-training" / "cache"
    previous.mkdir(parents=True)
    (previous / name.replace(".npy", ".json")).write_text("{}")
    assert cache_dir_for(run, data, kin) == run.out_dir / "cache"                 # not committed: no array
    (previous / name).write_bytes(b"x")
    assert cache_dir_for(run, data, kin) == previous                              # used in place
    other = dataclasses.replace(data, image_size=32)
    assert cache_dir_for(run, other, kin) == run.out_dir / "cache"                # other settings: build
    assert cache_file_name(DataConfig(root=str(tmp_path / "nothing")), kin) is None


def test_train_command_and_a_failing_job_stop_with_the_log_tail(tmp_path):
    command = session.train_command("celeba64", "/data/img", tmp_path / "run", 2, 41400.7, tmp_path / "ckpt_1.pt",
                                    "/kaggle/working/cache")
    assert command[:5] == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m"]
    flags = dict(zip(command[7::2], command[8::2]))
    assert flags == {"--preset": "celeba64", "--data": "/data/img", "--out": str(tmp_path / "run"), "--amp": "auto",
                     "--time-budget": "41400", "--cache-dir": "/kaggle/working/cache",
                     "--resume": str(tmp_path / "ckpt_1.pt")}
    assert "--resume" not in session.train_command("celeba64", "/d", "/o", 2, None)
    crash = [sys.executable, "-c", "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"]
    log = tmp_path / "run" / "train.log"
    with pytest.raises(TrainingError) as err:
        session.run_command(crash, log, echo=False, tail_lines=5)
    message = str(err.value)
    assert "exit code 3" in message and str(log) in message
    assert "line 99" in message and "line 95" in message and "line 94" not in message   # the tail, not the whole log
    assert log.read_text().count("\n") == 100
    session.run_command([sys.executable, "-c", "print('ok')"], log, echo=False)            # success: no error
    with pytest.raises(TrainingError, match="cannot start"):
        session.run_command(["/nonexistent/torchrun"], log, echo=False)


def test_run_training_picks_torchrun_on_several_gpus_and_counts_the_budget_from_the_start(tmp_path, monkeypatch):
    cfg = train_preset("smoke", out_dir=str(tmp_path / "run"), time_budget=600.0)
    seen = {}
    monkeypatch.setattr(session, "run_command", lambda command, log: seen.update(command=command, log=log))
    run = dataclasses.replace(_run(tmp_path, full=True, n_gpus=2),
                              celeba=type("Location", (), {"image_dir": Path("/celeba")})())
    result = session.run_training(cfg, run, resume=None, preset="smoke")
    assert seen["command"][:4] == ["torchrun", "--standalone", "--nproc_per_node", "2"]
    assert seen["log"] == tmp_path / "run" / "train.log" and result.checkpoint is None
    monkeypatch.setattr(session, "train", lambda c, resume=None, progress=True: seen.update(cfg=c, resume=resume)
                        or type("R", (), {"step": 7, "stop_reason": "done", "checkpoint": None})())
    one_gpu = dataclasses.replace(run, n_gpus=1, started=__import__("time").time() - 100)
    result = session.run_training(cfg, one_gpu, resume=True, preset="smoke", budget_from_start=True)
    assert (result.step, result.stop_reason) == (7, "done") and seen["resume"] is True
    assert 490 < seen["cfg"].time_budget <= 500                              # 600 s minus the 100 s already spent


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A real checkpoint of a 2-step smoke run on the offline faces."""
    from ddpm_helpers.data import offline_faces
    from ddpm_helpers.train import train
    folder = tmp_path_factory.mktemp("trained") / "04_small"
    cfg = train_preset("smoke", out_dir=str(folder), max_steps=2, sample_every=0, log_every=1)
    return train(cfg, images=offline_faces(16, 1), device="cpu", progress=False, verbose=False).checkpoint, cfg


@pytest.mark.parametrize("where", ["same session", "kaggle input"])
def test_find_model_for_sampling_takes_04s_checkpoint(tmp_path, small_checkpoint, where):
    import shutil
    checkpoint, cfg = small_checkpoint
    kin = tmp_path / "input"
    if where == "same session":
        run = _run(tmp_path)
        shutil.copytree(checkpoint.parent, run.out_dir / "04_small")
    else:
        run = _run(tmp_path, on_kaggle=True)
        shutil.copytree(checkpoint.parent, kin / "notebooks" / "alice" / "ddpm-04-training" / "04_small")
    found = session.find_model_for_sampling(run, "04_small", expected=cfg, kaggle_input=kin)
    assert found is not None and not found.trained_here and checkpoint_step(found.checkpoint) == 2
    assert weights_fingerprint(found.model) == weights_fingerprint(load_model(checkpoint)[0])
    assert not found.model.training
    moved = dataclasses.replace(cfg, out_dir="/elsewhere", data=dataclasses.replace(cfg.data, cache_dir="/kaggle/x"))
    assert session.find_model_for_sampling(run, "04_small", expected=moved, kaggle_input=kin) is not None
    other = dataclasses.replace(cfg, lr=cfg.lr * 2, data=dataclasses.replace(cfg.data, image_size=32))
    assert session.setup_differences(load_model(checkpoint)[2], other) == ["data.image_size", "lr"]
    assert session.find_model_for_sampling(run, "04_small", expected=other, kaggle_input=kin) is None


def test_model_for_sampling_trains_only_when_there_is_no_checkpoint(tmp_path, small_checkpoint, monkeypatch, capsys):
    import shutil
    checkpoint, cfg = small_checkpoint
    small = dataclasses.replace(cfg, out_dir=str(tmp_path / "05_small"))
    trained = []

    def fake_train(c, progress=False):                                      # stands in for a 45-s training run
        trained.append(c)
        Path(c.out_dir).mkdir(parents=True)
        return type("R", (), {"checkpoint": Path(shutil.copy(checkpoint, c.out_dir))})()

    monkeypatch.setattr(session, "train", fake_train)
    run = _run(tmp_path, on_kaggle=True)
    found = session.model_for_sampling(run, "04_small", small, kaggle_input=tmp_path / "empty")
    assert found.trained_here and trained == [small] and found.checkpoint.parent == tmp_path / "05_small"
    assert "attached as an input" in capsys.readouterr().out


def test_weights_fingerprint_changes_with_any_weight():
    from ddpm_helpers import UNet
    from ddpm_helpers.config import UNET_PRESETS
    cfg = train_preset("smoke").model
    torch.manual_seed(0)
    a = UNet(cfg)
    torch.manual_seed(0)
    b = UNet(cfg)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert UNET_PRESETS  # the presets exist for the notebooks' configs


def test_small_config_budget_from_the_environment(tmp_path, capsys):
    run = _run(tmp_path)
    assert small_training_config(run, "04_small", environ={}).max_steps == 800
    small = small_training_config(run, "04_small", environ={"DDPM_SMALL_MAX_STEPS": "160"})
    assert (small.max_steps, small.warmup_steps, small.checkpoint_every) == (160, 40, 20)
    assert "160 steps instead of 800" in capsys.readouterr().out
