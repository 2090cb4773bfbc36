"""The training loop: L_simple with Adam, EMA, mixed precision, exact resume, a time budget and DDP.

One call, ``train(cfg)``, runs the whole job and leaves in ``cfg.out_dir``: ``ckpt_XXXXXXXX.pt``
(the last few), ``metrics.csv``, ``loss_curve.png``, ``samples/step_XXXXXXXX.png`` and
``samples/latest.png``. Under ``torchrun --nproc_per_node N`` the same call trains with
DistributedDataParallel; only rank 0 writes files.

Exact resume: a checkpoint holds the model, EMA, optimizer, LR schedule, grad scaler, step, epoch,
the position in the epoch's data order, every RNG state (torch, CUDA, NumPy, Python, and the
generator that draws t and ε), the config and the fixed sampling noise. Resuming replays the same
batches, timesteps and noise, so N/2 + resume + N/2 steps equal N steps straight.

Host–device syncs: one per step, after backward is queued (the finiteness check of the loss and
gradient norm that guards against NaN steps), plus the logging reads every ``log_every`` steps.
"""
from __future__ import annotations

import contextlib
import itertools
import csv
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .diffusion import ddim_sample, q_sample
from .schedule import NoiseSchedule
from .unet import UNet, count_parameters
from .errors import DDPMError


class TrainingError(DDPMError, RuntimeError):
    """Training cannot go on (for example, too many non-finite losses in a row)."""


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
def parse_duration(text: Union[str, float, int, None]) -> Optional[float]:
    """'11h30m', '90m', '45s', '1.5h' or a number of seconds → seconds (None stays None)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    import re
    s = text.strip().lower()
    if re.fullmatch(r"[\d.]+", s):
        return float(s)
    parts = re.findall(r"([\d.]+)\s*([hms])", s)
    if not parts or "".join(n + u for n, u in parts) != s.replace(" ", ""):
        raise ValueError(f"cannot read duration {text!r}; use e.g. 11h30m, 90m or 3600")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    """EMA decay after n updates: min(decay, (1 + n)/(10 + n)) with warm-up, so that early samples come
    from recent weights rather than the random initialisation; the plain decay without."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


class EMA(AveragedModel):
    """Exponential moving average of the weights: θ_ema ← d·θ_ema + (1 − d)·θ (torch.optim.swa_utils).

    Keeps AveragedModel's structure (``.module``, ``n_averaged``) and averages float parameters and
    buffers (BatchNorm statistics) with multi-tensor ops; integer buffers are copied. The update
    count lives in Python, so an update never waits for the GPU.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        super().__init__(model, use_buffers=True)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        d = ema_decay_at(self.updates, self.decay, self.warmup)
        ema_f, new_f = [], []
        for e, m in zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                        itertools.chain(model.parameters(), model.buffers())):
            if e.dtype.is_floating_point:
                ema_f.append(e.detach())
                new_f.append(m.detach())
            else:
                e.copy_(m)
        if ema_f:
            torch._foreach_lerp_(ema_f, new_f, 1.0 - d)
        self.updates += 1
        self.n_averaged.fill_(self.updates)


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """'auto' → bf16 on GPUs that support it, fp16 on others (T4, P100), off on CPU."""
    if amp == "off" or device.type != "cuda":
        if amp in ("fp16", "bf16") and device.type != "cuda":
            print(f"[train] amp={amp} ignored on {device.type}")
        return None
    if amp == "auto":
        # Native bf16 needs compute capability 8.0 (Ampere) or newer. is_bf16_supported() also says True
        # on a T4 (7.5) through emulation, which is slow there: a T4 gets fp16 with a gradient scaler.
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def make_adam(params, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with the fused multi-tensor kernel where this torch has one for the device (CPU and CUDA
    since torch 2.4): one kernel for all parameters, 2× faster than the per-tensor loop on a CPU."""
    params = list(params)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kwargs)


def lr_lambda(warmup_steps: int):
    """Linear learning-rate warm-up from 0 to the base rate over warmup_steps, then constant."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def rng_state(gen: torch.Generator) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "gen": gen.get_state(), "gen_device": str(gen.device)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    gen.set_state(state["gen"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


class _DistInfo:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started_here = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def init(self, device_type: str) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
            self.started_here = True

    def close(self) -> None:
        if self.started_here and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(requested: Optional[str], dinfo: _DistInfo) -> torch.device:
    if requested:
        dev = torch.device(requested)
    else:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dinfo.enabled:
        dev = torch.device("cuda", dinfo.local_rank)
        torch.cuda.set_device(dev)
    return dev


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and exits at the next step."""

    def __init__(self):
        self.reason: Optional[str] = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class MetricsLog:
    """metrics.csv: step, epoch, loss, lr, grad_norm, images_per_s, elapsed_s (rank 0 only)."""

    FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s", "bad_steps"]

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if path.exists() and resume_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
        with ckpt_io.atomic_open(path, "w") as f:   # drop rows written after the checkpoint we resume
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: Dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: Union[str, bool, None] = None, device: Optional[str] = None,
          images: Optional[np.ndarray] = None, progress: bool = True, verbose: bool = True) -> TrainResult:
    """Train ε_θ with L_simple = ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² (Ho et al. Algorithm 1).

    cfg: a TrainConfig (see config.TRAIN_PRESETS). resume: True (latest checkpoint in cfg.out_dir),
    a checkpoint file or a folder to search (e.g. a previous Kaggle version under /kaggle/input),
    or None/False for a fresh run (a fresh run in a folder that has checkpoints resumes from them
    only when resume is set; otherwise it refuses, so nothing is overwritten by accident).
    images: optional uint8 (N, H, W, C) array to train on instead of cfg.data.
    """
    return Trainer(cfg, resume=resume, device=device, images=images, progress=progress, verbose=verbose).run()


class Trainer:
    def __init__(self, cfg: TrainConfig, resume=None, device=None, images=None, progress=True, verbose=True):
        self.t_created = time.time()          # the time budget counts from here: data preparation included
        self.cfg, self.progress, self.verbose = cfg, progress, verbose
        self.dinfo = _DistInfo()
        self.device = pick_device(device, self.dinfo)
        self.dinfo.init(self.device.type)
        self.is_main = self.dinfo.rank == 0
        self.out = Path(cfg.out_dir)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self._seed_everything(cfg.seed)          # the same initial weights on every rank

        # data ---------------------------------------------------------------------------------
        from .data import BatchIterator, prepare_images
        if images is None:
            images, self.data_desc = prepare_images(cfg.data, progress=progress and self.is_main)
        else:
            self.data_desc = f"{len(images)} images given directly"
        self._check_images(images)
        per_rank = cfg.batch_size // self.dinfo.world
        if per_rank < 1 or cfg.batch_size % self.dinfo.world:
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by {self.dinfo.world} processes")
        self.batches = BatchIterator(images, per_rank, seed=cfg.seed, hflip=cfg.data.hflip, rank=self.dinfo.rank,
                                     world_size=self.dinfo.world, drop_last=True,
                                     pin_memory=self.device.type == "cuda")
        if self.batches.batches_per_epoch() < 1:
            raise ValueError(f"{len(images)} images give no full batch of {per_rank} per process; "
                             f"lower --batch-size")

        # model, EMA, optimizer ----------------------------------------------------------------
        self.schedule = NoiseSchedule.from_config(cfg.diffusion).to(self.device)
        self.model = UNet(cfg.model).to(self.device)
        self.memory_format = torch.channels_last if self._use_channels_last() else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.ema.eval()
        self.opt = make_adam(self.model.parameters(), cfg)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.warmup_steps))
        self._seed_everything(cfg.seed + 1000 * self.dinfo.rank)   # from here on, per-rank randomness
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.net = self.model
        if self.dinfo.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 7919 + self.dinfo.rank)
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        c, s = cfg.model.in_channels, cfg.data.image_size
        self.sample_noise = torch.randn(cfg.sample_n, c, s, s, generator=g)

        # position -------------------------------------------------------------------------------
        self.step = self.epoch = self.batch_in_epoch = self.bad_steps = self.bad_in_row = 0
        self.elapsed_before = 0.0
        self.total_steps = self._total_steps()
        self._maybe_resume(resume)

    # -- setup helpers ---------------------------------------------------------------------------
    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)

    def _use_channels_last(self) -> bool:
        """channels_last on CUDA: on for BatchNorm U-Nets (1.36× on an H200), off by default for GroupNorm ones,
        whose norm kernels convert layouts back and forth (0.82× there; benchmarks/RESULTS.md)."""
        if self.device.type != "cuda":
            return False
        if self.cfg.channels_last is None:
            return self.cfg.model.norm == "batch"
        return bool(self.cfg.channels_last)

    def _check_images(self, images: np.ndarray) -> None:
        want = (self.cfg.data.image_size, self.cfg.data.image_size, self.cfg.model.in_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"training images have shape {tuple(images.shape[1:])} (H, W, C) but the config "
                             f"expects {want}: set image_size/channels to match the data")

    def _total_steps(self) -> Optional[int]:
        limits = []
        if self.cfg.max_steps is not None:
            limits.append(self.cfg.max_steps)
        if self.cfg.epochs is not None:
            limits.append(self.cfg.epochs * self.batches.batches_per_epoch())
        return min(limits) if limits else None

    def _maybe_resume(self, resume) -> None:
        existing = ckpt_io.list_checkpoints(self.out)
        if not resume:
            if existing:
                raise ckpt_io.CheckpointError(
                    f"{self.out} already holds checkpoints (newest {existing[-1].name}); pass resume=True "
                    f"(--resume) to continue that run, or choose another --out")
            return
        source = self.out if resume is True else Path(resume)
        path = ckpt_io.latest_checkpoint(source)
        if path is None:
            if resume is True:
                self._log(f"[train] no checkpoint in {self.out}; starting a fresh run")
                return
            raise ckpt_io.CheckpointError(f"--resume {resume}: no checkpoint found there")
        ck = ckpt_io.load_checkpoint(path, map_location="cpu")   # RNG states must stay CPU ByteTensors
        self._set_aside_newer_checkpoints(path, ck["step"])
        ckpt_io.check_compatible(ck, self.cfg, path)
        self.model.load_state_dict(ck["model"])
        self.ema.module.load_state_dict(ck["ema"])
        self.ema.updates = int(ck.get("ema_updates", 0))
        self.ema.n_averaged.fill_(self.ema.updates)
        self.opt.load_state_dict(ck["optimizer"])
        self.lr_sched.load_state_dict(ck["lr_schedule"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch, self.batch_in_epoch = ck["step"], ck["epoch"], ck["batch_in_epoch"]
        self.bad_steps = ck.get("bad_steps", 0)
        self.elapsed_before = ck.get("elapsed", 0.0)
        self.sample_noise = ck["sample_noise"].cpu()
        self._restore_position_and_rng(ck)
        self._log(f"[train] resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    def _set_aside_newer_checkpoints(self, path: Path, step: int) -> None:
        """Resuming this folder from an older checkpoint abandons the newer ones: rename them (nothing is
        deleted) so that pruning and the next --resume follow the run that continues."""
        if not self.is_main:
            return
        for newer in ckpt_io.list_checkpoints(self.out):
            if ckpt_io.checkpoint_step(newer) > step and newer.resolve() != path.resolve():
                newer.rename(newer.with_name(newer.name + ".abandoned"))
                self._log(f"[train] {newer.name} belongs to the abandoned continuation: renamed to *.abandoned")

    def _restore_position_and_rng(self, ck: Dict[str, Any]) -> None:
        """Continue the data order and the noise exactly; or, when the batch size, process count or seed
        changed (say a T4×2 run continued on one GPU), as closely as possible, with a warning."""
        saved = ckpt_io.config_from_dict(ck["config"])
        old_world = int(ck.get("world_size", 1))
        same = (saved.batch_size, old_world, saved.seed) == (self.cfg.batch_size, self.dinfo.world, self.cfg.seed)
        if not same:
            # keep the number of images already used this epoch (old global batch × old batch index)
            self.batch_in_epoch = min(ck["batch_in_epoch"] * saved.batch_size // self.cfg.batch_size,
                                      self.batches.batches_per_epoch())
            self._log(f"[train] the checkpoint was trained with batch size {saved.batch_size}, {old_world} process(es), "
                      f"seed {saved.seed}; this run uses {self.cfg.batch_size}, {self.dinfo.world}, {self.cfg.seed}: "
                      f"continuing at batch {self.batch_in_epoch} of epoch {self.epoch}, with fresh noise. "
                      f"Training goes on, but not bit for bit as an uninterrupted run would.")
            self.gen.manual_seed(self.cfg.seed * 7919 + self.dinfo.rank + 1_000_003 * self.step)
            return
        rng = ck["rng"]
        if self.dinfo.enabled and ck.get("per_rank"):
            rng = ck["per_rank"][self.dinfo.rank]
        if str(self.gen.device) == rng.get("gen_device"):
            set_rng_state(rng, self.gen)
        else:
            self._log(f"[train] checkpoint RNG was on {rng.get('gen_device')}; drawing fresh noise on {self.gen.device}")
            set_rng_state({**rng, "gen": self.gen.get_state()}, self.gen)

    def _log(self, msg: str) -> None:
        if self.is_main and self.verbose:
            tqdm.write(msg)

    # -- one step --------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batch_uint8: torch.Tensor):
        """One optimizer step on a uint8 batch (B, C, H, W).

        Returns (loss, grad_norm or None when no update was applied, ok); ok is False for a non-finite loss.
        """
        from .data import to_model_range
        x0 = to_model_range(batch_uint8, self.device, channels_last=self.memory_format == torch.channels_last)
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.T, (B,), device=self.device, generator=self.gen)   # (B,)
        noise = torch.randn(x0.shape, device=self.device, generator=self.gen)                # (B, C, H, W)
        xt = q_sample(x0, t, noise, self.schedule)
        with self._autocast():
            eps = self.net(xt, t)
        loss = torch.nn.functional.mse_loss(eps.float(), noise)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip
                                                   if self.cfg.grad_clip > 0 else float("inf"))
        # The one sync per step. Every rank takes the same decision (under DDP the flags are reduced with
        # MIN: a rank whose loss overflowed makes every rank skip), so step counters never drift apart.
        flags = torch.stack([torch.isfinite(loss), torch.isfinite(grad_norm)]).float()
        if self.dinfo.enabled:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        loss_ok, grad_ok = flags.bool().tolist()
        if not loss_ok or not (grad_ok or self.scaler.is_enabled()):
            self.opt.zero_grad(set_to_none=True)
            self.scaler.update()
            return loss, None, False
        if not grad_ok:
            # fp16 gradients overflowed with a finite loss: the grad scaler's business, not a bad step.
            # scaler.step skips the update and scaler.update lowers the scale; nothing else moves.
            self.scaler.step(self.opt)
            self.scaler.update()
            return loss, None, True
        self.scaler.step(self.opt)
        self.scaler.update()
        self.lr_sched.step()
        self.ema.update_parameters(self.model)
        return loss, grad_norm, True

    # -- outputs ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> Optional[Path]:
        rng = rng_state(self.gen)
        per_rank = None
        if self.dinfo.enabled:
            per_rank = [None] * self.dinfo.world
            dist.all_gather_object(per_rank, rng)
        if not self.is_main:
            return None
        state = {
            "format": ckpt_io.FORMAT, "config": ckpt_io.config_to_dict(self.cfg),
            "model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.opt.state_dict(), "lr_schedule": self.lr_sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "rng": rng, "per_rank": per_rank, "world_size": self.dinfo.world, "sample_noise": self.sample_noise,
            "bad_steps": self.bad_steps, "elapsed": self.elapsed_before + (time.time() - self.t_start),
            "data": self.data_desc, "parameters": count_parameters(self.model),
        }
        path = ckpt_io.atomic_save(state, self.out / ckpt_io.checkpoint_name(self.step))
        ckpt_io.prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        return path

    @torch.no_grad()
    def save_samples(self) -> Optional[Path]:
        """A grid from the EMA weights with the fixed noise and a cheap DDIM sampler (rank 0)."""
        if not self.is_main:
            return None
        from .plotting import save_image_grid
        model = self.ema.module
        noise = self.sample_noise.to(self.device)
        with self._autocast():
            x = ddim_sample(model, noise.shape, self.schedule, steps=min(self.cfg.sample_steps, self.schedule.T),
                            noise=noise, progress=False)
        path = save_image_grid(x.float(), self.out / "samples" / f"step_{self.step:08d}.png")
        save_image_grid(x.float(), self.out / "samples" / "latest.png")
        return path

    def save_loss_curve(self) -> None:
        if self.is_main and (self.out / "metrics.csv").exists():
            from .plotting import plot_loss_curve
            try:
                plot_loss_curve(self.out / "metrics.csv", self.out / "loss_curve.png",
                                title=f"L_simple, {self.data_desc[:60]}")
            except Exception as e:  # a figure must never kill a run
                self._log(f"[train] loss curve not drawn: {e}")

    # -- the loop --------------------------------------------------------------------------------
    def _should_stop(self, flag: _StopFlag) -> Optional[str]:
        reason = flag.reason
        budget = self.cfg.time_budget
        if reason is None and budget is not None and time.time() - self.t_created >= budget:
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
        self._log(f"[train] non-finite loss at step {self.step}: step skipped "
                  f"({self.bad_in_row} in a row, {self.bad_steps} in all)")
        if self.bad_in_row >= self.cfg.max_bad_steps:
            raise TrainingError(
                f"{self.bad_in_row} non-finite losses in a row at step {self.step}: training diverged. "
                f"Lower --lr, keep grad clipping on, or try --amp bf16/off; resume from the last good "
                f"checkpoint in {self.out}")

    def run(self) -> TrainResult:
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            metrics = MetricsLog(self.out / "metrics.csv", self.step)
        self._log(f"[train] {self.data_desc}")
        self._log(f"[train] U-Net {count_parameters(self.model):,} parameters on {self.device}"
                  f"{' ×' + str(self.dinfo.world) if self.dinfo.enabled else ''}, amp={self.amp_dtype}, "
                  f"batch {cfg.batch_size}, {self.batches.batches_per_epoch()} batches/epoch per process")
        self.t_start = time.time()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.is_main),
                   desc="train", unit="step", dynamic_ncols=True)
        loss_sum = torch.zeros((), device=self.device)
        gn_sum = torch.zeros((), device=self.device)
        n_in_window, n_gn, t_window, imgs_per_s = 0, 0, time.time(), 0.0
        stop_reason, last_ckpt = "done", None
        sync_every = 10 if self.dinfo.enabled else 1
        saved_at = sampled_at = -1
        stream = self._batch_stream()
        self.model.train()
        with _StopFlag() as flag:
            while self.total_steps is None or self.step < self.total_steps:
                if self.step % sync_every == 0:
                    reason = self._should_stop(flag)
                    if reason:
                        stop_reason = reason
                        break
                loss, gn, ok = self.train_step(next(stream))
                self.batch_in_epoch += 1
                if not ok:
                    self._bad_step()
                    continue
                self.step += 1
                self.bad_in_row = 0
                loss_sum += loss.detach()
                n_in_window += 1
                if gn is not None:
                    gn_sum += gn.detach().float()
                    n_gn += 1
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    now = time.time()
                    imgs_per_s = n_in_window * cfg.batch_size / max(now - t_window, 1e-9)
                    mean_loss = (loss_sum / n_in_window).item()
                    mean_gn = (gn_sum / max(n_gn, 1)).item()
                    if self.is_main:
                        metrics.write({"step": self.step, "epoch": self.epoch, "loss": f"{mean_loss:.6f}",
                                       "lr": f"{self.lr_sched.get_last_lr()[0]:.3e}", "grad_norm": f"{mean_gn:.4f}",
                                       "images_per_s": f"{imgs_per_s:.1f}",
                                       "elapsed_s": f"{self.elapsed_before + now - self.t_start:.1f}",
                                       "bad_steps": self.bad_steps})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{imgs_per_s:.0f}", epoch=self.epoch)
                    loss_sum.zero_()
                    gn_sum.zero_()
                    n_in_window, n_gn, t_window = 0, 0, time.time()
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_samples()
                    sampled_at = self.step
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    last_ckpt = self.save_checkpoint() or last_ckpt
                    saved_at = self.step
                    self.save_loss_curve()
            bar.close()
            # final outputs: a checkpoint at the stopping step, samples and the loss curve
            if saved_at != self.step:
                last_ckpt = self.save_checkpoint() or last_ckpt
            if sampled_at != self.step:
                self.save_samples()
            self.save_loss_curve()
        self._log(f"[train] stopped at step {self.step} ({stop_reason}); checkpoint {last_ckpt}")
        if self.dinfo.enabled:
            dist.barrier()
        self.dinfo.close()
        return TrainResult(self.out, self.step, self.epoch, stop_reason, last_ckpt, imgs_per_s, self.bad_steps,
                           self.ema.module.eval(), self.data_desc)
