"""Figures: image grids, loss curves, and the teaching figures the notebooks and the report use.

Every function takes tensors in the model range [−1, 1] (or uint8) and writes or returns a figure;
none trains or samples.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torchvision

PathLike = Union[str, Path]


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] float (or uint8) → [0, 1] float for display."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def image_grid(x: torch.Tensor, nrow: Optional[int] = None, padding: int = 2) -> torch.Tensor:
    """Images (B, C, H, W) → one grid image (3, H', W') in [0, 1], via torchvision.utils.make_grid."""
    nrow = nrow or max(1, int(math.ceil(math.sqrt(x.shape[0]))))
    return torchvision.utils.make_grid(to_unit_range(x.detach().cpu()), nrow=nrow, padding=padding, pad_value=1.0)


def save_image_grid(x: torch.Tensor, path: PathLike, nrow: Optional[int] = None) -> Path:
    """Write images (B, C, H, W) in [−1, 1] as one PNG grid (torchvision's save_image); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(x.shape[0]))))
    torchvision.utils.save_image(to_unit_range(x.detach().cpu()), str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path


def read_metrics(csv_path: PathLike) -> dict:
    """Read a training metrics CSV into a dict of column → list of floats."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = {k: [] for k in (rows[0].keys() if rows else [])}
    for r in rows:
        for k, v in r.items():
            try:
                cols[k].append(float(v))
            except (TypeError, ValueError):
                cols[k].append(float("nan"))
    return cols


def plot_loss_curve(csv_path: PathLike, out_path: Optional[PathLike] = None, title: str = "Training loss",
                    smooth: float = 0.9):
    """Loss against step from a metrics CSV, raw and exponentially smoothed, log-scaled. Returns the figure."""
    import matplotlib
    import matplotlib.pyplot as plt
    m = read_metrics(csv_path)
    steps, loss = m.get("step", []), m.get("loss", [])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if steps:
        ax.plot(steps, loss, color="0.75", lw=0.8, label="loss (logged mean)")
        ema, s = [], None
        for v in loss:
            s = v if s is None else smooth * s + (1 - smooth) * v
            ema.append(s)
        ax.plot(steps, ema, color="C0", lw=1.5, label=f"smoothed ({smooth})")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(r"$L_{simple} = \|\epsilon - \epsilon_\theta\|^2$")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=150)
        if matplotlib.get_backend().lower() == "agg":
            plt.close(fig)
    return fig
