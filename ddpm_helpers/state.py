"""A run's state in a checkpoint: what is saved, how a Trainer is put back, and every seed derived from cfg.seed.

Saving: :func:`capture` gathers the model, EMA, optimizer, LR schedule, grad scaler, the position (step,
epoch, batch_in_epoch), every RNG state (torch, CUDA, NumPy, Python and the generator that draws t and
ε; each rank's under DDP), the config, the fixed sampling noise and the data identity into the dict that
checkpoint.save_checkpoint_file writes. Resuming: :func:`resume` picks the checkpoint, checks that it fits
this run (config and data) *before* anything is moved, sets newer checkpoints aside, then :func:`restore`
loads everything back, so that N/2 steps + resume + N/2 steps equal N steps straight.
"""
from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Union

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt_io
from .config import TrainConfig, derive_seed
from .unet import count_parameters

if TYPE_CHECKING:
    from .train import Trainer

# Every seed a run derives from cfg.seed (one place, so that two runs with one seed draw the same numbers).
RANK_SEED_OFFSET = 1000           # torch / NumPy / Python seeds of rank r once the model exists: seed + 1000·r
NOISE_SEED_FACTOR = 7919          # the generator of t and ε on rank r: seed·7919 + r
SAMPLE_NOISE_SEED_OFFSET = 12345  # the fixed noise of the in-training sample grids: seed + 12345


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's random (the global generators)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def noise_generator(device: torch.device, seed: int, rank: int, step: int = 0) -> torch.Generator:
    """The generator on the training device that draws each step's t and ε (one stream per rank); after an inexact
    resume at step s a fresh stream: seed · 7919 + rank + 1_000_003 · s (config.derive_seed)."""
    return torch.Generator(device).manual_seed(derive_seed(step, seed * NOISE_SEED_FACTOR + rank))


def fixed_sample_noise(cfg: TrainConfig) -> torch.Tensor:
    """The starting noise of every in-training sample grid (sample_n, C, H, W), so grids compare across steps."""
    g = torch.Generator().manual_seed(cfg.seed + SAMPLE_NOISE_SEED_OFFSET)
    c, s = cfg.model.in_channels, cfg.data.image_size
    return torch.randn(cfg.sample_n, c, s, s, generator=g)


def numpy_state_as_tensors(state: tuple) -> Dict[str, Any]:
    """NumPy's global RNG state ('MT19937', keys, pos, has_gauss, cached_gaussian) with the keys as an int64 tensor,
    so that a checkpoint loads weights-only without NumPy's array constructor."""
    kind, keys, pos, has_gauss, cached = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def numpy_state_from_saved(saved: Any) -> tuple:
    """The tuple np.random.set_state takes, from numpy_state_as_tensors' dict or an older checkpoint's tuple."""
    if isinstance(saved, dict):
        return (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                saved["cached_gaussian"])
    return tuple(saved)


def python_state_as_tensors(state: tuple) -> Dict[str, Any]:
    """Python's random state (version, 625 ints < 2³², gauss_next) with the ints as an int64 tensor."""
    version, internal, gauss_next = state
    return {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def python_state_from_saved(saved: Any) -> tuple:
    """The tuple random.setstate takes, from python_state_as_tensors' dict or an older checkpoint's tuple."""
    if isinstance(saved, dict):
        return saved["version"], tuple(int(v) for v in saved["state"].tolist()), saved["gauss_next"]
    return tuple(saved)


def rng_state(gen: torch.Generator) -> Dict[str, Any]:
    """Every RNG state of this process: torch, NumPy, Python, the t/ε generator and (if any) CUDA's; only tensors,
    numbers and strings (a checkpoint loads weights-only)."""
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state_as_tensors(np.random.get_state()),
             "python": python_state_as_tensors(random.getstate()),
             "gen": gen.get_state(), "gen_device": str(gen.device)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], gen: torch.Generator) -> None:
    """Put back what rng_state saved (or an older checkpoint's NumPy/Python tuples)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(numpy_state_from_saved(state["numpy"]))
    random.setstate(python_state_from_saved(state["python"]))
    gen.set_state(state["gen"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def capture(trainer: "Trainer") -> Optional[Dict[str, Any]]:
    """The checkpoint dict of the trainer's current state (keys listed in checkpoint.py), on rank 0; None
    on other ranks. Every rank must call it: under DDP the ranks' RNG states are gathered."""
    rng = rng_state(trainer.gen)
    per_rank = None
    if trainer.dinfo.enabled:
        per_rank = [None] * trainer.dinfo.world
        dist.all_gather_object(per_rank, rng)
    if not trainer.is_main:
        return None
    return {
        "format": ckpt_io.FORMAT, "config": ckpt_io.config_to_dict(trainer.cfg),
        "model": trainer.model.state_dict(), "ema": trainer.ema.module.state_dict(),
        "ema_updates": trainer.ema.updates,
        "optimizer": trainer.opt.state_dict(), "lr_schedule": trainer.lr_sched.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
        "step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
        "rng": rng, "per_rank": per_rank, "world_size": trainer.dinfo.world, "sample_noise": trainer.sample_noise,
        "bad_steps": trainer.bad_steps, "elapsed": trainer.elapsed_before + (time.time() - trainer.t_start),
        "data": trainer.data.description, "data_identity": trainer.data.identity,
        "parameters": count_parameters(trainer.model),
    }


# ---------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------
def resume(trainer: "Trainer", resume_from: Union[str, Path, bool, None],
           allow_data_change: bool = False) -> Optional[Path]:
    """Put the trainer back at a checkpoint, or check that a fresh run overwrites nothing; return the checkpoint.

    resume_from: True (the newest checkpoint in the run folder), a checkpoint file or a folder to search
    (e.g. a previous Kaggle version under /kaggle/input), or None/False for a fresh run, which refuses a
    folder holding checkpoints. The checkpoint's config and data are checked before anything is moved
    (CheckpointError, DataChangedError unless allow_data_change); only then are newer checkpoints of this
    folder set aside and the state loaded.
    """
    out, log = trainer.out, trainer.log
    if not resume_from:
        existing = ckpt_io.list_checkpoints(out)
        if existing:
            raise ckpt_io.CheckpointError(
                f"{out} already holds checkpoints (newest {existing[-1].name}): add --resume (in Python: "
                f"resume=True) to continue that run, or choose another --out")
        return None
    path = ckpt_io.latest_checkpoint(out if resume_from is True else Path(resume_from))
    if path is None:
        if resume_from is True:
            log(f"[train] no checkpoint in {out}; starting a fresh run")
            return None
        raise ckpt_io.CheckpointError(f"--resume {resume_from}: no checkpoint found there")
    ck = ckpt_io.load_checkpoint(path, map_location="cpu")   # RNG states must stay CPU ByteTensors
    if ck.get("exported") is not None:
        raise ckpt_io.CheckpointError(f"--resume {path}: an exported model holds only weights (no optimizer, EMA "
                                      "or RNG state), so training cannot continue from it; resume from the run's "
                                      "ckpt_*.pt, or start a new run")
    missing = [k for k in ("ema", "optimizer", "lr_schedule", "step", "epoch", "batch_in_epoch", "rng",
                           "sample_noise") if k not in ck]
    if missing:
        raise ckpt_io.CheckpointError(f"--resume {path}: the checkpoint is damaged (no {', '.join(missing)}); "
                                      "resume from an earlier ckpt_*.pt of the run")
    ckpt_io.check_compatible(ck, trainer.cfg, path)
    ckpt_io.check_same_data(ck, trainer.data.identity, path, allow_data_change, log=log)
    if trainer.is_main:
        set_aside_newer_checkpoints(out, path, ck["step"], log)
    restore(trainer, ck)
    log(f"[train] resumed from {path} at step {trainer.step} (epoch {trainer.epoch}, batch {trainer.batch_in_epoch})")
    return path


def set_aside_newer_checkpoints(out: Path, path: Path, step: int, log: Callable[[str], None]) -> None:
    """Resuming this folder from an older checkpoint abandons the newer ones: rename them (nothing is
    deleted) so that pruning and the next --resume follow the run that continues."""
    for newer in ckpt_io.list_checkpoints(out):
        if ckpt_io.checkpoint_step(newer) > step and newer.resolve() != path.resolve():
            newer.rename(newer.with_name(newer.name + ".abandoned"))
            log(f"[train] {newer.name} belongs to the abandoned continuation: renamed to *.abandoned")


def restore(trainer: "Trainer", ck: Dict[str, Any]) -> None:
    """Load weights, EMA, optimizer, LR schedule, scaler, position, sampling noise and RNG states."""
    trainer.model.load_state_dict(ck["model"])
    trainer.ema.module.load_state_dict(ck["ema"])
    trainer.ema.updates = int(ck.get("ema_updates", 0))
    trainer.ema.n_averaged.fill_(trainer.ema.updates)
    trainer.opt.load_state_dict(ck["optimizer"])
    trainer.lr_sched.load_state_dict(ck["lr_schedule"])
    if ck.get("scaler"):
        trainer.scaler.load_state_dict(ck["scaler"])
    trainer.step, trainer.epoch, trainer.batch_in_epoch = ck["step"], ck["epoch"], ck["batch_in_epoch"]
    trainer.bad_steps = ck.get("bad_steps", 0)
    trainer.elapsed_before = ck.get("elapsed", 0.0)
    trainer.sample_noise = ck["sample_noise"].cpu()
    _restore_position_and_rng(trainer, ck)


def _restore_position_and_rng(trainer: "Trainer", ck: Dict[str, Any]) -> None:
    """Continue the data order and the noise exactly; or, when the batch size, process count or seed
    changed (say a T4×2 run continued on one GPU), as closely as possible, with a warning."""
    cfg, dinfo = trainer.cfg, trainer.dinfo
    saved = ckpt_io.config_from_dict(ck["config"])
    old_world = int(ck.get("world_size", 1))
    if (saved.batch_size, old_world, saved.seed) != (cfg.batch_size, dinfo.world, cfg.seed):
        # keep the number of images already used this epoch (old global batch × old batch index)
        trainer.batch_in_epoch = min(ck["batch_in_epoch"] * saved.batch_size // cfg.batch_size,
                                     trainer.batches.batches_per_epoch())
        trainer.log(f"[train] the checkpoint was trained with batch size {saved.batch_size}, {old_world} "
                    f"process(es), seed {saved.seed}; this run uses {cfg.batch_size}, {dinfo.world}, {cfg.seed}: "
                    f"continuing at batch {trainer.batch_in_epoch} of epoch {trainer.epoch}, with fresh noise. "
                    f"Training goes on, but not bit for bit as an uninterrupted run would.")
        trainer.gen = noise_generator(trainer.gen.device, cfg.seed, dinfo.rank, step=trainer.step)
        return
    rng = ck["rng"]
    if dinfo.enabled and ck.get("per_rank"):
        rng = ck["per_rank"][dinfo.rank]
    if str(trainer.gen.device) == rng.get("gen_device"):
        set_rng_state(rng, trainer.gen)
    else:
        trainer.log(f"[train] checkpoint RNG was on {rng.get('gen_device')}; "
                    f"drawing fresh noise on {trainer.gen.device}")
        set_rng_state({**rng, "gen": trainer.gen.get_state()}, trainer.gen)
