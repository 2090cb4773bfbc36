"""One Kaggle session of notebook 04, and the model notebook 05 samples: the orchestration, out of the notebooks.

A long run is a chain of sessions (Kaggle versions of at most 12 hours). Each session

1. finds where to resume: this run's own folder first, then (on Kaggle) the previous version's output mounted
   under /kaggle/input (:func:`resume_source`, which also carries the loss log over);
2. finds or builds the uint8 image cache where the next version will see it, without copying it again
   (:func:`cache.cache_dir_for`);
3. trains until the session's time is spent, counted from the notebook's start (:func:`session_time_left`):
   with ``torchrun`` on several GPUs (:func:`train_command`, :func:`run_command`, which stops with the tail of the
   log when the job fails) or in the notebook's own process (:func:`run_training` picks).

Notebook 05 then samples from the newest checkpoint of that run (:func:`find_model_for_sampling`), from the same
session, a clone, or 04's output attached as an input; it trains its own small model only when there is none
(:func:`model_for_sampling`, which says so).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from . import cache, generate
from ._types import PathLike, moved_names
from .checkpoint import (
    CheckpointError,
    checkpoint_step,
    config_to_dict,
    find_run_checkpoints,
    find_run_exports,
    is_safetensors,
    latest_checkpoint,
    load_model,
    model_step,
)
from .env import kaggle_input_dir
from .runtime import TrainingError
from .train import train

# Names that lived here before issue 19 (notebook 05 imports weights_fingerprint from here): see moved_names.
__getattr__ = moved_names(__name__, {"weights_fingerprint": generate, "cache_dir_for": cache, "cache_file_name": cache})

LOG_TAIL_LINES = 40
# Fields that do not change what a run learns: a checkpoint that differs only in these is the same model.
IGNORED_FIELDS = ("out_dir", "time_budget", "amp", "num_threads", "checkpoint_every", "log_every", "sample_every",
                  "data.cache_dir")


@dataclass(frozen=True)
class SessionResult:
    """What one training session left: the step it reached, why it stopped, and its newest checkpoint."""

    step: int
    stop_reason: str
    checkpoint: Optional[Path]


@dataclass(frozen=True)
class SamplingModel:
    """The model notebook 05 samples from: EMA weights in eval mode, its schedule and training config."""

    checkpoint: Path
    model: Any
    schedule: Any
    config: Any
    trained_here: bool


# ---------------------------------------------------------------------------------------------
# Time and places
# ---------------------------------------------------------------------------------------------
def session_time_left(run, budget: Optional[float], now: Optional[float] = None) -> Optional[float]:
    """Seconds of training left in this session: budget − (now − run.started), at least 1 s; None stays None.

    The budget counts from the notebook's first cell (``setup()``), so reading CelebA and building the cache
    are inside it: a session never overruns because preprocessing took longer than expected.
    """
    if budget is None:
        return None
    elapsed = (time.time() if now is None else now) - run.started
    return max(1.0, float(budget) - elapsed)


def resume_source(out_dir: PathLike, run, kaggle_input: Optional[PathLike] = None) -> Optional[Path]:
    """The checkpoint this session continues from, or None for a fresh run.

    This run's own folder first (a re-run, Colab, a clone); then, on Kaggle, the newest checkpoint of a folder
    with the same name under kaggle_input (the previous version's output, in either mount scheme). When it
    comes from there, that run's metrics.csv is copied into out_dir (unless out_dir has one), so the loss
    curve continues across sessions.
    """
    out_dir = Path(out_dir)
    own = latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if own is not None or not run.on_kaggle:
        return own
    found = find_run_checkpoints(kaggle_input if kaggle_input is not None else kaggle_input_dir(), out_dir.name)
    if not found:
        return None
    previous = found[-1]
    if (previous.parent / "metrics.csv").is_file() and not (out_dir / "metrics.csv").exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(previous.parent / "metrics.csv", out_dir / "metrics.csv")
    return previous


# ---------------------------------------------------------------------------------------------
# Running the job
# ---------------------------------------------------------------------------------------------
def train_command(preset: str, data_dir: PathLike, out_dir: PathLike, n_gpus: int, time_budget: Optional[float],
                  resume: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None,
                  amp: str = "auto") -> list[str]:
    """The torchrun command that trains preset on n_gpus GPUs with DDP (the same CLI a terminal would run)."""
    command = ["torchrun", "--standalone", "--nproc_per_node", str(n_gpus), "-m", "ddpm_helpers", "train",
               "--preset", preset, "--data", str(data_dir), "--out", str(out_dir), "--amp", amp]
    if time_budget is not None:
        command += ["--time-budget", f"{int(time_budget)}"]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    if resume is not None:
        command += ["--resume", str(resume)]
    return command


def package_env(environ: Optional[dict] = None) -> dict:
    """A copy of the environment in which a child process imports this same ddpm_helpers (PYTHONPATH first)."""
    env = dict(os.environ if environ is None else environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("TQDM_MININTERVAL", "60")          # one progress line a minute in a saved log
    return env


def run_command(command: Sequence[str], log_path: PathLike, env: Optional[dict] = None, echo: bool = True,
                tail_lines: int = LOG_TAIL_LINES) -> None:
    """Run command, streaming its output to the notebook and to log_path; raise TrainingError if it fails.

    The error names the exit code and quotes the last tail_lines lines of the log, so a crash stops the
    notebook where it happened instead of letting later cells work on an older checkpoint.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque = deque(maxlen=tail_lines)
    if echo:
        print("$", shlex.join(command), flush=True)
    with open(log_path, "a", encoding="utf-8") as log:
        try:
            proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=package_env(env), bufsize=1)
        except OSError as exc:
            raise TrainingError(f"cannot start {command[0]!r}: {exc}") from exc
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            if echo:
                print(line, end="", flush=True)
        code = proc.wait()
    if code != 0:
        raise TrainingError(f"{shlex.join(command[:3])} … failed with exit code {code}; the last lines of "
                            f"{log_path}:\n" + "\n".join(tail))


def run_training(cfg, run, resume=None, preset: Optional[str] = None, budget_from_start: bool = False,
                 log_name: str = "train.log") -> SessionResult:
    """Train cfg for one session: torchrun on several GPUs (needs preset), else train() in this process.

    resume: a checkpoint, True (the newest in cfg.out_dir) or None. budget_from_start: cfg.time_budget is the
    whole session's, counted from the notebook's start (run.started), so the time spent before training (the
    cache) is inside it. The torchrun job's log goes to cfg.out_dir/log_name; a failure raises TrainingError
    with the log's tail.
    """
    if budget_from_start:
        cfg = dataclasses.replace(cfg, time_budget=session_time_left(run, cfg.time_budget))
    out = Path(cfg.out_dir)
    if run.n_gpus > 1 and preset is not None:
        resume_path = latest_checkpoint(out) if resume is True else resume
        command = train_command(preset, run.celeba.image_dir, out, run.n_gpus, cfg.time_budget, resume_path,
                                cfg.data.cache_dir, cfg.amp)
        run_command(command, out / log_name)
        newest = latest_checkpoint(out)
        return SessionResult(checkpoint_step(newest) if newest else 0, "see " + log_name, newest)
    result = train(cfg, resume=resume, progress=run.full)
    return SessionResult(result.step, result.stop_reason, result.checkpoint)


# ---------------------------------------------------------------------------------------------
# The model notebook 05 samples from
# ---------------------------------------------------------------------------------------------
def _flat(d: dict, prefix: str = "") -> dict:
    """{"data": {"cache_dir": x}} → {"data.cache_dir": x}."""
    out = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def setup_differences(a, b, ignored: Sequence[str] = IGNORED_FIELDS) -> list[str]:
    """The fields (dotted: "data.image_size") in which two TrainConfigs differ, apart from those in ignored."""
    fa, fb = _flat(config_to_dict(a)), _flat(config_to_dict(b))
    return sorted(k for k in set(fa) | set(fb) if k not in ignored and fa.get(k) != fb.get(k))


def same_setup(a, b, ignored: Sequence[str] = IGNORED_FIELDS) -> bool:
    """Whether two TrainConfigs train the same model, apart from fields in ignored (where files go, time budget,
    logging cadence, the cache's folder)."""
    return not setup_differences(a, b, ignored)


def sampling_candidates(run, run_name: str, kaggle_input: Optional[PathLike] = None) -> list[Path]:
    """Checkpoints and exported ``.safetensors`` models of run run_name, newest first: in run.out_dir/run_name,
    then (on Kaggle) under kaggle_input."""
    folder = Path(run.out_dir) / run_name
    candidates = [latest_checkpoint(folder), *find_run_exports(folder.parent, run_name, 1)] if folder.is_dir() else []
    if run.on_kaggle:
        root = kaggle_input if kaggle_input is not None else kaggle_input_dir()
        candidates += find_run_checkpoints(root, run_name) + find_run_exports(root, run_name)
    found = {p for p in candidates if p is not None and p.is_file()}
    return sorted(found, key=lambda p: (model_step(p), p.stat().st_mtime), reverse=True)


def find_model_for_sampling(run, run_name: str, expected=None, kaggle_input: Optional[PathLike] = None,
                            device: Optional[str] = None) -> Optional[SamplingModel]:
    """The newest loadable checkpoint of run_name (see sampling_candidates) as a SamplingModel, or None.

    expected: a TrainConfig the checkpoint must match (same_setup), e.g. 04's small configuration; None
    accepts any. Unreadable checkpoints (a run rewriting its folder) are reported and skipped.
    """
    for path in sampling_candidates(run, run_name, kaggle_input):
        try:
            model, schedule, saved = load_model(path, device=device or run.device)
        except (CheckpointError, OSError) as err:
            print(f"cannot use {path}: {err}")
            continue
        ignored = IGNORED_FIELDS + (("data.root",) if is_safetensors(path) else ())  # an export drops machine paths
        differences = [] if expected is None else setup_differences(saved, expected, ignored)
        if not differences:
            return SamplingModel(path, model, schedule, saved, trained_here=False)
        print(f"skipping {path}: trained with another configuration ({', '.join(differences)})")
    return None


def model_for_sampling(run, run_name: str, small_cfg, kaggle_input: Optional[PathLike] = None) -> SamplingModel:
    """Notebook 05's model: 04's run_name checkpoint (full run) or 04's small one; else train small_cfg here.

    Training here is announced: on Kaggle it means notebook 04's output is not attached as an input.
    """
    found = find_model_for_sampling(run, run_name, None if run.full else small_cfg, kaggle_input)
    if found is not None:
        return found
    where = " (on Kaggle: is notebook 04's output attached as an input?)" if run.on_kaggle else ""
    print(f"No usable checkpoint of {run_name!r}{where}. Training the small configuration here.")
    shutil.rmtree(small_cfg.out_dir, ignore_errors=True)
    checkpoint = train(small_cfg, progress=False).checkpoint
    model, schedule, saved = load_model(checkpoint, device=run.device)
    return SamplingModel(checkpoint, model, schedule, saved, trained_here=True)
