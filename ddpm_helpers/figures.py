"""Every model-dependent figure of the series from one checkpoint, with the facts of the run beside them.

``draw_figures(checkpoint, out_dir)`` (and ``python -m ddpm_helpers figures --checkpoint RUN --out DIR``) writes,
at the checkpoint's own resolution and with ``prefix`` in front of every name:

=========================  ====================================================================================
``samples.png``            grid of n samples (grid sampler), nearest-neighbour enlarged to ≥ 3.5 in at 300 dpi
``trajectory.png/.pdf``    x_t and x̂_0 along a DDPM (all T steps) and a DDIM run from the same x_T
``ddpm_vs_ddim.png/.pdf``  the same x_T through DDPM and DDIM at several step counts
``eta.png/.pdf``           DDIM with η = 0, 0.5, 1 (two step-noise seeds) from the same x_T
``loss.png/.pdf``          the loss from the run's metrics.csv (raw and log-space rolling median)
``lr_grad_norm.png/.pdf``  learning rate and gradient norm from metrics.csv
``nearest.png/.pdf``       a few samples above their nearest training images (L2 in pixel space)
``reverse.gif``            the reverse process as an animation: x_t (left) and x̂_0 (right)
``figures.json``           the facts (preset, steps, images seen, hardware, sampler, seed, checkpoint, date),
                           the SWD numbers and every file written
``captions.md``            caption-ready text, one paragraph per figure
=========================  ====================================================================================

The loss figures need the run's metrics.csv beside the checkpoint; the nearest neighbours and the SWD
(swd.py: samples against real images the run never trained on, beside two disjoint real sets at the same n)
need the training data; each is skipped with a printed reason when its input is missing. Plots are one
report column (3.5 in) or the full width (7 in) wide, in plotting.print_style, PNG at 300 dpi plus PDF.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from . import plotting
from ._types import PathLike
from .cache import cache_file_name, usable_cache_dir
from .celeba import DataNotFoundError
from .checkpoint import load_checkpoint, load_model
from .config import FIGURE_PARTS, TRAIN_PRESETS, derive_seed
from .data import offline_faces, prepare_images
from .diffusion import ddim_sample, ddim_timesteps, ddpm_sample
from .errors import DDPMError
from .files import atomic_open, write_json
from .generate import generate, initial_noise, resolve_checkpoint
from .images import image_grid, to_unit_range, unit_to_uint8, write_grid
from .runtime import default_device
from .swd import heldout_images, swd_report

FIGURES_FORMAT = "ddpm_helpers/figures/1"
GRID_PRINT_PX = 1050          # the sample grid is enlarged to at least this width: 3.5 in at 300 dpi
COMPARE_STEPS = (100, 50, 20, 10)


@dataclass(frozen=True)
class FigureOptions:
    """What to draw. n: grid samples; sampler/steps: the grid's (and SWD samples') sampler; swd_n: samples scored."""

    n: int = 64
    seed: int = 0
    sampler: str = "ddim"
    steps: int = 50
    compare_steps: Tuple[int, ...] = COMPARE_STEPS
    n_compare: int = 8            # images in the DDPM-vs-DDIM and η figures
    n_neighbours: int = 6         # samples in the memorisation check
    swd_n: int = 500              # samples scored by SWD (capped by the held-out set)
    gif_images: int = 9
    gif_steps: int = 25           # DDIM steps of the animation (one frame each)
    main_steps: int = 50          # DDIM steps of the trajectory and η figures
    data: bool = True             # False: no nearest neighbours, no SWD

    @classmethod
    def quick(cls, **kw) -> "FigureOptions":
        """A few images and steps: seconds on a CPU, for tests."""
        base = dict(n=16, steps=10, compare_steps=(10, 5), n_compare=4, n_neighbours=3, swd_n=24, gif_images=4,
                    gif_steps=10, main_steps=10)
        return cls(**{**base, **kw})


@dataclass
class FigureSet:
    """What draw_figures wrote: {figure name: [paths]}, the facts, the SWD report (or None) and what was skipped."""

    out_dir: Path
    files: Dict[str, List[Path]] = field(default_factory=dict)
    facts: Dict[str, Any] = field(default_factory=dict)
    swd: Optional[Any] = None
    skipped: Dict[str, str] = field(default_factory=dict)
    captions: Dict[str, str] = field(default_factory=dict)
    json_path: Optional[Path] = None
    captions_path: Optional[Path] = None


# ---------------------------------------------------------------------------------------------
# Facts of the run
# ---------------------------------------------------------------------------------------------
def guess_preset(cfg) -> str:
    """The name of the training preset whose model, schedule, batch size and learning rate match cfg, else 'custom'."""
    for name, preset in TRAIN_PRESETS.items():
        if (preset.model, preset.diffusion, preset.batch_size, preset.lr) == (cfg.model, cfg.diffusion,
                                                                              cfg.batch_size, cfg.lr):
            return name
    return "custom"


def machine_description(device: torch.device) -> str:
    """'NVIDIA H200' on a GPU, else 'x86_64 CPU, 2 cores'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine() or 'unknown'} CPU, {os.cpu_count()} cores"


def sampler_label(sampler: str, steps: int, T: int, eta: float = 0.0) -> str:
    """'DDIM 50 steps, η = 0' / 'DDPM 1000 steps' / 'DPM-Solver++(2M) 20 steps'."""
    if sampler.startswith("dpm++"):
        return f"DPM-Solver++({sampler[5:].upper()}) {steps} steps"
    return f"DDPM {T} steps" if sampler == "ddpm" else f"DDIM {steps} steps, η = {eta:g}"


def run_facts(path: Path, ckpt: Dict[str, Any], cfg, opts: FigureOptions, device: torch.device,
              ema: bool, trained_on: Optional[str]) -> Dict[str, Any]:
    """The facts a caption needs, from the checkpoint and the drawing options."""
    step = int(ckpt.get("step", 0))
    return {
        "checkpoint": str(path.resolve()), "step": step, "epoch": ckpt.get("epoch"),
        "images_seen": step * cfg.batch_size, "batch_size": cfg.batch_size, "preset": guess_preset(cfg),
        "parameters": ckpt.get("parameters"), "training_seconds": round(float(ckpt.get("elapsed") or 0), 1),
        "trained_on": trained_on,                          # checkpoints do not record their hardware
        "data": ckpt.get("data"), "max_images": cfg.data.max_images, "crop": cfg.data.crop,
        "image_size": cfg.data.image_size, "channels": cfg.model.in_channels,
        "schedule": f"{cfg.diffusion.schedule}, T = {cfg.diffusion.timesteps}", "lr": cfg.lr,
        "weights": f"EMA (decay {cfg.ema_decay})" if ema else "raw (not EMA)",
        "sampler": sampler_label(opts.sampler, opts.steps, cfg.diffusion.timesteps), "seed": opts.seed,
        "drawn_on": machine_description(device), "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# DDPM's reverse variance, as a caption writes it
VARIANCE_TEXT = {"beta": "σ_t² = β_t", "posterior": "σ_t² = β̃_t, the posterior variance"}


def facts_sentence(f: Dict[str, Any]) -> str:
    """One sentence naming the model behind a figure."""
    seconds = f["training_seconds"]
    took = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
    where = f" on {f['trained_on']}" if f.get("trained_on") else ""
    return (f"Model: {f['preset']} preset ({f['parameters']:,} parameters), {f['image_size']} px, "
            f"{f['step']:,} steps ({f['images_seen']:,} images seen, {took} of training{where}), {f['weights']} "
            f"weights; data: {f['data']}.")


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def write_grid_png(images: torch.Tensor, path: Path, nrow: Optional[int] = None,
                   min_width: int = GRID_PRINT_PX) -> Tuple[Path, int]:
    """A grid of images (B, C, H, W) in [−1, 1] as PNG, enlarged by an integer factor (nearest neighbour) to at
    least min_width pixels, tagged 300 dpi (images.write_grid). Returns (path, factor)."""
    return write_grid(images, path, nrow=nrow, min_width=min_width, dpi=plotting.PRINT_DPI)


def write_reverse_gif(trajectory, final: torch.Tensor, path: Path, nrow: int, frame_ms: int = 80,
                      hold_ms: int = 2000) -> Tuple[Path, int]:
    """An animated GIF: each frame a grid of x_t beside a grid of x̂_0 at one step; the last frame, x_0, held longer.

    trajectory: diffusion.Trajectory with every step kept; final: x_0 (B, C, H, W). Returns (path, frames).
    """
    size = final.shape[-1]
    factor = max(1, 64 // size)                          # tiles of at least 64 px; noise frames compress badly

    def frame(xt: torch.Tensor, x0: torch.Tensor) -> Image.Image:
        array = unit_to_uint8(torch.cat([image_grid(xt, nrow=nrow), image_grid(x0, nrow=nrow)], dim=2))
        return Image.fromarray(array).resize((array.shape[1] * factor, array.shape[0] * factor), Image.NEAREST)

    frames = [frame(trajectory.xt[k], trajectory.x0_pred[k]) for k in range(len(trajectory.steps))]
    frames.append(frame(final, final))
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False)
    return path, len(frames)


def _save(fig, out: Path, name: str) -> List[Path]:
    """PNG (300 dpi) and PDF of a figure, in the print style."""
    with plotting.print_style():
        return plotting.save_figure(fig, out / name, formats=("png", "pdf"), dpi=plotting.PRINT_DPI)


# ---------------------------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------------------------
class _Drawer:
    """Holds the model, the options and the outputs while draw_figures runs its steps."""

    def __init__(self, path: Path, out: Path, prefix: str, opts: FigureOptions, device: torch.device, ema: bool,
                 log: Callable[[str], None], progress: bool):
        self.path, self.out, self.prefix, self.opts, self.device, self.log = path, out, prefix, opts, device, log
        self.progress = progress
        self.ckpt = load_checkpoint(path)
        self.model, self.schedule, self.cfg = load_model(path, ema=ema, device=device)
        self.T = self.schedule.T
        self.shape = (self.cfg.model.in_channels, self.cfg.data.image_size, self.cfg.data.image_size)
        self.result = FigureSet(out_dir=out)
        self.main_steps = min(opts.main_steps, self.T)          # DDIM steps of the trajectory, η and GIF figures

    def name(self, stem: str) -> str:
        return f"{self.prefix}{stem}"

    def add(self, key: str, paths: Sequence[Path], caption: str) -> None:
        self.result.files[key] = [Path(p) for p in paths]
        self.result.captions[key] = caption
        self.log(f"[figures] {', '.join(Path(p).name for p in paths)}")

    def skip(self, key: str, reason: str) -> None:
        self.result.skipped[key] = reason
        self.log(f"[figures] skipped {key}: {reason}")

    def x_T(self, count: int) -> torch.Tensor:
        """The starting noise of samples 0 … count−1 of the grid (generate.initial_noise)."""
        return initial_noise(self.opts.seed, 0, count, self.shape).to(self.device)

    def step_noise(self, offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.opts.seed, 7_919 * offset))

    # -- samples and SWD samples ---------------------------------------------------------------
    def samples(self, count: int) -> torch.Tensor:
        o = self.opts
        return generate(self.model, self.schedule, count, sampler=o.sampler, steps=min(o.steps, self.T), seed=o.seed,
                        device=self.device, variance=self.cfg.diffusion.variance, image_size=self.shape[1],
                        channels=self.shape[0], progress=self.progress)

    def grid(self, samples: torch.Tensor) -> None:
        path, factor = write_grid_png(samples[:self.opts.n], self.out / self.name("samples.png"))
        self.result.facts["grid_enlargement"] = factor
        size = self.shape[1]
        self.add("samples", [path], f"{self.opts.n} samples, {self.result.facts['sampler']}, seed {self.opts.seed} "
                 f"(sample i starts from noise seeded by (seed, i)); {size}×{size} px tiles, each pixel drawn as a "
                 f"{factor}×{factor} block (nearest neighbour).")

    # -- sampler figures -------------------------------------------------------------------------
    def samplers(self) -> torch.Tensor:
        """DDPM and DDIM at several step counts from the same x_T; writes ddpm_vs_ddim and trajectory; returns x_T."""
        k = self.opts.n_compare
        x_T = self.x_T(k)
        show = ddim_timesteps(self.T, self.main_steps)[::max(1, self.main_steps // 7)][:8]
        ddpm_x, ddpm_path = ddpm_sample(self.model, x_T.shape, self.schedule, generator=self.step_noise(1), noise=x_T,
                                        variance=self.cfg.diffusion.variance, keep_steps=show, progress=self.progress)
        rows = {f"DDPM\n{self.T} steps": ddpm_x}
        ddim_main, ddim_path = None, None
        for steps in sorted({s for s in self.opts.compare_steps if s <= self.T} | {self.main_steps}, reverse=True):
            if steps == self.main_steps:
                ddim_main, ddim_path = ddim_sample(self.model, x_T.shape, self.schedule, steps=steps, noise=x_T,
                                                   keep_steps=show, progress=False)
                rows[f"DDIM\n{steps} steps"] = ddim_main
            else:
                rows[f"DDIM\n{steps} steps"] = ddim_sample(self.model, x_T.shape, self.schedule, steps=steps,
                                                           noise=x_T, progress=False)
        cols = [f"$x_T$ #{i + 1}" for i in range(k)]
        with plotting.print_style():
            fig = plotting.plot_image_rows(rows, cols, scale=plotting.PAGE_WIDTH / k)
        self.add("ddpm_vs_ddim", _save(fig, self.out, self.name("ddpm_vs_ddim")),
                 f"The same {k} starting noises x_T (columns) through DDPM with all {self.T} steps "
                 f"({VARIANCE_TEXT.get(self.cfg.diffusion.variance, self.cfg.diffusion.variance)}) and DDIM "
                 "(η = 0) with "
                 f"{', '.join(r.split(chr(10))[1] for r in rows if r.startswith('DDIM'))}. "
                 "DDIM rows share x_T and no other randomness, so they agree with each other; DDPM adds fresh noise "
                 "at every step and draws other faces.")
        with plotting.print_style():
            fig = plotting.plot_trajectories({"DDPM": ddpm_path, f"DDIM {self.main_steps}": ddim_path}, index=0,
                                             finals={"DDPM": ddpm_x, f"DDIM {self.main_steps}": ddim_main},
                                             scale=plotting.PAGE_WIDTH / (len(show) + 1))
        self.add("trajectory", _save(fig, self.out, self.name("trajectory")),
                 f"The reverse chain of sample #1 of the figure above: x_t and the network's guess x̂_0 = "
                 f"(x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t at {len(show)} of DDIM-{self.main_steps}'s timesteps, for DDPM "
                 f"({self.T} steps) and DDIM ({self.main_steps} steps, η = 0) from the same x_T; last column: x_0.")
        return x_T

    def eta(self, x_T: torch.Tensor) -> None:
        rows = {}
        for label, eta, seed in (("η = 0", 0.0, 3), ("η = 0.5", 0.5, 3), ("η = 1\nnoise A", 1.0, 3),
                                 ("η = 1\nnoise B", 1.0, 4)):
            rows[label] = ddim_sample(self.model, x_T.shape, self.schedule, steps=self.main_steps, eta=eta, noise=x_T,
                                      generator=self.step_noise(seed), progress=False)
        k = x_T.shape[0]
        with plotting.print_style():
            fig = plotting.plot_image_rows(rows, [f"$x_T$ #{i + 1}" for i in range(k)], scale=plotting.PAGE_WIDTH / k)
        self.add("eta", _save(fig, self.out, self.name("eta")),
                 f"DDIM with {self.main_steps} steps from the same x_T (columns) as the DDPM/DDIM figure, with "
                 "η = 0 (deterministic), 0.5 and 1 (as noisy as DDPM; two step-noise seeds A and B): the more "
                 "step noise, the further the face drifts from the deterministic one.")

    def gif(self) -> None:
        k, steps = self.opts.gif_images, min(self.opts.gif_steps, self.T)
        x_T = self.x_T(k)
        final, path = ddim_sample(self.model, x_T.shape, self.schedule, steps=steps, noise=x_T,
                                  keep_steps=ddim_timesteps(self.T, steps), progress=False)
        nrow = max(1, int(math.ceil(math.sqrt(k))))
        gif, frames = write_reverse_gif(path, final.cpu(), self.out / self.name("reverse.gif"), nrow=nrow)
        self.result.facts["gif_frames"] = frames
        self.add("reverse", [gif], f"Animation ({frames} frames): DDIM {steps} steps (η = 0) for the first "
                 f"{k} samples of the grid; left x_t, right the guess x̂_0, from pure noise to the final images "
                 "(held on the last frame).")

    # -- training curves ---------------------------------------------------------------------------
    def curves(self) -> None:
        csv = self.path.parent / "metrics.csv"
        if not csv.is_file():
            for key in ("loss", "lr_grad_norm"):
                self.skip(key, f"no metrics.csv beside {self.path}")
            return
        with plotting.print_style():
            fig = plotting.plot_training_metrics(csv, columns=("loss",), panel_width=plotting.COLUMN_WIDTH,
                                                 panel_height=2.4)
        self.add("loss", _save(fig, self.out, self.name("loss")),
                 "Training loss L_simple = ‖ε − ε_θ(x_t, t)‖² (mean of each logged window, light) and its rolling "
                 "median in log space (dark), log scale.")
        with plotting.print_style():
            fig = plotting.plot_training_metrics(csv, columns=("lr", "grad_norm"), grad_clip=self.cfg.grad_clip,
                                                 panel_width=plotting.PAGE_WIDTH / 2, panel_height=2.4)
        self.add("lr_grad_norm", _save(fig, self.out, self.name("lr_grad_norm")),
                 f"Learning rate (linear warm-up over {self.cfg.warmup_steps} steps, then constant) and the mean "
                 f"gradient norm before clipping at {self.cfg.grad_clip:g}.")


# ---------------------------------------------------------------------------------------------
# Data: nearest training images and SWD
# ---------------------------------------------------------------------------------------------
def training_images(cfg, ckpt: Dict[str, Any], data_root: Optional[PathLike] = None) -> Tuple[np.ndarray, str]:
    """The images the run trained on, uint8 (N, H, W, C), from the checkpoint's data config (or data_root).

    Raises data.DataNotFoundError when they are not on this machine, ValueError when they cannot be told.
    """
    described = str(ckpt.get("data") or "")
    if described.startswith("offline LFW"):   # the train part, or all 100 for a run made before the split
        part = "train" if (ckpt.get("data_identity") or {}).get("heldout") else "all"
        faces = offline_faces(cfg.data.image_size, cfg.data.channels, part=part)
        return faces, described
    if "given directly" in described:
        raise ValueError("the run was given its images in Python (train(images=...)); they are not recorded")
    data_cfg = dataclasses.replace(cfg.data, root=str(data_root) if data_root else cfg.data.root,
                                   offline_fallback=False)
    data_cfg = dataclasses.replace(data_cfg, cache_dir=_usable_cache_dir(data_cfg))
    return prepare_images(data_cfg, progress=False)


def _usable_cache_dir(data_cfg) -> Optional[str]:
    """The run's cache folder, or the default one where the run's lies under the read-only Kaggle inputs without a
    ready cache (cache.usable_cache_dir)."""
    if data_cfg.cache_dir is None:
        return None
    return str(usable_cache_dir(data_cfg.cache_dir, cache_file_name(data_cfg)))


def _as_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) → float (N, C, H, W) in [0, 1]."""
    return to_unit_range(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2))


def nearest_neighbours(queries: torch.Tensor, pool: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k images of pool nearest to each query in L2 over pixels, as RMS distances on the 0–1 scale.

    queries: (Q, C, H, W), pool: (N, C, H, W), both in [0, 1]. Returns (distances (Q, k), indices (Q, k)).
    """
    d = torch.cdist(queries.flatten(1).double(), pool.flatten(1).double())          # (Q, N) Euclidean
    dist, idx = d.topk(k, dim=1, largest=False)
    return (dist / math.sqrt(queries[0].numel())).float(), idx


def _data_figures(d: _Drawer, samples: torch.Tensor, data_root: Optional[PathLike]) -> None:
    """nearest.png/.pdf and the SWD numbers; skipped with a reason when the data is not here."""
    try:
        train, train_desc = training_images(d.cfg, d.ckpt, data_root)
    except (DataNotFoundError, ValueError, OSError) as e:
        d.skip("nearest", f"training images not available ({str(e).splitlines()[0]}); pass --data DIR")
        d.skip("swd", "training images not available")
        return
    pool = _as_float(train)
    k = min(d.opts.n_neighbours, samples.shape[0])
    queries = (samples[:k] + 1) / 2
    dist, idx = nearest_neighbours(queries, pool, k=min(3, len(pool)))
    heldout, held_desc = None, ""
    try:
        heldout, held_desc = heldout_images(dataclasses.replace(d.cfg.data, root=str(data_root) if data_root else
                                                                d.cfg.data.root),
                                            identity=d.ckpt.get("data_identity"))
    except (DDPMError, ValueError, OSError) as e:
        d.skip("swd", f"no held-out real images ({str(e).splitlines()[0]})")
    _nearest_figure(d, queries, pool, dist, idx, heldout, len(train), train_desc)
    if heldout is not None:
        m = min(d.opts.swd_n, len(heldout), len(train), samples.shape[0])
        report = swd_report(samples[:m], heldout[:m], train[:m], reference=held_desc,
                            comparison=f"the first {m:,} training images", seed=d.opts.seed)
        d.result.swd = report
        d.log("[figures] " + str(report).replace("\n", "\n[figures] "))


def _nearest_figure(d: _Drawer, queries, pool, dist, idx, heldout, n_train: int, train_desc: str) -> None:
    rows = {"sample": queries * 2 - 1}
    labels = {"sample": [""] * len(queries)}
    for j in range(idx.shape[1]):
        rows[f"nearest {j + 1}"] = pool[idx[:, j]] * 2 - 1
        labels[f"nearest {j + 1}"] = [f"{v:.3f}" for v in dist[:, j].tolist()]
    facts = {"nearest_rms_samples_median": float(dist[:, 0].median())}
    reference = ""
    if heldout is not None:
        held = _as_float(heldout[:200])
        held_dist, _ = nearest_neighbours(held, pool, k=1)
        facts["nearest_rms_heldout_median"] = float(held_dist[:, 0].median())
        reference = (f" For comparison, {len(held)} held-out real images lie at a median {held_dist.median():.3f} "
                     "from their nearest training image; samples much closer than that would be copies.")
    d.result.facts.update(facts)
    with plotting.print_style():
        fig = plotting.plot_image_rows(rows, [f"sample #{i + 1}" for i in range(len(queries))],
                                       scale=plotting.PAGE_WIDTH / max(len(queries), 6), tile_labels=labels)
    d.add("nearest", _save(fig, d.out, d.name("nearest")),
          f"Memorisation check: the first {len(queries)} samples of the grid (top) and their {idx.shape[1]} nearest "
          f"images among the {n_train:,} training images ({train_desc}), by L2 distance over pixels; numbers: "
          f"RMS pixel distance on the 0–1 scale (median for the nearest: {facts['nearest_rms_samples_median']:.3f})."
          + reference)


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def draw_figures(checkpoint: PathLike, out_dir: PathLike, prefix: str = "", n: Optional[int] = None,
                 seed: int = 0, sampler: str = "ddim", steps: Optional[int] = None, device=None, data: bool = True,
                 data_root: Optional[PathLike] = None, quick: bool = False, swd_n: Optional[int] = None,
                 ema: bool = True, trained_on: Optional[str] = None, parts: Sequence[str] = FIGURE_PARTS,
                 progress: bool = False, log: Optional[Callable[[str], None]] = print) -> FigureSet:
    """Draw every model-dependent figure of the series from one checkpoint into out_dir (names: module docstring).

    checkpoint: a .pt file or a run folder (its newest checkpoint). prefix: put before every file name (e.g.
    "celeba32_"). n / sampler / steps / seed: the sample grid (default 64, DDIM 50 steps, seed 0); the SWD
    scores swd_n samples (default 500; capped by the held-out set) drawn the same way, the grid being their first
    n. data=False skips the nearest neighbours and SWD; data_root overrides the checkpoint's data folder.
    quick: a few images and steps (FigureOptions.quick), for tests. trained_on: free text for the facts, e.g.
    "2 CPU cores" (checkpoints do not record their hardware). parts: a subset of FIGURE_PARTS to draw (default all).
    Returns a FigureSet; writes figures.json and captions.md last.
    """
    unknown = sorted(set(parts) - set(FIGURE_PARTS))
    if unknown:
        raise ValueError(f"unknown figure parts {unknown}; choose from {list(FIGURE_PARTS)}")
    path = resolve_checkpoint(checkpoint)
    given = {k: v for k, v in dict(n=n, seed=seed, sampler=sampler, steps=steps, swd_n=swd_n, data=data).items()
             if v is not None}
    opts = FigureOptions.quick(**given) if quick else FigureOptions(**given)
    device = torch.device(device) if device is not None else default_device()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = _Drawer(path, out, prefix, opts, device, ema, log or (lambda s: None), progress)
    d.result.facts.update(run_facts(path, d.ckpt, d.cfg, opts, device, ema, trained_on))
    d.log(f"[figures] {path} → {out}/{prefix}*: {facts_sentence(d.result.facts)}")
    with_data = opts.data and "data" in parts
    if device.type == "cpu" and not quick:
        d.log(f"[figures] on a CPU this takes minutes (about 4–5 min for the 32 px main-job model on 2 cores: "
              f"{max(opts.n, opts.swd_n if with_data else 0)} samples, the sampler comparison and the reverse-process "
              "GIF); --quick draws a preview in seconds, --only picks parts")
    if "samples" in parts or with_data:
        samples = d.samples(max(opts.n, opts.swd_n) if with_data else opts.n)
        if "samples" in parts:
            d.grid(samples)
    if "samplers" in parts:
        d.eta(d.samplers())
    if "reverse" in parts:
        d.gif()
    if "curves" in parts:
        d.curves()
    if with_data:
        _data_figures(d, samples, data_root)
    elif "data" in parts:
        d.skip("nearest", "--no-data")
        d.skip("swd", "--no-data")
    return _write_sidecars(d, opts, parts)


def _merged(record: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """record with the figures of an earlier figures.json of the same checkpoint that this call did not redraw."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return record
    if old.get("facts", {}).get("checkpoint") != record["facts"]["checkpoint"]:
        return record
    record["facts"] = {**old.get("facts", {}), **record["facts"]}
    for key in ("files", "captions"):
        record[key] = {**{k: v for k, v in old.get(key, {}).items() if k not in record["skipped"]}, **record[key]}
    record["skipped"] = {k: v for k, v in record["skipped"].items() if k not in record["files"]}
    record["swd"] = record["swd"] or old.get("swd")
    return record


def _write_sidecars(d: _Drawer, opts: FigureOptions, parts: Sequence[str] = FIGURE_PARTS) -> FigureSet:
    """figures.json (facts, SWD, files) and captions.md (a caption per figure), written atomically.

    When only some parts were drawn, the figures of an earlier figures.json of the same checkpoint are kept."""
    r = d.result
    if r.swd is not None:
        for key in ("samples", "nearest"):
            if key in r.captions:
                r.captions[key] += " " + r.swd.caption() + "."
    model = facts_sentence(r.facts)
    record = {"format": FIGURES_FORMAT, "facts": r.facts, "options": dataclasses.asdict(opts),
              "swd": r.swd.as_dict() if r.swd is not None else None, "skipped": r.skipped,
              "files": {k: [p.name for p in v] for k, v in r.files.items()},
              "captions": {k: f"{v} {model}" for k, v in r.captions.items()}}
    r.json_path = d.out / d.name("figures.json")
    if set(parts) != set(FIGURE_PARTS):
        record = _merged(record, r.json_path)
    write_json(r.json_path, record)
    checkpoint = Path(r.facts["checkpoint"])
    lines = [f"# Figures from {checkpoint.parent.name}/{checkpoint.name}", "",
             f"Every figure below shows this model. {model} (To paste one caption on its own, take it from "
             f"{r.json_path.name}: there each caption ends with this paragraph.)", ""]
    lines += [f"**{', '.join(record['files'][k])}**: {text[:-len(model)].rstrip() if text.endswith(model) else text}\n"
              for k, text in record["captions"].items()]
    if record["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{k} ({why})" for k, why in record["skipped"].items()), ""]
    r.captions_path = d.out / d.name("captions.md")
    with atomic_open(r.captions_path, "w") as f:
        f.write("\n".join(lines))
    d.log(f"[figures] {r.json_path.name}, {r.captions_path.name}")
    return r
