"""Training tests: exact resume, crash safety, time budget, NaN guard, incompatible checkpoints, DDP."""
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_helpers import checkpoint as ck
from ddpm_helpers.config import parse_duration, train_preset
from ddpm_helpers.files import atomic_open, atomic_save
from ddpm_helpers.optim import EMA, ema_decay_at
from ddpm_helpers.runtime import TrainingError
from ddpm_helpers.train import train

REPO = Path(__file__).resolve().parents[1]


def _images(n=40, size=16, channels=1, seed=0):
    """Smooth random blobs as uint8 (N, H, W, C): the tests make their own data."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs = [np.sin(6 * xx * g.uniform(0.5, 2) + g.uniform(0, 6)) * np.cos(5 * yy * g.uniform(0.5, 2))
            for _ in range(n)]
    arr = ((np.stack(imgs) + 1) * 127.5).astype(np.uint8)
    return np.repeat(arr[..., None], channels, axis=-1)


def _cfg(tmp_path, name="run", **kw):
    return train_preset("smoke", out_dir=str(tmp_path / name), **kw)


def _state(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def test_resume_continues_exactly(tmp_path):
    """N steps straight == N/2 steps + resume + N/2 steps: same weights, EMA and optimizer state, bit for bit.
    The split falls mid-epoch (5 batches per epoch here) and the run crosses epoch boundaries."""
    images = _images()
    straight = train(_cfg(tmp_path, "a", max_steps=12), images=images, progress=False, verbose=False)
    half = train(_cfg(tmp_path, "b", max_steps=7), images=images, progress=False, verbose=False)
    assert half.step == 7
    resumed = train(_cfg(tmp_path, "b", max_steps=12), images=images, resume=True, progress=False, verbose=False)
    assert resumed.step == 12
    a = ck.load_checkpoint(straight.checkpoint)
    b = ck.load_checkpoint(resumed.checkpoint)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"])
    exp_avg_a = [s["exp_avg"] for s in a["optimizer"]["state"].values()]
    exp_avg_b = [s["exp_avg"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(exp_avg_a, exp_avg_b))
    # the metrics log keeps one row per logged step, no duplicates after the resume
    steps = [int(l.split(",")[0]) for l in (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps))


def test_outputs_are_written_and_checkpoint_is_loadable_for_sampling(tmp_path):
    r = train(_cfg(tmp_path), images=_images(), progress=False, verbose=False)
    out = tmp_path / "run"
    for name in ("metrics.csv", "loss_curve.png", "samples/latest.png", "ckpt_00000012.pt"):
        assert (out / name).exists(), name
    assert len(ck.list_checkpoints(out)) <= 3
    model, schedule, cfg = ck.load_model(r.checkpoint)
    assert schedule.T == 50 and cfg.data.image_size == 16
    for name, value in model.state_dict().items():
        assert torch.equal(value, r.model.state_dict()[name])


def test_fresh_run_refuses_to_overwrite_and_incompatible_checkpoint_is_refused(tmp_path):
    images = _images()
    train(_cfg(tmp_path, max_steps=2), images=images, progress=False, verbose=False)
    with pytest.raises(ck.CheckpointError, match="already holds checkpoints"):
        train(_cfg(tmp_path, max_steps=4), images=images, progress=False, verbose=False)
    other = _cfg(tmp_path, max_steps=4)
    other = dataclasses.replace(other, model=dataclasses.replace(other.model, base_channels=16))
    with pytest.raises(ck.CheckpointError, match=r"model\.base_channels: checkpoint has 8, this run has 16"):
        train(other, images=images, resume=True, progress=False, verbose=False)


def test_time_budget_stops_and_saves(tmp_path):
    r = train(_cfg(tmp_path, max_steps=10_000, time_budget=0.5), images=_images(), progress=False, verbose=False)
    assert r.stop_reason == "time budget"
    assert r.step < 10_000                                   # stopped by the budget, long before max_steps
    assert r.checkpoint is not None and r.checkpoint.exists()
    assert ck.load_checkpoint(r.checkpoint)["step"] == r.step


def test_nan_loss_is_skipped_and_counted_then_stops(tmp_path, monkeypatch):
    import ddpm_helpers.diffusion as T  # the Trainer's loss is diffusion.training_loss, which calls q_sample
    real = T.q_sample
    calls = {"n": 0}

    def sometimes_nan(x0, t, noise, schedule):
        calls["n"] += 1
        out = real(x0, t, noise, schedule)
        return out * float("nan") if calls["n"] in (3, 4) else out

    monkeypatch.setattr(T, "q_sample", sometimes_nan)
    r = train(_cfg(tmp_path, "a", max_steps=6), images=_images(), progress=False, verbose=False)
    assert r.bad_steps == 2 and r.step == 6
    assert all(torch.isfinite(v).all() for v in r.model.state_dict().values() if v.is_floating_point())

    monkeypatch.setattr(T, "q_sample", lambda *a: real(*a) * float("nan"))
    with pytest.raises(TrainingError, match="non-finite losses in a row"):
        train(_cfg(tmp_path, "b", max_steps=50, max_bad_steps=5), images=_images(), progress=False, verbose=False)


def test_ema_warmup_and_update_rule():
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(10_000, 0.999, True) == 0.999
    assert ema_decay_at(0, 0.9, False) == 0.9
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5, warmup=False)
    before = [p.detach().clone() for p in ema.module.parameters()]
    mean_before = ema.module[1].running_mean.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 2))              # moves the BatchNorm running statistics (buffers)
    ema.update_parameters(model)
    for e, b, m in zip(ema.module.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.5 * b + 0.5 * m)     # θ_ema ← d θ_ema + (1 − d) θ
    assert ema.module[1].num_batches_tracked.item() == model[1].num_batches_tracked.item()
    torch.testing.assert_close(ema.module[1].running_mean, 0.5 * mean_before + 0.5 * model[1].running_mean)


def test_parse_duration():
    assert parse_duration("11h30m") == 41400
    assert parse_duration("90m") == 5400
    assert parse_duration("45") == 45
    assert parse_duration(None) is None
    with pytest.raises(ValueError):
        parse_duration("soon")


def _cli(args, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "CELEBA_DIR"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "ddpm_helpers", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_works(tmp_path):
    out = tmp_path / "run"
    proc = _cli(["--preset", "smoke", "--out", str(out), "--max-steps", "100000", "--checkpoint-every", "2",
                 "--sample-every", "0", "--no-progress"], tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and len(ck.list_checkpoints(out)) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.list_checkpoints(out), proc.stdout.read()
    latest = ck.latest_checkpoint(out)
    step = ck.load_checkpoint(latest)["step"]            # readable: written atomically
    assert ck.latest_checkpoint(out) == latest            # a leftover .tmp file, if any, is never picked
    done = _cli(["--preset", "smoke", "--out", str(out), "--resume", "--max-steps", str(step + 4), "--no-progress"],
                tmp_path)
    text, _ = done.communicate(timeout=120)
    assert done.returncode == 0, text
    assert f"resumed from {latest}" in text
    assert ck.load_checkpoint(ck.latest_checkpoint(out))["step"] == step + 4


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = _cli(["--preset", "smoke", "--out", str(out), "--max-steps", "100000", "--checkpoint-every", "100000",
                 "--sample-every", "0", "--no-progress"], tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.2)
    from ddpm_helpers.runfolder import RunFolderBusyError
    with pytest.raises(RunFolderBusyError, match=f"pid {proc.pid}"):     # a second training on the folder refuses
        train(train_preset("smoke", out_dir=str(out)), images=_images(), resume=True, progress=False, verbose=False)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text
    assert "signal SIGTERM" in text
    assert ck.list_checkpoints(out)
    assert not (out / "train.lock").exists()                            # released on SIGTERM


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, images):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = train_preset("smoke", out_dir=str(Path(out) / "run"), max_steps=4, batch_size=8)
    r = train(cfg, images=images, device="cpu", progress=False, verbose=False)
    torch.save({k: v for k, v in r.model.state_dict().items()}, Path(out) / f"ema_rank{rank}.pt")


def test_two_processes_with_gloo_end_with_identical_weights(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), _images()), nprocs=2, join=True)
    a = torch.load(tmp_path / "ema_rank0.pt")
    b = torch.load(tmp_path / "ema_rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = ck.load_checkpoint(ck.latest_checkpoint(tmp_path / "run"))
    assert saved["step"] == 4 and len(saved["per_rank"]) == 2


def test_auto_amp_is_fp16_on_a_t4_and_bf16_from_ampere(monkeypatch):
    """A T4 (compute capability 7.5) reports bf16 support through emulation; it must get fp16 + GradScaler."""
    from ddpm_helpers.train import resolve_amp
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_amp("auto", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_amp("auto", cuda) is torch.bfloat16
    assert resolve_amp("off", cuda) is None
    assert resolve_amp("auto", torch.device("cpu")) is None


def test_atomic_open_keeps_the_old_file_when_a_write_fails(tmp_path):
    target = tmp_path / "ckpt_00000001.pt"
    atomic_save({"step": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("killed mid-write")
    assert torch.load(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [target.name]      # no temporary file left behind


def _ddp_nan_worker(rank, world, port, out, images):
    """Rank 1 alone sees a non-finite loss at its 3rd step: both ranks must skip that step together."""
    import ddpm_helpers.diffusion as T
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    real, calls = T.q_sample, {"n": 0}

    def nan_on_rank1(x0, t, noise, schedule):
        calls["n"] += 1
        out_ = real(x0, t, noise, schedule)
        return out_ * float("nan") if (rank == 1 and calls["n"] == 3) else out_

    T.q_sample = nan_on_rank1
    cfg = train_preset("smoke", out_dir=str(Path(out) / "run"), max_steps=12, batch_size=8)
    r = train(cfg, images=images, device="cpu", progress=False, verbose=False)
    torch.save({"step": r.step, "bad": r.bad_steps, "ema": r.model.state_dict()}, Path(out) / f"rank{rank}.pt")


def test_a_nan_on_one_rank_makes_every_rank_skip(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_nan_worker, args=(2, _free_port(), str(tmp_path), _images()), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert (a["step"], a["bad"]) == (b["step"], b["bad"]) == (12, 1)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_resume_with_another_batch_size_continues_at_the_same_image_count(tmp_path, capsys):
    images = _images()
    first = train(_cfg(tmp_path, max_steps=3, batch_size=8), images=images, progress=False, verbose=False)
    assert ck.load_checkpoint(first.checkpoint)["batch_in_epoch"] == 3          # 24 images into epoch 0
    r = train(_cfg(tmp_path, max_steps=5, batch_size=4), images=images, resume=True, progress=False)
    captured = capsys.readouterr()
    assert "batch size 8" in captured.out + captured.err and "not bit for bit" in captured.out + captured.err
    saved = ck.load_checkpoint(r.checkpoint)
    assert r.step == 5 and (saved["epoch"], saved["batch_in_epoch"]) == (0, 6 + 2)   # 24 / 4 = 6, then 2 more


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    images = _images()
    train(_cfg(tmp_path, max_steps=12, checkpoint_every=4, keep_checkpoints=5), images=images, progress=False,
          verbose=False)
    out = tmp_path / "run"
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(out)] == [4, 8, 12]
    train(_cfg(tmp_path, max_steps=6, checkpoint_every=4, keep_checkpoints=5), images=images,
          resume=out / "ckpt_00000004.pt", progress=False, verbose=False)
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(out)] == [4, 6]
    assert sorted(p.name for p in out.glob("*.abandoned")) == ["ckpt_00000008.pt.abandoned",
                                                                 "ckpt_00000012.pt.abandoned"]


# ---------------------------------------------------------------------------------------------
# The run folder is owned; nothing is lost
# ---------------------------------------------------------------------------------------------
def _write_lock(out: Path, pid: int, host: str) -> Path:
    import json
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.lock").write_text(json.dumps({"pid": pid, "host": host, "started": "earlier"}))
    return out / "train.lock"


def test_a_locked_run_folder_refuses_a_second_training_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    from ddpm_helpers.runfolder import RunFolderBusyError
    images, out = _images(), tmp_path / "run"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(out, live.pid, socket.gethostname())
        with pytest.raises(RunFolderBusyError, match=rf"in use by another training: pid {live.pid} on "
                                                      rf"{socket.gethostname()}"):
            train(_cfg(tmp_path, max_steps=2), images=images, progress=False, verbose=False)
        assert not ck.list_checkpoints(out) and not (out / "metrics.csv").exists()
    finally:
        live.kill()
        live.wait()
    _write_lock(out, live.pid, socket.gethostname())          # its process is gone now: a stale lock
    r = train(_cfg(tmp_path, max_steps=2), images=images, progress=False)
    assert r.step == 2 and "no longer running: taking it over" in capsys.readouterr().out
    assert not (out / "train.lock").exists()                   # released at the end
    _write_lock(out, os.getpid(), socket.gethostname())       # our own pid, reused after a container restart
    assert train(_cfg(tmp_path, max_steps=3), images=images, resume=True, progress=False, verbose=False).step == 3
    _write_lock(out, 1, "another-machine")                    # cannot be checked from here: never taken over
    with pytest.raises(RunFolderBusyError, match="another-machine.*delete"):
        train(_cfg(tmp_path, max_steps=4), images=images, resume=True, progress=False, verbose=False)


def test_the_lock_is_released_when_training_fails(tmp_path):
    images = _images()
    train(_cfg(tmp_path, max_steps=2), images=images, progress=False, verbose=False)
    with pytest.raises(ck.CheckpointError, match="already holds checkpoints"):
        train(_cfg(tmp_path, max_steps=4), images=images, progress=False, verbose=False)
    assert not (tmp_path / "run" / "train.lock").exists()


def test_an_unwritable_run_folder_is_a_clear_error(tmp_path):
    from ddpm_helpers.runfolder import RunFolderNotWritableError
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunFolderNotWritableError, match=r"cannot write to the run folder .*file.*Choose a writable"):
        train(train_preset("smoke", out_dir=str(tmp_path / "file" / "run")), images=_images(), progress=False,
              verbose=False)


def test_an_incompatible_or_other_data_resume_moves_nothing(tmp_path):
    """The old code renamed the newer checkpoints aside and only then refused: the next --resume lost them."""
    images = _images()
    train(_cfg(tmp_path, max_steps=12, checkpoint_every=4, keep_checkpoints=5), images=images, progress=False,
          verbose=False)
    out = tmp_path / "run"
    before = sorted(p.name for p in out.iterdir())
    other = _cfg(tmp_path, max_steps=6, checkpoint_every=4, keep_checkpoints=5)
    other = dataclasses.replace(other, model=dataclasses.replace(other.model, base_channels=16))
    with pytest.raises(ck.CheckpointError, match="incompatible config"):
        train(other, images=images, resume=out / "ckpt_00000004.pt", progress=False, verbose=False)
    with pytest.raises(ck.DataChangedError):
        train(_cfg(tmp_path, max_steps=6), images=_images(seed=1), resume=out / "ckpt_00000004.pt", progress=False,
              verbose=False)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [ck.checkpoint_step(p) for p in ck.list_checkpoints(out)] == [4, 8, 12]


def test_resuming_on_other_data_refuses_unless_allowed(tmp_path, capsys):
    train(_cfg(tmp_path, max_steps=2), images=_images(), progress=False, verbose=False)
    saved = ck.load_checkpoint(ck.latest_checkpoint(tmp_path / "run"))["data_identity"]
    assert saved["kind"] == "given" and saved["count"] == 40 and saved["image_size"] == 16 and saved["channels"] == 1
    with pytest.raises(ck.DataChangedError, match=r"other data.*\n  count: checkpoint has 40, this run has 32"
                                                 r"\n  fingerprint: (?s:.*)--allow-data-change") as e:
        train(_cfg(tmp_path, max_steps=4), images=_images(n=32), resume=True, progress=False, verbose=False)
    assert "kind" not in str(e.value).split("\n")[1]           # only what differs is listed
    r = train(_cfg(tmp_path, max_steps=4), images=_images(n=32), resume=True, progress=False, allow_data_change=True)
    assert r.step == 4 and "resuming on other data (allow_data_change)" in capsys.readouterr().out


def test_a_checkpoint_without_data_identity_still_resumes_and_loads(tmp_path, capsys):
    """Checkpoints written before data identities were recorded (e.g. runs/fig32): warn once, carry on."""
    images = _images()
    first = train(_cfg(tmp_path, max_steps=2), images=images, progress=False, verbose=False)
    old = ck.load_checkpoint(first.checkpoint)
    del old["data_identity"]
    torch.save(old, first.checkpoint)
    model, _, _ = ck.load_model(first.checkpoint)
    assert sum(p.numel() for p in model.parameters()) == old["parameters"]
    r = train(_cfg(tmp_path, max_steps=4), images=images, resume=True, progress=False)
    out = capsys.readouterr().out
    assert r.step == 4 and out.count("records no data identity") == 1


def test_temp_files_of_killed_writes_are_removed_at_start(tmp_path, capsys):
    images = _images()
    train(_cfg(tmp_path, max_steps=2), images=images, progress=False, verbose=False)
    out = tmp_path / "run"
    leftovers = [out / ".ckpt_00000004.pt.k2j_9xq1.tmp", out / "samples" / ".latest.png.abcd1234.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file" * 1000)
    (out / "notes.tmp").write_text("the user's file")           # not ours: kept
    assert ck.leftover_temp_files(out) == [leftovers[0]]
    train(_cfg(tmp_path, max_steps=4), images=images, resume=True, progress=False)
    assert not any(p.exists() for p in leftovers) and (out / "notes.tmp").exists()
    assert "removed 1 temporary file(s) of interrupted writes" in capsys.readouterr().out


def test_outputs_are_created_with_the_users_umask(tmp_path):
    """mkstemp creates files 0600; outputs must get 0666 minus the umask, like any other file."""
    old = os.umask(0o022)
    try:
        r = train(_cfg(tmp_path, max_steps=2), images=_images(), progress=False, verbose=False)
        for path in (r.checkpoint, tmp_path / "run" / "metrics.csv"):
            assert path.stat().st_mode & 0o777 == 0o644, path
        os.umask(0o002)
        atomic_save({"step": 1}, tmp_path / "x.pt")
        assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_a_checkpoint_that_cannot_be_written_says_so_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno
    atomic_save({"step": 4}, tmp_path / "ckpt_00000004.pt")

    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "atomic_save", full_disk)
    with pytest.raises(ck.CheckpointWriteError, match=r"ckpt_00000008.pt was not written: No space left on device "
                                                      r"\(\d+\.\d\d GiB free on .*\); the previous checkpoint, "
                                                      r".*ckpt_00000004.pt, is intact"):
        ck.save_checkpoint_file({"step": 8}, tmp_path / "ckpt_00000008.pt")


def test_sigterm_outside_the_loop_still_releases_the_lock(tmp_path):
    """SIGTERM during setup (a cache being built, say) exits through Python, so the lock is released."""
    from ddpm_helpers.runfolder import RunFolderLock
    from ddpm_helpers.runtime import sigterm_exits
    with pytest.raises(SystemExit) as e:
        with sigterm_exits(), RunFolderLock(tmp_path / "run") as lock:
            assert lock.path.exists()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert e.value.code == 128 + signal.SIGTERM and not (tmp_path / "run" / "train.lock").exists()


# ---------------------------------------------------------------------------------------------
# The progress bar counts to whichever limit ends the run first
# ---------------------------------------------------------------------------------------------
def test_expected_stop_is_the_earlier_limit():
    from ddpm_helpers.train import expected_stop
    # the main job: 6,000 steps or 570 s; 1,260 steps done at 2.2 steps/s with 300 s left → 1,260 + 660 by time
    assert expected_stop(1260, 6000, 2.2, 300.0) == (1920, "time budget")
    assert expected_stop(1260, 6000, 20.0, 300.0) == (6000, "steps")          # fast enough: the steps end it
    assert expected_stop(10, None, 4.0, 2.5) == (20, "time budget")           # no step limit
    assert expected_stop(10, 500, 4.0, None) == (500, "steps")                # no budget
    assert expected_stop(10, 500, 0.0, 60.0) == (500, "steps")                # rate not measured yet
    assert expected_stop(10, 500, 4.0, -5.0) == (10, "time budget")           # budget already spent


def test_progress_bar_follows_the_time_budget(monkeypatch):
    """With a budget that ends the run first, the bar's total is the step the budget stops at, and it says so."""
    from types import SimpleNamespace

    from tqdm import tqdm

    from ddpm_helpers.train import Trainer
    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "time", lambda: clock["now"])
    trainer = SimpleNamespace(cfg=SimpleNamespace(time_budget=570.0), total_steps=6000, step=0, _bar_from=0,
                              t_start=1000.0, started=990.0)                 # 10 s of data preparation before
    bar = tqdm(total=6000, file=open(os.devnull, "w"), disable=False)
    trainer.step, clock["now"] = 20, 1010.0                                   # 2 steps/s, 550 s of 570 left
    Trainer._retarget(trainer, bar)
    assert bar.total == 20 + 2 * 550 and bar.desc.startswith("train (ends by time budget)")
    trainer.cfg.time_budget = 1e6                                             # a budget the steps beat
    trainer.step, clock["now"] = 30, 1015.0
    Trainer._retarget(trainer, bar)
    assert bar.total == 6000 and "budget" not in bar.desc
    bar.close()


def test_a_run_on_all_100_offline_faces_is_refused_with_its_own_advice():
    """Runs made before 20 offline faces were held out trained on all 100: resuming names that and the two ways on."""
    old = {"kind": "offline", "count": 100, "fingerprint": "a", "image_size": 32, "channels": 1}
    new = {**old, "count": 80, "fingerprint": "b", "heldout": 20}
    with pytest.raises(ck.DataChangedError, match="before 20 of the offline faces were held out"):
        ck.check_same_data({"data_identity": old}, new)
    with pytest.raises(ck.DataChangedError, match="Point --data"):               # other data: the usual advice
        ck.check_same_data({"data_identity": {**old, "kind": "celeba"}}, {**new, "kind": "celeba"})
