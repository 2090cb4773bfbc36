"""The command line as a user meets it: one table of bad inputs and faults across every subcommand.

Each row runs ``cli.main(argv)`` in-process and checks the exit code, that the message names the flag or file,
that no traceback is printed, and that nothing was lost: the run trained before still loads with its
checkpoints and metrics.csv untouched, and a refused command wrote nothing. Two end-to-end cases run the real
``python -m ddpm_helpers`` in a subprocess.
"""
import errno
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torchvision

from ddpm_helpers import cli
from ddpm_helpers.checkpoint import latest_checkpoint, load_model
from ddpm_helpers.config import parse_duration
from ddpm_helpers.generate import sample_path

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--device", "cpu", "--no-progress"]


def _run(argv, capsys):
    """(exit code, everything printed) of cli.main(argv)."""
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def _snapshot(folder: Path) -> dict:
    """SHA-256 of every file under folder but the run lock (the table holds it in one row)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "train.lock"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step smoke run (16 px gray, T = 50) on 24 small RGB PNGs, trained through the command line once."""
    top = tmp_path_factory.mktemp("trained")
    data = top / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(24):
        torchvision.io.write_png((torch.rand(3, 40, 32, generator=g) * 255).to(torch.uint8), str(data / f"{i:06d}.png"))
    code = cli.main(["train", *SMOKE, "--data", str(data), "--out", str(top / "run"), "--cache-dir", str(top / "cache"),
                     "--max-steps", "2"])
    assert code == 0 and latest_checkpoint(top / "run") is not None
    return top


@pytest.fixture
def paths(trained, tmp_path):
    """Placeholders of the table: a copy of the trained run, its data and cache, a sample folder, a fresh --out."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    samples = tmp_path / "samples"
    assert cli.main(["sample", "--checkpoint", str(run), "--n", "4", "--steps", "3", "--out-dir", str(samples),
                     "--device", "cpu", "--quiet"]) == 0
    return {"run": run, "data": trained / "data", "cache": trained / "cache", "samples": samples,
            "out": tmp_path / "out", "tmp": tmp_path}


# ---------------------------------------------------------------------------------------------
# Faults, set up before the command runs
# ---------------------------------------------------------------------------------------------
def _disk_full(monkeypatch, p):
    """Every atomic write (checkpoints, metrics.csv, PNGs, JSON) fsyncs before its rename: make that fail."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)


def _torch_writer_fails(monkeypatch, p):
    """A disk that fills up inside torch.save: its zip writer raises a RuntimeError, not an OSError."""
    import collections

    def save(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 295744 vs 295632")
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: collections.namedtuple("u", "total used free")(1, 1, 0))


def _disk_full_for_the_cache(monkeypatch, p):
    """The cache's array is reserved with posix_fallocate before it is written (a full sparse memmap is a SIGBUS)."""
    def fallocate(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", fallocate, raising=False)


def _read_only(monkeypatch, p):
    """A read-only file system, as the atomic writes and the run lock meet it (chmod cannot stop root)."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir", args[0] if args else "")))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a: refuse(path) if flags & os.O_CREAT else
                        real_open(path, flags, *a))


def _permission_denied(monkeypatch, p):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs.get("dir", "")))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _damaged_png(monkeypatch, p):
    png = sample_path(p["samples"], 2)
    png.write_bytes(png.read_bytes()[:40])


def _wrong_size_png(monkeypatch, p):
    torchvision.io.write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), str(sample_path(p["samples"], 1)))


def _not_inception(monkeypatch, p):
    torch.save({"weights": torch.zeros(3)}, p["tmp"] / "wrong.pth")


def _damaged_checkpoint(monkeypatch, p):
    (p["tmp"] / "broken.pt").write_bytes(latest_checkpoint(p["run"]).read_bytes()[:1000])


def _symlink_loop(monkeypatch, p):
    (p["tmp"] / "loop").symlink_to(p["tmp"] / "loop")


def _empty_folder(monkeypatch, p):
    (p["tmp"] / "empty").mkdir()


def _no_kaggle_user(monkeypatch, p):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)


def _lock_held(monkeypatch, p):
    """The run's lock, as another live training on this machine leaves it (our parent process stands in)."""
    import json
    import socket

    from ddpm_helpers.runfolder import LOCK_NAME
    (p["run"] / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "started": "a minute ago"}))


SAMPLE = ["sample", "--checkpoint", "{run}", "--device", "cpu", "--quiet"]
EVALUATE = ["evaluate", "--samples", "{samples}", "--feature", "simple", "--device", "cpu", "--cache-dir", "{cache}",
            "--data", "{data}", "--n-real", "8", "--kid-subset-size", "2", "--kid-subsets", "2",
            "--json", "{out}/m.json", "--no-swd"]
KAGGLE = ["kaggle", "--user", "alice", "--out", "{out}", "--repo-root", str(REPO),
          "--notebooks", str(REPO / "notebooks")]

# id, argv, fault, exit code, what the message must name
CASES = [
    # train: flags checked when parsed
    ("train batch 0", ["train", *SMOKE, "--out", "{out}", "--batch-size", "0"], None, 2, ["--batch-size", "0"]),
    ("train lr nan", ["train", *SMOKE, "--out", "{out}", "--lr", "nan"], None, 2, ["--lr", "nan"]),
    ("train lr negative", ["train", *SMOKE, "--out", "{out}", "--lr=-1e-3"], None, 2, ["--lr", "-1e-3"]),
    ("train lr -1e-3", ["train", *SMOKE, "--out", "{out}", "--lr", "-1e-3"], None, 2, ["--lr=VALUE"]),
    ("train time budget", ["train", *SMOKE, "--out", "{out}", "--time-budget", "soon"], None, 2,
     ["--time-budget", "soon", "11h30m"]),
    ("train log every 0", ["train", *SMOKE, "--out", "{out}", "--log-every", "0"], None, 2, ["--log-every"]),
    ("train max images 0", ["train", *SMOKE, "--out", "{out}", "--max-images", "0"], None, 2, ["--max-images"]),
    ("train max steps -5", ["train", *SMOKE, "--out", "{out}", "--max-steps", "-5"], None, 2, ["--max-steps", "-5"]),
    ("train ema decay 1.5", ["train", *SMOKE, "--out", "{out}", "--ema-decay", "1.5"], None, 2,
     ["--ema-decay", "[0, 1)"]),
    ("train device tpu", ["train", *SMOKE[:2], "--out", "{out}", "--device", "tpu"], None, 2, ["--device", "tpu"]),
    ("train unknown crop", ["train", *SMOKE, "--out", "{out}", "--crop", "square"], None, 2, ["--crop", "square"]),
    # train: checked when the config is built, before any file is written
    ("train image size vs depth", ["train", *SMOKE, "--out", "{out}", "--image-size", "30"], None, 2,
     ["--image-size", "30", "depth=2", "28 or 32"]),
    ("train image size 4", ["train", *SMOKE, "--out", "{out}", "--image-size", "4"], None, 2, ["--image-size", ">= 8"]),
    # train: checked once the data is known
    ("train batch > data", ["train", *SMOKE, "--data", "{data}", "--cache-dir", "{cache}", "--out", "{out}",
                            "--batch-size", "64"], None, 2, ["24 images", "--batch-size"]),
    ("train missing data", ["train", *SMOKE, "--data", "{tmp}/nowhere", "--out", "{out}"], None, 2, ["nowhere"]),
    ("train data is a symlink loop", ["train", *SMOKE, "--data", "{tmp}/loop", "--cache-dir", "{tmp}/c", "--out",
                                      "{out}"], _symlink_loop, 2, ["{tmp}/loop"]),
    # train: the run folder
    ("train over a run", ["train", *SMOKE, "--data", "{data}", "--cache-dir", "{cache}", "--out", "{run}"], None, 2,
     ["already holds checkpoints", "--resume"]),
    ("train run in use", ["train", *SMOKE, "--data", "{data}", "--cache-dir", "{cache}", "--out", "{run}", "--resume"],
     _lock_held, 2, ["in use by another training", "train.lock"]),
    ("train other data", ["train", *SMOKE, "--data", "{data}", "--cache-dir", "{cache}", "--out", "{run}", "--resume",
                          "--max-images", "16"], None, 2, ["other data", "--allow-data-change"]),
    ("train disk full", ["train", *SMOKE, "--data", "{data}", "--cache-dir", "{cache}", "--out", "{run}", "--resume",
                         "--max-steps", "4"], _disk_full, 2, ["No space left on device", "--out"]),
    ("train disk full in torch.save", ["train", *SMOKE, "--data", "{data}", "--cache-dir", "{cache}", "--out", "{run}",
                                       "--resume", "--max-steps", "3", "--log-every", "5"], _torch_writer_fails, 2,
     ["No space left on device", "ckpt_00000003.pt", "ckpt_00000002.pt, is intact"]),
    ("train read-only", ["train", *SMOKE, "--data", "{data}", "--cache-dir", "{cache}", "--out", "{out}"],
     _read_only, 2, ["Read-only file system", "--out"]),
    # sample
    ("sample n 0", [*SAMPLE, "--n", "0", "--out", "{out}/g.png"], None, 2, ["--n", "0"]),
    ("sample steps -1", [*SAMPLE, "--steps", "-1", "--out", "{out}/g.png"], None, 2, ["--steps", "-1"]),
    ("sample steps > T", [*SAMPLE, "--steps", "51", "--out-dir", "{out}"], None, 2, ["--steps 51", "T=50"]),
    ("sample eta 2", [*SAMPLE, "--eta", "2", "--out", "{out}/g.png"], None, 2, ["--eta", "[0, 1]"]),
    ("sample no output", SAMPLE, None, 2, ["--out", "--out-dir"]),
    ("sample no checkpoint", ["sample", "--checkpoint", "{tmp}/none.pt", "--out", "{out}/g.png"], None, 2,
     ["none.pt", "does not exist"]),
    ("sample damaged checkpoint", ["sample", "--checkpoint", "{tmp}/broken.pt", "--out", "{out}/g.png",
                                   "--device", "cpu"], _damaged_checkpoint, 2, ["broken.pt"]),
    ("sample device cuda:3", [*SAMPLE[:3], "--device", "cuda:3", "--out", "{out}/g.png"], None, 2, ["cuda:3"]),
    ("sample other settings", [*SAMPLE, "--n", "4", "--steps", "4", "--out-dir", "{samples}"], None, 2,
     ["refusing to mix", "steps"]),
    ("sample disk full", [*SAMPLE, "--n", "2", "--steps", "2", "--out-dir", "{out}"], _disk_full, 2,
     ["No space left on device", "--out"]),
    ("sample permission", [*SAMPLE, "--n", "2", "--steps", "2", "--out-dir", "{out}"], _permission_denied, 2,
     ["permission denied", "--out"]),
    # evaluate
    ("evaluate damaged png", EVALUATE, _damaged_png, 2, ["cannot decode", "000002.png"]),
    ("evaluate wrong-size png", EVALUATE, _wrong_size_png, 2, ["000001.png", "8×8 px"]),
    ("evaluate not inception", [*EVALUATE[:3], "--inception-weights", "{tmp}/wrong.pth", *EVALUATE[5:]],
     _not_inception, 2, ["wrong.pth", "not torch-fidelity's Inception weights"]),
    ("evaluate no samples", ["evaluate", "--samples", "{tmp}/none", "--feature", "simple"], None, 2,
     ["--samples", "none"]),
    ("export no checkpoint", ["export", "--checkpoint", "{tmp}/none", "--out", "{out}/m.safetensors"], None, 2,
     ["--checkpoint", "no checkpoint"]),
    ("evaluate n-real 0", [*EVALUATE, "--n-real", "0"], None, 2, ["--n-real", "0"]),
    ("evaluate other size", [*EVALUATE, "--image-size", "8"], None, 2, ["16×16 px", "8×8 px", "--image-size"]),
    ("evaluate one sample", [*EVALUATE, "--n-fake", "1"], None, 2, ["1 generated", "--n-fake"]),
    # figures
    ("figures no checkpoint", ["figures", "--checkpoint", "{tmp}/none", "--out", "{out}", "--quick"], None, 2,
     ["none", "does not exist"]),
    ("figures unknown part", ["figures", "--checkpoint", "{run}", "--out", "{out}", "--only", "faces"], None, 2,
     ["--only", "faces"]),
    ("figures n 0", ["figures", "--checkpoint", "{run}", "--out", "{out}", "--n", "0"], None, 2, ["--n", "0"]),
    # prepare
    ("prepare image size 4", ["prepare", "--data", "{data}", "--cache-dir", "{out}", "--image-size", "4"], None, 2,
     ["--image-size", "4"]),
    ("prepare channels 2", ["prepare", "--data", "{data}", "--cache-dir", "{out}", "--channels", "2"], None, 2,
     ["--channels", "2"]),
    ("prepare disk full", ["prepare", "--data", "{data}", "--cache-dir", "{out}"], _disk_full_for_the_cache, 2,
     ["No space left on device", "--cache-dir"]),
    ("prepare no data", ["prepare", "--data", "{tmp}/nowhere", "--cache-dir", "{out}"], None, 2, ["nowhere"]),
    ("prepare empty folder", ["prepare", "--data", "{tmp}/empty", "--cache-dir", "{out}"], _empty_folder, 2,
     ["empty", "no JPEG/PNG images"]),
    # kaggle
    ("kaggle no user", ["kaggle", "--out", "{out}"], _no_kaggle_user, 2, ["--user"]),
    ("kaggle no notebooks", [*KAGGLE[:-1], "{tmp}/empty"], _empty_folder, 2, ["--notebooks", "empty", "no notebooks"]),
    ("kaggle wrong repo", [*KAGGLE[:6], "{tmp}", *KAGGLE[7:]], None, 2, ["--repo-root", "ddpm_helpers/__init__.py"]),
    ("kaggle poll -1", [*KAGGLE, "--poll", "-1"], None, 2, ["--poll", "-1"]),
    # ablate
    ("ablate unknown variant", ["ablate", "--variants", "base,nope", "--out", "{out}"], None, 2, ["'nope'", "--list"]),
    ("ablate seeds 0", ["ablate", "--seeds", "0", "--out", "{out}"], None, 2, ["--seeds", "0"]),
    ("ablate budget below a batch", ["ablate", "--images", "10", "--out", "{out}"], None, 2,
     ["--images 10", "too small"]),
    ("ablate n above the held-out", ["ablate", "--data", "{data}", "--cache-dir", "{cache}", "--train-images", "16",
                                     "--image-size", "16", "--n", "999", "--out", "{out}"], None, 2,
     ["--n 999", "8 held-out"]),
]


@pytest.mark.parametrize("argv, fault, code, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_message_and_loses_nothing(paths, monkeypatch, capsys, argv, fault, code, names):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    before = _snapshot(paths["run"]), _snapshot(paths["samples"])
    if fault is not None:
        fault(monkeypatch, paths)
    got, printed = _run([a.format(**paths) for a in argv], capsys)
    monkeypatch.undo()                               # the checks below use the real file system
    assert got == code, printed
    assert "Traceback" not in printed
    for name in names:
        assert name.format(**paths).lower() in printed.lower(), f"{name!r} not in:\n{printed}"
    # nothing lost: the run is as it was (and still loads); a refused command wrote nothing
    assert _snapshot(paths["run"]) == before[0]
    if fault not in (_damaged_png, _wrong_size_png):
        assert _snapshot(paths["samples"]) == before[1]
    load_model(latest_checkpoint(paths["run"]), device="cpu")
    out = paths["out"]
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"] if out.exists() else []
    assert not written, written                   # (the cache's empty .lock files may stay)
    assert not list(paths["tmp"].rglob(".*.tmp"))


@pytest.mark.parametrize("code, filename, says", [
    (errno.ENOSPC, None, "no space left on device writing under --out-dir /o; free some space or choose another --out"),
    (errno.EROFS, "/o/a.png", "cannot write /o/a.png: the file system is read-only; choose another --out"),
    (errno.EACCES, "/o", "permission denied: /o; choose a folder you can write (--out), or fix its permissions"),
    (errno.ELOOP, "/d/a.png", "/d/a.png: too many levels of symbolic links (a symlink loop); remove the loop, or "
                              "point --data elsewhere"),
    (errno.ENOENT, "/d", "no such file or folder: /d; check the path"),
])
def test_os_errors_say_what_happened_to_which_file_and_what_to_do(code, filename, says):
    import argparse
    e = OSError(code, os.strerror(code), filename) if filename else OSError(code, os.strerror(code))
    assert cli.describe_os_error(e, argparse.Namespace(out_dir="/o")) == says


def test_debug_shows_the_traceback(paths, monkeypatch, capsys):
    argv = ["sample", "--checkpoint", str(paths["tmp"] / "none.pt"), "--out", str(paths["out"] / "g.png")]
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert _run(["--debug", *argv], capsys)[1].count("Traceback") == 1
    assert "Traceback" in _run([*argv, "--debug"], capsys)[1]
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    code, printed = _run(argv, capsys)
    assert code == 2 and "Traceback" in printed and "error: no checkpoint at" in printed


def test_an_unexpected_error_is_reported_as_a_bug_without_a_traceback(paths, monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(cli, "sample_from_checkpoint", broken)
    code, printed = _run(["sample", "--checkpoint", paths["run"], "--out", paths["out"] / "g.png"], capsys)
    assert code == 1 and "Traceback" not in printed
    assert "unexpected ZeroDivisionError: division by zero" in printed and "--debug" in printed


def test_ctrl_c_exits_130(paths, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "sample_from_checkpoint", interrupted)
    argv = ["sample", "--checkpoint", paths["run"], "--out", paths["out"] / "g.png"]
    assert _run(argv, capsys) == (130, "interrupted\n")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_folder_is_a_message(paths, capsys):
    out = paths["tmp"] / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, printed = _run(["sample", "--checkpoint", paths["run"], "--n", "2", "--steps", "2", "--out-dir", out,
                              "--device", "cpu", "--quiet"], capsys)
    finally:
        out.chmod(0o700)
    assert code == 2 and "permission denied" in printed and "Traceback" not in printed


# ---------------------------------------------------------------------------------------------
# Flag types and the printed "continue with" command
# ---------------------------------------------------------------------------------------------
def test_parse_duration_reads_hours_minutes_seconds():
    assert [parse_duration(t) for t in ("11h30m", "90m", "45s", "1.5h", "3600", None)] == \
           [41400, 5400, 45, 5400, 3600, None]
    for bad in ("soon", "1.2.3h", "-5m", "5x"):
        with pytest.raises(ValueError, match="cannot read duration"):
            parse_duration(bad)


def test_every_subcommand_has_a_row_in_the_table():
    tested = {argv[0] for _, argv, *_ in CASES}
    assert tested == {name for name, *_ in cli.COMMANDS}


def test_continue_command_reproduces_the_run(paths, monkeypatch, capsys):
    """A run stopped by its time budget prints a command that resumes it with the same data and flags."""
    monkeypatch.chdir(paths["tmp"])
    shutil.copytree(paths["data"], "pics")
    code, printed = _run(["train", *SMOKE, "--data", "pics", "--out", "again", "--time-budget", "0.001",
                          "--cache-dir", "c", "--lr", "0.002", "--seed", "3"], capsys)
    assert code == 0
    line = next(l for l in printed.splitlines() if "continue with:" in l)
    cd, command = line.split("continue with: ")[1].split(" && ")     # a new shell: cd to the clone, this python
    assert shlex.split(cd) == ["cd", str(REPO)]
    words = shlex.split(command)
    assert words[:4] == [sys.executable, "-m", "ddpm_helpers", "train"] and words[-1] == "--resume"
    given = cli.build_parser().parse_args(words[3:])
    assert (given.preset, given.data, given.out, given.cache_dir) == \
           ("smoke", str(paths["tmp"] / "pics"), str(paths["tmp"] / "again"), str(paths["tmp"] / "c"))
    assert (given.image_size, given.lr, given.seed, given.device, given.no_progress, given.resume) == \
           (16, 0.002, 3, "cpu", True, True)
    monkeypatch.chdir(paths["tmp"] / "again")         # from elsewhere: the same run, the same data
    budget = words.index("--time-budget")
    code, printed = _run([*words[3:budget], *words[budget + 2:], "--max-steps", "1"], capsys)
    assert code == 0 and "resumed from" in printed, printed


def test_run_as_ddpm_says_ddpm(monkeypatch, capsys):
    """Installed, the `ddpm` script's usage and continue-with line say `ddpm`; run with -m, the interpreter used."""
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ddpm", "--help"])
    assert cli.main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: ddpm ")
    args = cli.build_parser().parse_args(["train", "--preset", "smoke", "--out", "/r"])
    assert cli.continue_command(args, "smoke", cli.build_train_config(args)[1]).startswith("ddpm train --preset smoke")
    monkeypatch.setattr(sys, "argv", ["/repo/ddpm_helpers/__main__.py"])
    assert cli.build_parser().prog == "python -m ddpm_helpers"
    command = cli.continue_command(args, "smoke", cli.build_train_config(args)[1])
    assert f"{sys.executable} -m ddpm_helpers train" in command


def test_continue_command_quotes_paths_with_spaces():
    args = cli.build_parser().parse_args(["train", "--preset", "smoke", "--data", "/my data/celeba", "--out", "/r u n"])
    _, cfg = cli.build_train_config(args)
    words = shlex.split(cli.continue_command(args, "smoke", cfg).split(" && ")[-1])
    assert words[words.index("--data") + 1] == "/my data/celeba" and words[words.index("--out") + 1] == "/r u n"


# ---------------------------------------------------------------------------------------------
# End to end, as a user types it
# ---------------------------------------------------------------------------------------------
def _python_m(*argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    env.pop(cli.DEBUG_ENV, None)
    return subprocess.run([sys.executable, "-m", "ddpm_helpers", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_bad_flag_and_missing_checkpoint(tmp_path):
    bad = _python_m("train", "--batch-size", "0", "--out", tmp_path / "out", cwd=tmp_path)
    assert bad.returncode == 2 and "argument --batch-size" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.splitlines()) == 2
    missing = _python_m("sample", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "g.png", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: no checkpoint at {tmp_path / 'none.pt'}: " \
                                                                 "the path does not exist"
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------------------------------------
# The configs check themselves, for Python users too
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build, says", [
    (lambda c: c.train_preset("cpu", ema_decay=1.0), r"ema_decay \(--ema-decay\) is 1.0: must be in \[0, 1\)"),
    (lambda c: c.train_preset("cpu", lr=float("inf")), r"lr \(--lr\) is inf"),
    (lambda c: c.train_preset("cpu", batch_size=0), r"batch_size \(--batch-size\) is 0"),
    (lambda c: c.train_preset("cpu", max_steps=-5), r"max_steps \(--max-steps\) is -5"),
    (lambda c: c.train_preset("cpu", log_every=0), r"log_every \(--log-every\) is 0"),
    (lambda c: c.train_preset("cpu", time_budget=float("nan")), r"time_budget \(--time-budget\) is nan"),
    (lambda c: c.train_preset("celeba64", data=c.DataConfig(image_size=72)), r"72: .*depth=4.*64 or 80"),
    (lambda c: c.train_preset("cpu", data=c.DataConfig(channels=3)), r"U-Net takes 1"),
    (lambda c: c.DataConfig(crop="square"), r"crop \(--crop\) is 'square'.*ddim_128"),
    (lambda c: c.DataConfig(max_images=0), r"max_images \(--max-images\) is 0"),
    (lambda c: c.DataConfig(image_size=4), r"image_size \(--image-size\) is 4: must be an integer >= 8"),
    (lambda c: c.DiffusionConfig(timesteps=1), r"timesteps is 1: must be an integer >= 2"),
    (lambda c: c.DiffusionConfig(beta_start=0.02, beta_end=1e-4), r"beta_start <= beta_end"),
    (lambda c: c.DiffusionConfig(schedule="quadratic"), r"schedule is 'quadratic'.*linear, cosine"),
    (lambda c: c.UNetConfig(norm="layer"), r"norm is 'layer'.*batch, group"),
    (lambda c: c.UNetConfig(act="gelu"), r"act is 'gelu'.*relu, silu"),
    (lambda c: c.UNetConfig(norm="group", groups=5), r"groups is 5.*GroupNorm"),
])
def test_a_config_out_of_range_is_refused_when_built(build, says):
    from ddpm_helpers import config
    with pytest.raises(config.ConfigError, match=says):
        build(config)


def test_every_preset_is_valid_and_survives_a_checkpoint_round_trip():
    from ddpm_helpers import config
    from ddpm_helpers.checkpoint import config_from_dict, config_to_dict
    for name, cfg in config.TRAIN_PRESETS.items():
        assert config_from_dict(config_to_dict(cfg)) == cfg, name
    assert config.nearest_image_sizes(30, 4) == (16, 32) and config.nearest_image_sizes(5, 3) == (8,)


def test_evaluate_without_held_out_images_notes_it_and_still_scores(paths, capsys):
    """The run trained on all 24 images and there is no valid split: SWD scores against the reference set and says
    that those images are not known to be held out (and why); FID and KID still run."""
    argv = [a.format(**paths) for a in EVALUATE if a != "--no-swd"]
    code, printed = _run(argv, capsys)
    assert code == 0, printed
    assert "SWD×1e3 samples vs" in printed and "real vs real" in printed
    assert "not known to be held out: the run trained on every image" in printed
    assert "FID " in printed and "KID " in printed
