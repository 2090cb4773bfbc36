"""The training loop: L_simple with Adam, EMA, mixed precision, exact resume, a time budget and DDP.

One call, ``train(cfg)``, runs the whole job and leaves in ``cfg.out_dir``: ``ckpt_XXXXXXXX.pt``
(the last few), ``metrics.csv``, ``loss_curve.png``, ``samples/step_XXXXXXXX.png`` and
``samples/latest.png``. Under ``torchrun --nproc_per_node N`` the same call trains with
DistributedDataParallel; only rank 0 writes files.

Where things live: this file holds the loop (``Trainer.run``) and its step (``Trainer.train_step``, whose
loss is diffusion.training_loss); ``build_trainer`` is the one way to set a Trainer up. What a checkpoint
holds and how a run is put back from one (exact resume: N/2 + resume + N/2 steps equal N steps straight)
is state.py; device, AMP, torchrun ranks and stop signals are runtime.py; the run-folder lock (one
training per --out) is runfolder.py; checkpoint files are checkpoint.py.

Host–device syncs: one per step, after backward is queued (the finiteness check of the loss and
gradient norm that guards against NaN steps), plus the logging reads every ``log_every`` steps.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from . import optim, state
from ._types import moved_names
from .config import TrainConfig
from .data import BatchIterator, TrainingData, prepare_training_data
from .diffusion import ddim_sample, training_loss
from .errors import ConfigError
from .files import atomic_open, read_csv_rows
from .images import save_image_grid, to_model_range
from .optim import EMA, lr_lambda, make_adam
from .plotting import plot_loss_curve
from .runfolder import RunFolderLock, not_writable
from .runtime import DistInfo, StopFlag, TrainingError, autocast, default_device, resolve_amp, sigterm_exits
from .schedule import NoiseSchedule
from .unet import UNet, count_parameters

# Names that lived here before issue 19 (notebooks and pushed kernels import them from train): see moved_names.
__getattr__ = moved_names(__name__, {"ema_decay_at": optim})


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    epoch: int
    stop_reason: str            # "done", "time budget", "signal SIGTERM", ...
    checkpoint: Optional[Path]
    images_per_s: float
    bad_steps: int
    model: torch.nn.Module      # the EMA model (bare U-Net, eval mode)
    data_description: str = ""


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------
class LossWindow:
    """Mean loss and gradient norm over the steps since the last log line, summed on the device (no sync
    per step), and the images per second over that window."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.grad_norm_sum = torch.zeros((), device=device)
        self.images_per_s = 0.0
        self._reset()

    def _reset(self) -> None:
        self.loss_sum.zero_()
        self.grad_norm_sum.zero_()
        self.steps, self.grad_norms, self.t0 = 0, 0, time.time()

    def add(self, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> None:
        self.loss_sum += loss.detach()
        self.steps += 1
        if grad_norm is not None:            # None: an fp16 overflow step the grad scaler skipped
            self.grad_norm_sum += grad_norm.detach().float()
            self.grad_norms += 1

    def read(self, batch_size: int) -> tuple[float, float, float]:
        """(mean loss, mean gradient norm, images/s) of the window (one host sync), then start a new window."""
        self.images_per_s = self.steps * batch_size / max(time.time() - self.t0, 1e-9)
        loss = (self.loss_sum / max(self.steps, 1)).item()
        grad_norm = (self.grad_norm_sum / max(self.grad_norms, 1)).item()
        self._reset()
        return loss, grad_norm, self.images_per_s


def _step_of(row: Dict[str, Any]) -> Optional[int]:
    """A metrics row's step, or None when the cell is not a finite number (a damaged row)."""
    try:
        value = float(row.get("step") or "")
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) else None


class MetricsLog:
    """metrics.csv: step, epoch, loss, lr, grad_norm, images_per_s, elapsed_s, bad_steps (rank 0 only)."""

    FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s", "bad_steps"]

    def __init__(self, path: Path, resume_step: int, log: Callable[[str], None] = print):
        self.path = path
        rows = []
        if path.exists() and resume_step > 0:
            read, nul = read_csv_rows(path)
            rows = [r for r in read if _step_of(r) is not None and _step_of(r) <= resume_step]
            dropped = sum(_step_of(r) is None for r in read)
            if dropped or nul:
                log(f"[train] {path}: left out {dropped} damaged row(s) ({nul} NUL bytes: the tail of an interrupted "
                    "write); the rows up to the checkpoint are kept")
        elif path.exists() and path.stat().st_size > 0:   # an earlier run's record, its checkpoints moved away
            kept = path.with_name(f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.csv")
            path.rename(kept)
            log(f"[train] {path.name} of an earlier run is kept as {kept.name}; this run starts a new one")
        with atomic_open(path, "w") as f:   # drop rows written after the checkpoint we resume
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: Dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)


# ---------------------------------------------------------------------------------------------
# Building a trainer, and the one-call entry point
# ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: Union[str, bool, None] = None, device: Optional[str] = None,
          images: Optional[np.ndarray] = None, progress: bool = True, verbose: bool = True, *,
          allow_data_change: bool = False, on_step: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Train ε_θ with L_simple = ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² (Ho et al. Algorithm 1).

    cfg: a TrainConfig (see config.TRAIN_PRESETS). resume: True (latest checkpoint in cfg.out_dir),
    a checkpoint file or a folder to search (e.g. a previous Kaggle version under /kaggle/input),
    or None/False for a fresh run (a fresh run in a folder that has checkpoints resumes from them
    only when resume is set; otherwise it refuses, so nothing is overwritten by accident).
    images: optional uint8 (N, H, W, C) array to train on instead of cfg.data.
    allow_data_change: resume even if the checkpoint was trained on other data (else DataChangedError).
    The run folder is locked for the duration (RunFolderBusyError if another training holds it).
    on_step: called with the step number after every optimizer step (the ablation's overall progress bar).
    """
    dinfo = DistInfo()
    log = print if verbose and dinfo.is_main else (lambda msg: None)
    with sigterm_exits(), RunFolderLock(cfg.out_dir, enabled=dinfo.is_main, log=log):
        trainer = build_trainer(cfg, device=device, images=images, progress=progress, verbose=verbose)
        state.resume(trainer, resume, allow_data_change=allow_data_change)
        trainer.on_step = on_step
        return trainer.run()


def build_trainer(cfg: TrainConfig, device: Optional[str] = None, images: Optional[np.ndarray] = None, *,
                  model: Optional[torch.nn.Module] = None, with_data: bool = True, progress: bool = True,
                  verbose: bool = True) -> "Trainer":
    """The one way to set up a Trainer: device and DDP from the environment, seeds, data, U-Net.

    images: train on this uint8 (N, H, W, C) array instead of cfg.data. model: a network to train instead
    of UNet(cfg.model) (benchmarks time other models through the same step). with_data=False: no data at
    all; the trainer can then take steps with train_step(batch) but not run(). Touches no run folder:
    train() locks it and resumes (state.resume) before run().
    """
    started = time.time()                 # the time budget counts from here: data preparation included
    dinfo = DistInfo()
    dev = default_device(device, dinfo)
    dinfo.init(dev.type)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    data = (prepare_training_data(cfg.data, images=images, progress=progress and dinfo.is_main)
            if with_data else None)
    state.seed_everything(cfg.seed)       # the same initial weights on every rank
    model = UNet(cfg.model) if model is None else model
    return Trainer(cfg, model, dev, dinfo, data, progress=progress, verbose=verbose, started=started)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """A run's live state (model, EMA, optimizer, scaler, position) and its loop. Build it with build_trainer."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, device: torch.device, dinfo: DistInfo,
                 data: Optional[TrainingData], progress: bool = True, verbose: bool = True,
                 started: Optional[float] = None):
        self.cfg, self.device, self.dinfo, self.data = cfg, device, dinfo, data
        self.progress, self.verbose, self.is_main = progress, verbose, dinfo.is_main
        self.started = time.time() if started is None else started
        self.out = Path(cfg.out_dir)
        self.batches = self._make_batches(data.images) if data is not None else None
        self.schedule = NoiseSchedule.from_config(cfg.diffusion).to(device)
        self.memory_format = torch.channels_last if self._use_channels_last() else torch.contiguous_format
        self.model = model.to(device).to(memory_format=self.memory_format)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.ema.eval()
        self.opt = make_adam(self.model.parameters(), cfg)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.warmup_steps))
        state.seed_everything(cfg.seed + state.RANK_SEED_OFFSET * dinfo.rank)   # from here on, per-rank randomness
        self.amp_dtype = resolve_amp(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.net = self._wrap(self.model)
        self.gen = state.noise_generator(device, cfg.seed, dinfo.rank)
        self.sample_noise = state.fixed_sample_noise(cfg)
        self.step = self.epoch = self.batch_in_epoch = self.bad_steps = self.bad_in_row = 0
        self.elapsed_before = 0.0
        self.t_start = time.time()
        self.last_checkpoint: Optional[Path] = None
        self._saved_at = self._sampled_at = -1
        self.on_step: Optional[Callable[[int], None]] = None

    # -- setup helpers ---------------------------------------------------------------------------
    def _make_batches(self, images: np.ndarray) -> BatchIterator:
        want = (self.cfg.data.image_size, self.cfg.data.image_size, self.cfg.model.in_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ConfigError(f"training images have shape {tuple(images.shape[1:])} (H, W, C) but the config "
                              f"expects {want}: set image_size/channels to match the data")
        world = self.dinfo.world
        per_rank = self.cfg.batch_size // world
        if per_rank < 1 or self.cfg.batch_size % world:
            raise ConfigError(f"batch size {self.cfg.batch_size} is not divisible by {world} processes")
        batches = BatchIterator(images, per_rank, seed=self.cfg.seed, hflip=self.cfg.data.hflip,
                                rank=self.dinfo.rank, world_size=world, drop_last=True,
                                pin_memory=self.device.type == "cuda")
        if batches.batches_per_epoch() < 1:
            raise ConfigError(f"{len(images)} images give no full batch of {per_rank} per process; "
                              f"lower --batch-size")
        return batches

    def _use_channels_last(self) -> bool:
        """channels_last as cfg.channels_last says; by default on CUDA for BatchNorm U-Nets only (1.36× on an
        H200), off for GroupNorm ones, whose norm kernels convert layouts back and forth (0.82× there;
        benchmarks/RESULTS.md), and off on the CPU."""
        if self.cfg.channels_last is not None:
            return bool(self.cfg.channels_last)
        return self.device.type == "cuda" and self.cfg.model.norm == "batch"

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The network the step calls: DistributedDataParallel under torchrun, torch.compile if asked."""
        net = model
        if self.dinfo.enabled:
            net = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(net) if self.cfg.compile else net

    @property
    def total_steps(self) -> Optional[int]:
        limits = []
        if self.cfg.max_steps is not None:
            limits.append(self.cfg.max_steps)
        if self.cfg.epochs is not None and self.batches is not None:
            limits.append(self.cfg.epochs * self.batches.batches_per_epoch())
        return min(limits) if limits else None

    def log(self, msg: str) -> None:
        if self.is_main and self.verbose:
            tqdm.write(msg)

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, batch_uint8: torch.Tensor):
        """One optimizer step on a uint8 batch (B, C, H, W): L_simple (diffusion.training_loss), backward,
        clipping, Adam, LR schedule, EMA.

        Returns (loss, grad_norm or None when no update was applied, ok); ok is False for a non-finite loss.
        """
        x0 = to_model_range(batch_uint8, self.device, channels_last=self.memory_format == torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            loss = training_loss(self.net, x0, self.schedule, generator=self.gen,   # draws t, then ε (then ξ)
                                 min_snr_gamma=self.cfg.min_snr_gamma, input_perturbation=self.cfg.input_perturbation)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip
                                                   if self.cfg.grad_clip > 0 else float("inf"))
        loss_ok, grad_ok = self._finite(loss, grad_norm)
        if not loss_ok or not (grad_ok or self.scaler.is_enabled()):
            self.opt.zero_grad(set_to_none=True)
            self.scaler.update()
            return loss, None, False
        self.scaler.step(self.opt)          # fp16 gradients that overflowed (finite loss): the scaler skips
        self.scaler.update()                # the update and lowers its scale; nothing else moves
        if not grad_ok:
            return loss, None, True
        self.lr_sched.step()
        self.ema.update_parameters(self.model)
        return loss, grad_norm, True

    def _finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[bool, bool]:
        """(loss finite, gradient norm finite): the one host sync per step. Under DDP every rank takes the
        same decision (MIN over ranks: a rank whose loss overflowed makes every rank skip)."""
        flags = torch.stack([torch.isfinite(loss), torch.isfinite(grad_norm)]).float()
        if self.dinfo.enabled:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        loss_ok, grad_ok = flags.bool().tolist()
        return loss_ok, grad_ok

    # -- outputs ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> Optional[Path]:
        """Checkpoint the current state (every rank takes part; rank 0 writes) and prune old checkpoints."""
        ck = state.capture(self)
        self._saved_at = self.step
        if ck is None:
            return None
        path = ckpt_io.save_checkpoint_file(ck, self.out / ckpt_io.checkpoint_name(self.step))
        ckpt_io.prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        self.last_checkpoint = path
        return path

    @torch.no_grad()
    def save_samples(self) -> Optional[Path]:
        """A grid from the EMA weights with the fixed noise and a cheap DDIM sampler (rank 0)."""
        self._sampled_at = self.step
        if not self.is_main:
            return None
        noise = self.sample_noise.to(self.device)
        with autocast(self.device, self.amp_dtype):
            x = ddim_sample(self.ema.module, noise.shape, self.schedule, noise=noise, progress=False,
                            steps=min(self.cfg.sample_steps, self.schedule.T))
        path = save_image_grid(x.float(), self.out / "samples" / f"step_{self.step:08d}.png")
        save_image_grid(x.float(), self.out / "samples" / "latest.png")
        return path

    def save_loss_curve(self) -> None:
        if self.is_main and (self.out / "metrics.csv").exists():
            try:
                plot_loss_curve(self.out / "metrics.csv", self.out / "loss_curve.png",
                                title=f"L_simple: {_short_data_name(self.data.description)}, "
                                      f"{self.cfg.data.image_size} px")
            except Exception as e:  # a figure must never kill a run
                self.log(f"[train] loss curve not drawn: {e}")

    def _log_metrics(self, window: LossWindow, metrics: Optional[MetricsLog], bar) -> None:
        loss, grad_norm, images_per_s = window.read(self.cfg.batch_size)
        if metrics is not None:
            metrics.write({"step": self.step, "epoch": self.epoch, "loss": f"{loss:.6f}",
                           "lr": f"{self.lr_sched.get_last_lr()[0]:.3e}", "grad_norm": f"{grad_norm:.4f}",
                           "images_per_s": f"{images_per_s:.1f}",
                           "elapsed_s": f"{self.elapsed_before + time.time() - self.t_start:.1f}",
                           "bad_steps": self.bad_steps})
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}", epoch=self.epoch)

    # -- the loop --------------------------------------------------------------------------------
    def _open_run_folder(self) -> Optional[MetricsLog]:
        """Rank 0: create the run folder, clean temporary files of killed writes, open metrics.csv."""
        if not self.is_main:
            return None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for folder in (self.out, self.out / "samples"):
                count, size = ckpt_io.remove_leftover_temp_files(folder)
                if count:
                    self.log(f"[train] removed {count} temporary file(s) of interrupted writes from {folder} "
                             f"({size / 2 ** 20:.1f} MiB)")
            return MetricsLog(self.out / "metrics.csv", self.step, log=self.log)
        except OSError as e:
            raise not_writable(self.out, e) from e

    def _should_stop(self, flag: StopFlag) -> Optional[str]:
        reason = flag.reason
        budget = self.cfg.time_budget
        if reason is None and budget is not None and time.time() - self.started >= budget:
            reason = "time budget"
        if self.dinfo.enabled:      # every rank stops at the same step
            t = torch.tensor([0 if reason is None else 1], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if t.item() and reason is None:
                reason = "stopped by another rank"
        return reason

    def _batch_stream(self):
        """Batches in order, epoch after epoch, starting at the saved position (epoch, batch_in_epoch)."""
        while True:
            yield from self.batches.epoch(self.epoch, start_batch=self.batch_in_epoch)
            self.epoch += 1
            self.batch_in_epoch = 0

    def _bad_step(self) -> None:
        self.bad_steps += 1
        self.bad_in_row += 1
        self.log(f"[train] non-finite loss at step {self.step}: step skipped "
                 f"({self.bad_in_row} in a row, {self.bad_steps} in all)")
        if self.bad_in_row >= self.cfg.max_bad_steps:
            raise TrainingError(
                f"{self.bad_in_row} non-finite losses in a row at step {self.step}: training diverged. "
                f"Lower --lr, keep grad clipping on, or try --amp bf16/off; resume from the last good "
                f"checkpoint in {self.out}")

    def _after_step(self, window: LossWindow, metrics: Optional[MetricsLog], bar) -> None:
        """Every log_every / sample_every / checkpoint_every steps: a metrics row, a sample grid, a checkpoint."""
        cfg = self.cfg
        if self.step % cfg.log_every == 0:
            self._log_metrics(window, metrics, bar)
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            self.save_samples()
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
            self.save_loss_curve()

    def _announce(self) -> None:
        self.log(f"[train] {self.data.description}")
        self.log(f"[train] U-Net {count_parameters(self.model):,} parameters on {self.device}"
                 f"{' ×' + str(self.dinfo.world) if self.dinfo.enabled else ''}, amp={self.amp_dtype}, "
                 f"batch {self.cfg.batch_size}, {self.batches.batches_per_epoch()} batches/epoch per process")

    def _retarget(self, bar) -> None:
        """Every 10 steps, point the bar at the step the run will stop at (expected_stop): with a time budget that
        ends it first, the bar's total, percentage and ETA follow the budget, and its postfix says so."""
        done = self.step - self._bar_from
        if self.cfg.time_budget is None or bar.disable or done < 10 or done % 10:
            return
        now = time.time()
        target, limit = expected_stop(self.step, self.total_steps, done / max(now - self.t_start, 1e-9),
                                      self.cfg.time_budget - (now - self.started))
        if target is not None and target != bar.total:
            bar.total = max(target, self.step)
            bar.set_description(f"train (ends by {limit})" if limit == "time budget" else "train", refresh=False)
            bar.refresh()

    def run(self) -> TrainResult:
        """Algorithm 1 until max_steps / epochs, the time budget or a stop signal; then a last checkpoint,
        sample grid and loss curve at the stopping step."""
        if self.batches is None:
            raise TrainingError("this Trainer was built with_data=False: it can take steps, not run")
        metrics = self._open_run_folder()
        self._announce()
        self.t_start, self._bar_from = time.time(), self.step
        window, stream, stop_reason = LossWindow(self.device), self._batch_stream(), "done"
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.is_main),
                   desc="train", unit="step", dynamic_ncols=True)
        check_every = 10 if self.dinfo.enabled else 1       # stopping needs a collective under DDP
        self.model.train()
        with StopFlag() as flag:
            while self.total_steps is None or self.step < self.total_steps:
                if self.step % check_every == 0 and (reason := self._should_stop(flag)):
                    stop_reason = reason
                    break
                loss, grad_norm, ok = self.train_step(next(stream))
                self.batch_in_epoch += 1
                if not ok:
                    self._bad_step()
                    continue
                self.step, self.bad_in_row = self.step + 1, 0
                window.add(loss, grad_norm)
                bar.update(1)
                self._retarget(bar)
                self._after_step(window, metrics, bar)
                if self.on_step is not None:
                    self.on_step(self.step)
            bar.close()
            self._finish()
        self.log(f"[train] stopped at step {self.step} ({stop_reason}); checkpoint {self.last_checkpoint}")
        if self.dinfo.enabled:
            dist.barrier()
        self.dinfo.close()
        return TrainResult(self.out, self.step, self.epoch, stop_reason, self.last_checkpoint, window.images_per_s,
                           self.bad_steps, self.ema.module.eval(), self.data.description)

    def _finish(self) -> None:
        """The outputs at the stopping step: a checkpoint, a sample grid and the loss curve (unless just made)."""
        if self._saved_at != self.step:
            self.save_checkpoint()
        if self._sampled_at != self.step:
            self.save_samples()
        self.save_loss_curve()


def expected_stop(step: int, total_steps: Optional[int], steps_per_second: float,
                  seconds_left: Optional[float]) -> Tuple[Optional[int], str]:
    """The step a run will stop at, whichever limit ends it first, and which: (step, "steps" / "time budget").

    Steps left by the step limit: S − s; by the time budget: rate × seconds left, rounded down. The progress bar
    counts to the smaller, so its percentage and ETA describe the limit that will actually end the run. No step
    limit and no budget: (None, "steps"). A rate of 0 (not yet measured) trusts the step limit.
    """
    by_steps = total_steps
    if seconds_left is None or steps_per_second <= 0:
        return by_steps, "steps"
    by_time = step + int(max(0.0, seconds_left) * steps_per_second)
    if by_steps is None or by_time < by_steps:
        return by_time, "time budget"
    return by_steps, "steps"


def _short_data_name(description: str) -> str:
    """"CelebA train (ddim_128 → 32 px), 4,500 images from /x" → "CelebA train": a title that fits one column."""
    return description.split(" (")[0].split(",")[0]

