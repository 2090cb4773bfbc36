"""Taught in notebooks 01, 02, 03, 04, 05.

Figures: image grids, loss curves, and the teaching figures the notebooks and the report use.

Every function takes tensors in the model range [−1, 1] (or uint8) and writes or returns a figure;
none trains or samples.
"""
from __future__ import annotations

import functools
import math
import textwrap
import warnings
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import ScalarFormatter

from . import images as _images_module
from ._types import PathLike, moved_names
from .diffusion import eval_mode, predict_eps, q_sample
from .files import read_csv_rows
from .images import image_grid, to_unit_range

# Names that lived here before issue 19 (the grid writer moved to images): see moved_names.
__getattr__ = moved_names(__name__, {"save_image_grid": _images_module})


def _finite(text) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def read_metrics(csv_path: PathLike) -> dict:
    """Read a training metrics CSV into a dict of column → list of floats (rows without a numeric step, e.g. the
    NUL-filled tail of a power loss, are left out; other unreadable cells are NaN)."""
    rows = [r for r in read_csv_rows(csv_path)[0] if _finite(r.get("step"))]
    cols = {k: [] for k in (rows[0].keys() if rows else [])}
    for r in rows:
        for k, v in r.items():
            try:
                cols[k].append(float(v))
            except (TypeError, ValueError):
                cols[k].append(float("nan"))
    return cols


# ---------------------------------------------------------------------------------------------
# One print style: sizes for a report column or page, fonts that stay legible there
# ---------------------------------------------------------------------------------------------
COLUMN_WIDTH = 3.5    # inches: one column of a two-column report
PAGE_WIDTH = 7.0      # inches: the full text width
PRINT_DPI = 300
PRINT_STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 9, "lines.linewidth": 1.0, "axes.linewidth": 0.6,
    "grid.linewidth": 0.4, "grid.alpha": 0.3, "axes.grid": True, "legend.frameon": False,
    "savefig.dpi": PRINT_DPI, "savefig.bbox": "tight", "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42, "ps.fonttype": 42,           # embed TrueType: text stays text in the PDF
    "image.interpolation": "nearest",
}


def print_style():
    """A matplotlib rc context with the print style: ``with print_style(): fig = ...``."""
    return matplotlib.rc_context(PRINT_STYLE)


def print_styled(draw):
    """Decorator: draw the figure inside print_style(), so every plot of the package shares the one print style."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with print_style():
            return draw(*args, **kwargs)
    return wrapper


def smooth_log(values: Sequence[float], window: Optional[int] = None) -> list:
    """exp(centred rolling median of log(values)): a smoothed loss that follows the raw one without lag.

    Losses fall by orders of magnitude early on; averaging them linearly lets the early values dominate, and an
    exponential average lags behind. The median of the logs over a centred window of ``window`` rows (odd; default
    2·⌊rows/40⌋ + 1, i.e. no smoothing below 40 rows) tracks the typical level and ignores spikes. At the start
    the window shrinks symmetrically (row i < half uses rows 0 … 2i), so the fast early fall is followed too; at
    the end it is cut off on the right. NaNs are skipped.
    """
    x = np.log(np.clip(np.asarray(values, dtype=np.float64), 1e-30, None))
    half = (window or 2 * (len(x) // 40) + 1) // 2
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                            # an all-NaN window stays NaN
        for i in range(len(x)):
            h = min(half, i)
            out.append(float(np.exp(np.nanmedian(x[i - h:i + h + 1]))))
    return out


def _plot_loss(ax, steps: Sequence[float], loss: Sequence[float], window: Optional[int] = None) -> None:
    """Raw loss (light) and its log-space rolling median (dark) on a log axis."""
    ax.plot(steps, loss, color="0.72", lw=0.6, label="logged mean")
    window = window or 2 * (len(loss) // 40) + 1
    if window > 1:
        ax.plot(steps, smooth_log(loss, window), color="C0", lw=1.2, label=f"rolling median of log ({window} rows)")
    ax.set_yscale("log")


def _wrap(title: str, width_in: float) -> str:
    """Wrap a title to about the characters that fit width_in inches at the title font size."""
    return "\n".join(textwrap.wrap(title, max(20, int(width_in * 15)), break_on_hyphens=False))


@print_styled
def plot_loss_curve(csv_path: PathLike, out_path: Optional[PathLike] = None, title: str = "Training loss",
                    window: Optional[int] = None, width: float = COLUMN_WIDTH):
    """Loss against step from a metrics CSV: raw, and smoothed in log space (smooth_log), on a log axis.

    One report column wide in the print style; a long title is wrapped. Writes out_path (PNG, 300 dpi) when
    given. Returns the figure.
    """
    m = read_metrics(csv_path)
    steps, loss = m.get("step", []), m.get("loss", [])
    with print_style():
        fig, ax = plt.subplots(figsize=(width, 0.68 * width))
        if steps:
            _plot_loss(ax, steps, loss, window)
            ax.legend()
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(r"$L_{simple} = \|\epsilon - \epsilon_\theta\|^2$")
        ax.set_title(_wrap(title, width))
        fig.tight_layout()
        if out_path is not None:
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out_path, metadata={"Software": None})
    if out_path is not None and matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# Teaching figures of notebooks 01–03 (forward process, schedules, time embedding, U-Net levels)
# ---------------------------------------------------------------------------------------------
def save_figure(fig, stem: PathLike, formats: Sequence[str] = ("png", "pdf"), dpi: Optional[int] = None) -> list:
    """Write fig as stem.png and stem.pdf at the print rule (≥ PRINT_DPI), with no timestamp, so a re-run rewrites
    the same bytes.

    dpi: None (or anything below PRINT_DPI, as older callers pass) means PRINT_DPI: a committed plot is never
    written below 300 dpi. A figure drawn pixel-exact (plot_image_rows sets ``fig.exact_dpi``) is written at that
    dpi without a tight bounding box, so each image pixel stays a whole block. Returns the written paths. Closes
    the figure under a non-interactive backend (Agg), as in CI.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    exact = getattr(fig, "exact_dpi", None)
    dpi = exact or max(dpi or PRINT_DPI, PRINT_DPI)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else None
        fig.savefig(path, dpi=dpi, bbox_inches=None if exact else "tight", pad_inches=0.02, metadata=metadata)
        paths.append(path)
    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    return paths


def tile_mosaic(rows: Sequence[torch.Tensor], pad: Optional[int] = None) -> np.ndarray:
    """Rows of images, each (K, C, H, W) in [−1, 1] (or uint8), as one RGB array (R·(H+p)+p, K·(W+p)+p, 3) in [0, 1].

    The gaps (p pixels, default max(1, H/16)) are white; gray images are repeated to RGB.
    """
    k, c, h, w = rows[0].shape
    pad = max(1, h // 16) if pad is None else pad
    out = np.ones((len(rows) * (h + pad) + pad, k * (w + pad) + pad, 3), dtype=np.float32)
    for r, images in enumerate(rows):
        tiles = to_unit_range(images.detach().cpu()).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()  # (K, H, W, 3)
        for j in range(k):
            y, x = pad + r * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = tiles[j]
    return out


def _inches(chars: int, lines: int = 1) -> tuple:
    """About the (width, height) in inches of text of chars characters and lines lines at the print font (8 pt)."""
    return 0.062 * chars + 0.06, 0.135 * lines + 0.05


@print_styled
def plot_image_rows(rows: dict, col_titles: Sequence[str], scale: float = 1.3, tile_labels: Optional[dict] = None,
                    dpi: int = PRINT_DPI):
    """One row per entry of rows {label: images (K, C, H, W) in [−1, 1]}, K titled columns, as a single image.

    scale: about the inches per tile; each image pixel becomes a whole z × z block, z = round(scale · dpi / tile),
    and the figure is laid out in whole pixels at dpi (``fig.exact_dpi``, which save_figure honours), so nothing
    is resampled or smoothed. tile_labels: optional {row label: K strings} written in the corner of each tile of
    that row. One axes and one imshow, so that large tables draw fast. Returns the figure.
    """
    images = list(rows.values())
    k, _, h, w = images[0].shape
    pad = max(1, h // 16)
    z = max(1, round(scale * dpi / (w + pad)))
    mosaic = tile_mosaic(images, pad).repeat(z, axis=0).repeat(z, axis=1)             # whole-pixel enlargement
    labels = [str(label).split("\n") for label in rows]
    left = round(dpi * _inches(max(len(part) for label in labels for part in label))[0])
    top = round(dpi * _inches(max(len(str(t)) for t in col_titles[:k]), max(str(t).count("\n") + 1
                                                                             for t in col_titles[:k]))[1])
    mh, mw = mosaic.shape[:2]
    fw, fh = left + mw + 4, top + mh + 4                                                # whole pixels
    fig = plt.figure(figsize=(fw / dpi, fh / dpi), dpi=dpi)
    fig.exact_dpi = dpi
    ax = fig.add_axes((left / fw, 4 / fh, mw / fw, mh / fh))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto", resample=False)

    def centre(i, size):                                   # pixel centre of tile i along an axis of tiles `size`
        return z * (pad + i * (size + pad) + size / 2) - 0.5

    ax.xaxis.tick_top()
    ax.set_xticks([centre(j, w) for j in range(k)])
    ax.set_xticklabels(col_titles[:k])
    ax.set_yticks([centre(r, h) for r in range(len(images))])
    ax.set_yticklabels(list(rows))
    ax.tick_params(length=0, pad=2)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for r, label in enumerate(rows):
        for j, text in enumerate((tile_labels or {}).get(label) or []):
            ax.text(z * (pad + j * (w + pad)), z * (pad + r * (h + pad) + h) - 1, text, fontsize=6, va="bottom",
                    ha="left", bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    return fig


def _report_steps(schedule) -> torch.Tensor:
    """The report's step numbers 1 … T for the 0-based indices 0 … T−1."""
    return torch.arange(1, schedule.T + 1)


@print_styled
def plot_schedules(schedules: Sequence):
    """β_t (log scale) and ᾱ_t against the report's t = 1 … T, one line per NoiseSchedule."""
    fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.6))
    for s in schedules:
        ax_b.plot(_report_steps(s), s.betas, label=s.name)
        ax_a.plot(_report_steps(s), s.alpha_bars, label=s.name)
    ax_b.set_yscale("log")
    ax_b.set_title(r"noise added per step $\beta_t$")
    ax_b.set_ylabel(r"$\beta_t$")
    ax_a.set_ylabel(r"$\bar\alpha_t$")
    ax_a.set_title(r"signal kept $\bar\alpha_t = \prod_{s=1}^{t} (1 - \beta_s)$")
    for ax in (ax_b, ax_a):
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


@print_styled
def plot_log_snr(schedules: Sequence):
    """log SNR(t) = log(ᾱ_t / (1 − ᾱ_t)) against the report's t, one line per NoiseSchedule; 0 = equal power."""
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.3, 2.6))
    for s in schedules:
        ax.plot(_report_steps(s), s.snr().log(), label=s.name)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("t")
    ax.set_ylabel(r"$\log \mathrm{SNR}(t) = \log \frac{\bar\alpha_t}{1-\bar\alpha_t}$")
    ax.set_title("signal-to-noise ratio")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


@print_styled
def plot_forward_moments(steps: Sequence[int], mean_coef: Sequence[float], variance: Sequence[float], schedule):
    """Moments of x_t measured on simulated Markov chains (dots) against the closed form (lines).

    steps: 0-based indices; mean_coef: fitted slope of E[x_t] on x_0 (closed form √ᾱ_t); variance:
    pixel-averaged Var[x_t] (closed form 1 − ᾱ_t).
    """
    t_report = [s + 1 for s in steps]
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.3, 2.8))
    ax.plot(_report_steps(schedule), schedule.sqrt_alpha_bars, color="C0", label=r"$\sqrt{\bar\alpha_t}$ (closed form)")
    ax.plot(_report_steps(schedule), 1 - schedule.alpha_bars, color="C1", label=r"$1-\bar\alpha_t$ (closed form)")
    ax.plot(t_report, mean_coef, "o", ms=3, color="C0", label=r"chain: slope of $E[x_t]$ on $x_0$")
    ax.plot(t_report, variance, "s", ms=3, color="C1", label=r"chain: $\mathrm{Var}[x_t]$")
    ax.set_xlabel("t")
    ax.set_title("iterated chain vs closed form")
    ax.set_ylabel(r"mean coefficient, variance of $x_t$")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


@print_styled
def plot_embedding_heatmap(emb: torch.Tensor):
    """Heat map of sinusoidal embeddings (T, d): rows = timestep index t, columns = dimension."""
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.3, 3.0))
    im = ax.imshow(emb.detach().cpu().numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                   interpolation="nearest")
    ax.set_xlabel("dimension (even: sin, odd: cos)")
    ax.set_ylabel("timestep index t")
    ax.set_title(f"sinusoidal time embedding, d = {emb.shape[1]}")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


@print_styled
def plot_similarity_matrices(matrices: dict, ts: torch.Tensor):
    """Side-by-side heat maps of similarity matrices {title: (N, N)} between the embeddings of timesteps ts (N,)."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(COLUMN_WIDTH * len(matrices), 3.0), squeeze=False)
    extent = [float(ts[0]), float(ts[-1]), float(ts[-1]), float(ts[0])]
    for ax, (title, m) in zip(axes[0], matrices.items()):
        im = ax.imshow(m.detach().cpu().numpy(), cmap="viridis", vmin=-1, vmax=1, extent=extent,
                       interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.set_ylabel("s")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


@print_styled
def plot_similarity_by_lag(lags: torch.Tensor, similarity: torch.Tensor):
    """Cosine similarity of e_t and e_{t+Δ} against the lag Δ (it depends on Δ only)."""
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.3, 2.4))
    ax.plot(lags, similarity)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel(r"lag $\Delta = |t - s|$")
    ax.set_ylabel(r"$e_t \cdot e_s \,/\, (d/2)$")
    ax.set_title("nearby timesteps have similar embeddings")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@print_styled
def plot_unet_levels(tables: dict):
    """Bar charts of channels per stage of U-Nets, annotated with the feature-map side.

    tables: {model name: [(stage name, (B, C, H, W) output shape), ...]} in forward order.
    """
    fig, axes = plt.subplots(1, len(tables), figsize=(COLUMN_WIDTH * len(tables), 2.9), squeeze=False, sharey=True)
    for ax, (name, rows) in zip(axes[0], tables.items()):
        labels = [stage for stage, _ in rows]
        channels = [shape[1] for _, shape in rows]
        bars = ax.bar(range(len(rows)), channels, color=[_stage_color(s) for s in labels])
        for bar, (_, shape) in zip(bars, rows):
            ax.annotate(f"{shape[1]}\n{shape[2]}×{shape[3]}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=6.5)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=60)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel("channels (labels: C and H×W)")
        ax.set_title(name)
        ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def _stage_color(stage: str) -> str:
    """Encoder stages blue, bottleneck red, decoder green, the rest gray."""
    if stage.startswith(("inc", "down")):
        return "C0"
    if stage.startswith(("attn", "bottleneck")):
        return "C3"
    if stage.startswith("up"):
        return "C2"
    return "0.6"


# ---------------------------------------------------------------------------------------------
# Training and sampling figures of notebooks 04–05 (metrics panels, titled grids, trajectories)
# ---------------------------------------------------------------------------------------------
_METRIC_LABELS = {"loss": r"$L_{simple}$ (logged mean)", "lr": "learning rate",
                  "grad_norm": r"gradient norm $\|\nabla_\theta L\|$ (before clipping)",
                  "images_per_s": "images / s"}
_METRIC_YLABELS = {"loss": r"$L_{simple}$", "lr": "learning rate", "grad_norm": "gradient norm",
                   "images_per_s": "images / s"}


@print_styled
def plot_training_metrics(csv_path: PathLike, columns: Sequence[str] = ("loss", "lr", "grad_norm"),
                          resumed_at: Sequence[int] = (), grad_clip: Optional[float] = None,
                          window: Optional[int] = None, panel_width: float = COLUMN_WIDTH, panel_height: float = 2.5):
    """One panel per column of a training metrics CSV (train.MetricsLog) against the optimizer step.

    "loss" is drawn raw and smoothed in log space (smooth_log: a centred rolling median of log L over
    ``window`` rows) on a log scale; "grad_norm" (the mean norm before clipping) gets a dotted line at
    grad_clip when given. resumed_at: steps where a session resumed from a checkpoint, drawn as dashed
    vertical lines in every panel. Returns the figure.
    """
    m = read_metrics(csv_path)
    steps = m.get("step", [])
    fig, axes = plt.subplots(1, len(columns), figsize=(panel_width * len(columns), panel_height), squeeze=False)
    for ax, col in zip(axes[0], columns):
        values = m.get(col, [])
        if col == "loss" and values:
            _plot_loss(ax, steps, values, window)
        elif values:
            ax.plot(steps, values, color="C1" if col == "lr" else "C2", lw=1.0, label=col)
        if col == "grad_norm" and grad_clip:
            ax.axhline(grad_clip, color="C3", ls=":", lw=1, label=f"clip at {grad_clip:g}")
        for i, step in enumerate(resumed_at):
            ax.axvline(step, color="0.3", ls="--", lw=0.9, label="resumed" if i == 0 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(_METRIC_YLABELS.get(col, col))
        ax.set_title(_METRIC_LABELS.get(col, col))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


@print_styled
def plot_titled_grids(grids: dict, nrow: Optional[int] = None, suptitle: Optional[str] = None,
                      scale: float = COLUMN_WIDTH):
    """Image grids side by side, one titled panel per entry of grids {title: images (B, C, H, W)}.

    Images in [−1, 1] (or uint8), gray or RGB; nrow images per grid row (default: about √B). Returns the figure.
    """
    pictures = {title: image_grid(images, nrow=nrow).permute(1, 2, 0).numpy() for title, images in grids.items()}
    aspect = max(p.shape[0] / p.shape[1] for p in pictures.values())          # height / width of the tallest grid
    fig, axes = plt.subplots(1, len(grids), figsize=(scale * len(grids), scale * aspect + 0.5 + 0.3 * bool(suptitle)),
                             squeeze=False)
    for ax, (title, picture) in zip(axes[0], pictures.items()):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


@print_styled
def plot_trajectories(trajectories: dict, index: int = 0, steps: Optional[Sequence[int]] = None,
                      finals: Optional[dict] = None, scale: float = 1.1):
    """x_t and the network's guess x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ) / √ᾱ_t along sampling runs, two rows per run.

    trajectories: {label: diffusion.Trajectory} (kept states xt, x0_pred (K, B, C, H, W)); index: which image
    of the batch. steps: 0-based timestep indices to show (default: those kept by every run), titled with the
    report's t = index + 1. finals: optional {label: x_0 (B, C, H, W)} shown in a last column. Returns the figure.
    """
    if steps is None:
        common = set.intersection(*(set(tr.steps) for tr in trajectories.values()))
        steps = sorted(common, reverse=True)
    rows = {}
    for label, tr in trajectories.items():
        k = [tr.steps.index(s) for s in steps]
        xt, x0 = tr.xt[k, index], tr.x0_pred[k, index]                      # (K, C, H, W)
        if finals is not None:
            last = finals[label][index:index + 1].detach().float().cpu()
            xt, x0 = torch.cat([xt, last]), torch.cat([x0, last])
        rows[f"{label}\n$x_t$"] = xt
        rows[f"{label}\n$\\hat x_0$"] = x0
    titles = [f"t = {s + 1}" for s in steps] + (["$x_0$ (final)"] if finals is not None else [])
    return plot_image_rows(rows, titles, scale=scale)


# ---------------------------------------------------------------------------------------------
# Loss by timestep (notebook 04): where along the chain a trained model still errs
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def loss_by_timestep(model, schedule, x0: torch.Tensor, bins: int = 20, seed: int = 0, batch: int = 100) -> tuple:
    """Mean L_simple per band of timesteps on fixed images and fixed noise (Ho et al. 2020, Eq. 14, per t).

    L(t) = E_{x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² / (C·H·W). The T steps are cut into ``bins`` equal
    bands; in each band every image gets one t drawn uniformly from the band and one ε, both from a generator
    seeded by (seed, band), so the curve is reproducible and every band sees every image. x0: (N, C, H, W) in
    [−1, 1]. Returns (band centres as the report's 1-based t, mean loss per band), two lists of floats.
    """
    edges = torch.linspace(0, schedule.T, bins + 1).round().long()
    centres, losses = [], []
    with eval_mode(model):
        for b in range(bins):
            g = torch.Generator().manual_seed(seed * 100_003 + b)
            lo, hi = int(edges[b]), int(edges[b + 1])
            t = torch.randint(lo, hi, (x0.shape[0],), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            total = 0.0
            for i in range(0, x0.shape[0], batch):
                sl = slice(i, i + batch)
                eps = predict_eps(model, q_sample(x0[sl], t[sl], noise[sl], schedule), t[sl])
                total += float(((noise[sl] - eps) ** 2).flatten(1).mean(1).sum())
            centres.append((lo + hi - 1) / 2 + 1)                              # report's t = index + 1
            losses.append(total / x0.shape[0])
    return centres, losses


@print_styled
def plot_loss_by_timestep(t: Sequence[float], loss: Sequence[float], title: str = "Loss by timestep",
                          width: float = COLUMN_WIDTH):
    """Mean L_simple per timestep band (loss_by_timestep) against the report's t, log scale. Returns the figure."""
    fig, ax = plt.subplots(figsize=(width, 0.7 * width))
    ax.plot(t, loss, "o-", ms=2.5)
    ax.set_yscale("log")
    ax.set_xlabel("t (the report's, 1 … T)")
    ax.set_ylabel(r"mean $\|\epsilon - \epsilon_\theta(x_t, t)\|^2$ per pixel")
    ax.set_title(_wrap(title, width))
    fig.tight_layout()
    return fig
