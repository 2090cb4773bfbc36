"""Generation from a trained model: image grids, and folders of single PNGs for metrics.

Reproducibility: sample i's starting noise x_T depends only on (seed, i); it is drawn from its own
generator seeded with ``seed * 1_000_003 + i``. The per-step noise of the stochastic samplers (DDPM,
DDIM with η > 0) comes from one generator per batch, seeded with ``seed * 1_000_003 + first index``
(+ a fixed offset), so a batch of the same indices always gives the same images. ``write_samples`` cuts
the indices into aligned batches [k·B, (k+1)·B) and regenerates a whole batch whenever one of its files
is missing or damaged (every PNG it keeps is decoded in full first), so a resumed folder holds exactly the
images an uninterrupted run would have written.
Deterministic DDIM (η = 0) depends on x_T alone, whatever the batching.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from . import images
from ._types import moved_names
from .checkpoint import CheckpointError, latest_checkpoint, load_model
from .config import SAMPLER_NAMES, VARIANCE_NAMES, derive_seed
from .diffusion import ddim_sample, ddpm_sample, eval_mode
from .dpm_solver import DEFAULT_SPACING as SOLVER_SPACING
from .dpm_solver import dpm_solver_sample
from .errors import ConfigError, DDPMError
from .fast_sampling import compile_for_sampling
from .files import write_json
from .images import png_problem, read_png, save_image_grid, to_model_range, write_png_atomic
from .runtime import default_device
from .schedule import SPACINGS, NoiseSchedule

# Names that lived here before issue 19 (PNG I/O moved to images): see moved_names.
__getattr__ = moved_names(__name__, {n: images for n in ("DamagedImageError", "PNG_SIGNATURE", "PNG_END")})

from ._types import PathLike

SOLVER_ORDERS = {"dpm++2m": 2, "dpm++3m": 3}   # DPM-Solver++ multistep samplers and their order
STEP_NOISE_OFFSET = 500_000_009   # keeps the per-step noise stream apart from every sample's x_T stream
SAMPLES_JSON = "samples.json"
SAMPLES_FORMAT = "ddpm_helpers/samples/1"
# samples.json fields that must agree before new images may join a folder
SETTING_KEYS = ("weights", "sampler", "steps", "eta", "variance", "seed", "timesteps", "schedule",
                "image_size", "channels", "batch_layout", "order", "spacing")


class NonFiniteSamplesError(DDPMError, ValueError):
    """The sampler produced NaN or infinity: reported, never written as black images."""


class SampleFolderError(DDPMError, ValueError):
    """A sample folder whose samples.json disagrees with the requested settings (mixing would corrupt metrics)."""


# ---------------------------------------------------------------------------------------------
# Noise and batches
# ---------------------------------------------------------------------------------------------
def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s starting noise: seed · 1 000 003 + index."""
    return derive_seed(seed, index)


def initial_noise(seed: int, start: int, count: int, shape: Sequence[int]) -> torch.Tensor:
    """x_T ~ N(0, I) for samples start … start+count−1, each from its own CPU generator.

    shape: (C, H, W). Returns (count, C, H, W) float32 on the CPU; sample i depends only on (seed, i).
    """
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(sample_seed(seed, i)))
             for i in range(start, start + count)]
    return torch.stack(noise) if noise else torch.empty(0, *shape)


def default_spacing(sampler: str, spacing: Optional[str] = None) -> Optional[str]:
    """The timestep grid a sampler runs on: ``spacing`` if given, else "uniform" for DDIM (the DDIM paper's, so
    FIDs compare with published numbers) and dpm_solver.DEFAULT_SPACING for DPM-Solver++; None for DDPM."""
    if sampler == "ddpm":
        return None
    return spacing or (SOLVER_SPACING if sampler in SOLVER_ORDERS else "uniform")


def _check_sampler(sampler: str, steps: Optional[int], eta: float, variance: str, T: int,
                   spacing: Optional[str] = None) -> None:
    """Raise a ConfigError naming the bad argument (and its flag) and what would work."""
    if sampler not in SAMPLER_NAMES:
        raise ConfigError(f"unknown sampler {sampler!r} (--sampler); use one of {', '.join(SAMPLER_NAMES)}")
    if variance not in VARIANCE_NAMES:
        raise ConfigError(f"unknown variance {variance!r} (--variance); use one of {', '.join(VARIANCE_NAMES)}")
    if sampler != "ddpm" and (steps is None or not 1 <= steps <= T):
        raise ConfigError(f"--steps {steps}: {sampler.upper()} steps must be between 1 and T={T}, the model's "
                          "number of diffusion steps")
    if spacing is not None and spacing not in SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r} (--spacing); use one of {', '.join(SPACINGS)}")
    if not 0 <= eta <= 1:
        raise ConfigError(f"--eta {eta}: eta must be in [0, 1] (0 deterministic DDIM, 1 as noisy as DDPM)")


def _model_image_shape(model: nn.Module, image_size: Optional[int], channels: Optional[int]) -> tuple:
    """(C, H, W) from the arguments, else from the U-Net's config (cfg.in_channels, cfg.image_size)."""
    cfg = getattr(model, "cfg", None)
    channels = channels or getattr(cfg, "in_channels", None)
    image_size = image_size or getattr(cfg, "image_size", None)
    if channels is None or image_size is None:
        raise ValueError("pass image_size and channels: the model's config does not give them")
    return (int(channels), int(image_size), int(image_size))


def _default_device(model: nn.Module, device) -> torch.device:
    """The given device, else the device of the model's parameters (CPU for a parameterless callable)."""
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def _to_device(model: nn.Module, schedule: NoiseSchedule, device) -> Tuple[torch.device, NoiseSchedule]:
    """Move the model (when it can move) and the schedule to ``device`` (default: the model's); both returned."""
    device = _default_device(model, device)
    if hasattr(model, "to"):
        model.to(device)
    return device, schedule.to(device)


@torch.no_grad()
def _inner(progress: bool) -> bool:
    """The per-step bar under a batch bar: only on a terminal, where tqdm can redraw two lines; in a log or a
    notebook's captured output its cursor moves would leave ``[A`` residue, so only the outer bar shows."""
    return progress and sys.stderr.isatty()


def sample_batch(model: nn.Module, schedule: NoiseSchedule, start: int, count: int, shape: Sequence[int],
                 sampler: str = "ddim", steps: int = 50, eta: float = 0.0, variance: str = "beta", seed: int = 0,
                 device=None, progress: bool = False, spacing: Optional[str] = None) -> torch.Tensor:
    """Samples start … start+count−1 in one call of ddpm_sample (Ho et al. Alg. 2), ddim_sample (Song et al. Eq. 12)
    or dpm_solver_sample (DPM-Solver++ 2M/3M); spacing: the grid of DDIM and DPM-Solver++ (see default_spacing).

    shape: (C, H, W). Returns x_0 (count, C, H, W) float32 on the CPU, clamped to [−1, 1].
    """
    device = _default_device(model, device)
    x_T = initial_noise(seed, start, count, shape).to(device)
    step_noise = torch.Generator().manual_seed(sample_seed(seed, start) + STEP_NOISE_OFFSET)
    if sampler == "ddpm":
        x = ddpm_sample(model, x_T.shape, schedule, generator=step_noise, device=device, variance=variance,
                        noise=x_T, progress=progress)
    elif sampler in SOLVER_ORDERS:
        x = dpm_solver_sample(model, x_T.shape, schedule, steps=steps, order=SOLVER_ORDERS[sampler], noise=x_T,
                              spacing=default_spacing(sampler, spacing), device=device, progress=progress)
    else:
        x = ddim_sample(model, x_T.shape, schedule, steps=steps, eta=eta, generator=step_noise, device=device,
                        noise=x_T, progress=progress, spacing=default_spacing(sampler, spacing))
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:        # clamping keeps NaN: they would be written as black images
        raise NonFiniteSamplesError(f"{bad} of samples {start}…{start + count - 1} hold NaN or infinity ({sampler}, "
                                    f"{steps} steps): nothing of them was written; the weights may have diverged "
                                    "(try an earlier checkpoint) or the sampler settings are unstable (try ddim)")
    return x.float().cpu()


def generate(model: nn.Module, schedule: NoiseSchedule, n: int, sampler: str = "ddim", steps: int = 50,
             eta: float = 0.0, variance: str = "beta", batch_size: int = 64, seed: int = 0, device=None,
             image_size: Optional[int] = None, channels: Optional[int] = None, progress: bool = True,
             start: int = 0, spacing: Optional[str] = None) -> torch.Tensor:
    """Draw n samples in batches with DDPM (all T steps; ``variance`` picks σ_t), DDIM (``steps``, ``eta``) or
    DPM-Solver++ 2M/3M (``steps`` model calls); ``spacing``: the grid of DDIM and DPM-Solver++ (default_spacing).

    Sample i (i = start … start+n−1) starts from x_T seeded by (seed, i); DDIM with η = 0 is then independent
    of n and batching, while the stochastic samplers' step noise is seeded per batch (by its first index).
    image_size/channels default to the model's config; the model is moved to ``device`` if given and
    run in eval mode (its mode is restored). Returns (n, C, H, W) float32 in [−1, 1] on the CPU.
    """
    _check_sampler(sampler, steps, eta, variance, schedule.T, spacing)
    if n < 0 or batch_size < 1:
        raise ConfigError(f"need --n >= 0 and --batch-size >= 1, got n={n}, batch_size={batch_size}")
    shape = _model_image_shape(model, image_size, channels)
    device, schedule = _to_device(model, schedule, device)
    out = torch.empty(n, *shape)
    with eval_mode(model):
        bar = tqdm(total=n, desc=f"{sampler.upper()} samples", unit="img", disable=not progress)
        for lo in range(0, n, batch_size):
            count = min(batch_size, n - lo)
            out[lo:lo + count] = sample_batch(model, schedule, start + lo, count, shape, sampler, steps, eta,
                                              variance, seed, device, _inner(progress), spacing)
            bar.update(count)
        bar.close()
    return out


# ---------------------------------------------------------------------------------------------
# A folder of single PNGs (resumable)
# ---------------------------------------------------------------------------------------------
def sample_path(out_dir: PathLike, index: int) -> Path:
    """Where sample ``index`` goes: out_dir/000123.png (six digits, more when needed)."""
    return Path(out_dir) / f"{index:06d}.png"


def samples_to_redo(out_dir: PathLike, n: int, shape: Sequence[int]) -> Tuple[List[int], Dict[int, str]]:
    """Indices among 0 … n−1 whose PNG must be (re)written: missing ones, and damaged ones with the reason."""
    todo, damaged = [], {}
    for i in range(n):
        problem = png_problem(sample_path(out_dir, i), shape)
        if problem is not None:
            todo.append(i)
            if problem != "missing":
                damaged[i] = problem
    return todo, damaged


def weights_fingerprint(model: nn.Module) -> str:
    """A short SHA-256 of the model's state dict (names, shapes and bytes): identifies the weights in samples.json."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def sample_settings(model: nn.Module, schedule: NoiseSchedule, sampler: str, steps: int, eta: float,
                    variance: str, seed: int, shape: Sequence[int], batch_size: int = 64,
                    n: int = 0, spacing: Optional[str] = None) -> Dict[str, Any]:
    """The settings that decide which images a folder holds (compared on resume); irrelevant ones are None.

    Starting noise depends on (seed, index) only, but the per-step noise of a stochastic sampler (DDPM,
    DDIM with η > 0) is drawn per batch, so there the batch layout (batch size, n) must match too.
    order (DPM-Solver++'s) and spacing (the timestep grid of DDIM and DPM-Solver++) are recorded too.
    """
    stochastic = sampler == "ddpm" or float(eta) > 0
    return {"weights": weights_fingerprint(model), "sampler": sampler,
            "batch_layout": f"batch {int(batch_size)} of n {int(n)}" if stochastic else None,
            "steps": schedule.T if sampler == "ddpm" else int(steps),
            "eta": float(eta) if sampler == "ddim" else None,
            "order": SOLVER_ORDERS.get(sampler), "spacing": default_spacing(sampler, spacing),
            "variance": variance if sampler == "ddpm" else None,
            "seed": int(seed), "timesteps": schedule.T, "schedule": schedule.name,
            "image_size": int(shape[-1]), "channels": int(shape[0])}


def read_samples_json(out_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The folder's samples.json as a dict, or None when there is none."""
    path = Path(out_dir) / SAMPLES_JSON
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def _check_folder(existing: Optional[Dict[str, Any]], settings: Dict[str, Any], out_dir: Path) -> None:
    """Refuse a folder whose samples.json was written with other settings, or that has PNGs but no samples.json."""
    if existing is None:
        if any(out_dir.glob("[0-9]*.png")):
            raise SampleFolderError(f"{out_dir} holds PNGs but no {SAMPLES_JSON}: cannot tell how they were made. "
                                    "Use an empty folder.")
        return
    if existing.get("sampler") == "ddim" and "spacing" not in existing:
        existing = {**existing, "spacing": "uniform"}      # written before the spacing was recorded: DDIM's default
    diffs = [f"{k}: folder has {existing.get(k)!r}, requested {settings[k]!r}"
             for k in SETTING_KEYS if existing.get(k) != settings[k]]
    if diffs:
        raise SampleFolderError(f"{out_dir} was written with other settings; refusing to mix samples:\n  "
                                + "\n  ".join(diffs) + "\nUse another --out-dir, or the folder's own settings.")


@dataclass
class WriteReport:
    """What write_samples did: how many PNGs it wrote and skipped (already there and whole), and where;
    ``damaged`` maps the index of each damaged PNG it found and rewrote to what was wrong with it."""

    out_dir: Path
    written: int
    skipped: int
    n: int
    damaged: Dict[int, str] = field(default_factory=dict)


def write_samples(model: nn.Module, schedule: NoiseSchedule, out_dir: PathLike, n: int, sampler: str = "ddim",
                  steps: int = 50, eta: float = 0.0, variance: str = "beta", batch_size: int = 64, seed: int = 0,
                  device=None, image_size: Optional[int] = None, channels: Optional[int] = None,
                  progress: bool = True, info: Optional[Dict[str, Any]] = None,
                  spacing: Optional[str] = None) -> WriteReport:
    """Write samples 0 … n−1 as out_dir/000000.png …, resumably: only batches with a missing or damaged file
    (truncated, undecodable, other size or mode: see png_problem) are generated.

    Batches are aligned, [k·B, (k+1)·B), so a regenerated batch matches the first run's images exactly; only
    its missing and damaged files are written (atomically). out_dir/samples.json records the settings (and
    ``info``, e.g. the checkpoint path) and a folder written with other settings is refused (SampleFolderError).
    """
    _check_sampler(sampler, steps, eta, variance, schedule.T, spacing)
    if n < 0 or batch_size < 1:
        raise ConfigError(f"need --n >= 0 and --batch-size >= 1, got n={n}, batch_size={batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = _model_image_shape(model, image_size, channels)
    settings = sample_settings(model, schedule, sampler, steps, eta, variance, seed, shape, batch_size, n, spacing)
    existing = read_samples_json(out_dir)
    _check_folder(existing, settings, out_dir)
    for stale in out_dir.glob(".*.png.*.tmp"):          # temporary files of an interrupted write
        stale.unlink(missing_ok=True)
    record = {**(existing or {}), **(info or {}), **settings, "format": SAMPLES_FORMAT, "batch_size": batch_size,
              "n": max(n, int((existing or {}).get("n", 0)))}
    write_json(out_dir / SAMPLES_JSON, record, sort_keys=True)

    missing, damaged = samples_to_redo(out_dir, n, shape)
    batches = sorted({i // batch_size for i in missing})
    device, schedule = _to_device(model, schedule, device)
    todo = set(missing)
    with eval_mode(model):
        bar = tqdm(total=len(missing), desc=f"{sampler.upper()} → {out_dir.name}", unit="img", disable=not progress)
        for k in batches:
            lo, hi = k * batch_size, min((k + 1) * batch_size, n)
            images = sample_batch(model, schedule, lo, hi - lo, shape, sampler, steps, eta, variance, seed, device,
                                  _inner(progress), spacing)
            for i in range(lo, hi):
                if i in todo:
                    write_png_atomic(images[i - lo], sample_path(out_dir, i))
                    bar.update(1)
        bar.close()
    return WriteReport(out_dir, written=len(missing), skipped=n - len(missing), n=n, damaged=damaged)


def sample_files(out_dir: PathLike) -> List[Path]:
    """The numbered PNGs of a sample folder (write_samples' names, not a grid.png beside them), in index order."""
    pngs = (p for p in Path(out_dir).iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    return sorted((p for p in pngs if p.stem.isdigit()), key=lambda p: int(p.stem))


def read_sample_folder(out_dir: PathLike, limit: Optional[int] = None) -> torch.Tensor:
    """Read the PNGs of a sample folder (at most ``limit``), in index order. Returns uint8 (N, C, H, W)."""
    files = sample_files(out_dir)[:limit]
    if not files:
        raise FileNotFoundError(f"no sample PNGs in {out_dir}")
    return torch.stack([read_png(p) for p in files])


# ---------------------------------------------------------------------------------------------
# From a checkpoint (the command line's `sample` is cli.run_sample)
# ---------------------------------------------------------------------------------------------
def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint file, or the newest ckpt_*.pt in a run folder; CheckpointError with the reason otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no checkpoint in {path}: it holds no ckpt_*.pt file (train first, or point "
                              "--checkpoint at a .pt or .safetensors file)")
    return found


@dataclass
class SampleRun:
    """The result of sample_from_checkpoint: the grid's images (N, C, H, W) in [−1, 1] and path, and the folder
    report."""

    checkpoint: Path
    images: Optional[torch.Tensor] = None
    grid: Optional[Path] = None
    folder: Optional[WriteReport] = None


def default_steps(sampler: str) -> int:
    """Steps when none are given: 20 model calls for DPM-Solver++, 50 for DDIM (DDPM ignores it and runs all T)."""
    return 20 if sampler in SOLVER_ORDERS else 50


GRID_FROM_FOLDER_MAX = 64   # with both --out and --out-dir, the grid shows the first images of the folder


def sample_from_checkpoint(checkpoint: PathLike, n: int = 64, sampler: str = "ddim", steps: Optional[int] = 50,
                           eta: float = 0.0, seed: int = 0, out: Optional[PathLike] = None,
                           out_dir: Optional[PathLike] = None, ema: bool = True, device=None, batch_size: int = 64,
                           variance: Optional[str] = None, progress: bool = True, fast: str = "off",
                           spacing: Optional[str] = None) -> SampleRun:
    """Load a checkpoint (EMA weights by default) and write a grid PNG to ``out`` and/or single PNGs to ``out_dir``.

    checkpoint: a .pt file or a run folder (its newest checkpoint). variance: DDPM's σ_t, default the
    checkpoint's DiffusionConfig.variance. steps: DDIM steps (None → 50) or DPM-Solver++ steps, i.e. model calls
    (None → 20); DDPM always runs all T. spacing: the timestep grid (None → default_spacing(sampler)).
    With both outputs, the grid shows the folder's first min(n, 64) images (no second sampling run).
    fast: a fast_sampling mode for the U-Net (off, auto, cudagraph, compile, compile+cudagraph).
    """
    if out is None and out_dir is None:
        raise ValueError("give out (a grid PNG) and/or out_dir (a folder of single PNGs)")
    path = resolve_checkpoint(checkpoint)
    device = default_device(device)
    model, schedule, cfg = load_model(path, ema=ema, device=device)
    if fast != "off":
        model = compile_for_sampling(model, mode=fast)
    variance = variance or cfg.diffusion.variance
    steps = default_steps(sampler) if steps is None else steps
    kw = dict(sampler=sampler, steps=steps, eta=eta, variance=variance, batch_size=batch_size, seed=seed,
              device=device, image_size=cfg.data.image_size, channels=cfg.model.in_channels, progress=progress,
              spacing=spacing)
    run = SampleRun(checkpoint=path)
    if out_dir is not None:
        info = {"checkpoint": str(path.resolve()), "ema": bool(ema),
                "data": {"crop": cfg.data.crop, "image_size": cfg.data.image_size, "channels": cfg.data.channels,
                         "split": cfg.data.split}}
        run.folder = write_samples(model, schedule, out_dir, n, info=info, **kw)
    if out is not None:
        if out_dir is not None:
            folder_images = read_sample_folder(out_dir, limit=min(n, GRID_FROM_FOLDER_MAX))  # uint8
            run.images = to_model_range(folder_images)                                 # → [−1, 1]
        else:
            run.images = generate(model, schedule, n, **kw)
        run.grid = save_image_grid(run.images, out)
    return run
