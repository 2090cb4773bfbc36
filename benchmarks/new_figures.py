"""Draw issue 21's new figures into figures/ (PNG 300 dpi + PDF, plotting.print_style).

    python benchmarks/new_figures.py diagram                       # 03_unet_diagram: the report's U-Net, 64 px
    python benchmarks/new_figures.py quality                       # 04_quality_vs_steps from benchmarks/swd_by_step.csv
    python benchmarks/new_figures.py cost [--cpu-batch 2]          # 04_cost_vs_resolution; prints the numbers
    python benchmarks/new_figures.py gpu                           # gpu_celeba64_*: grids enlarged, loss curve redrawn
    python benchmarks/new_figures.py loss-by-t --checkpoint runs/ship32 --data DIR
                                                                   # 04_loss_by_timestep from a trained checkpoint

Run from the repository root. Only ``cost`` and ``loss-by-t`` use torch for more than a second.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ddpm_helpers import diagram, plotting  # noqa: E402
from ddpm_helpers.config import UNET_PRESETS  # noqa: E402
from ddpm_helpers.unet import UNet  # noqa: E402

FIGURES = ROOT / "figures"
SWD_CSV = ROOT / "benchmarks" / "swd_by_step.csv"
# benchmarks/RESULTS.md (2026-11-27 H200 session, bf16 + channels_last; T4x2: the provisional estimate from it)
GPU_IMG_PER_S = {"H200 (measured, bf16)": {64: 5985, 128: 1208}, "Kaggle T4×2 (estimate)": {64: 537, 128: 116}}
RUN_DATE = time.strptime("2026-11-27", "%Y-%m-%d")   # the H200 session of the gpu_celeba64 figures
REPORT_HOURS_128 = 42.0          # the report: 100 epochs at 128 px on Kaggle
CELEBA_TRAIN = 162_770           # images in CelebA's train split
EPOCHS = 100


def draw_diagram(args) -> None:
    fig = diagram.draw_unet(UNET_PRESETS["report"], 64, title="The report's U-Net (preset 'report') at 64 px")
    print(plotting.save_figure(fig, FIGURES / "03_unet_diagram"))


@plotting.print_styled
def _quality_figure(rows: list):
    steps = [int(r["step"]) for r in rows if r["kind"] == "model"]
    swd = [float(r["swd"]) for r in rows if r["kind"] == "model"]
    floor = [float(r["swd"]) for r in rows if r["kind"] == "real_vs_real"]
    fig, ax = plt.subplots(figsize=(plotting.COLUMN_WIDTH, 2.4))
    ax.plot(steps, swd, "o-", ms=3, label="samples vs held-out images")
    for s, v in zip(steps, swd):
        ax.annotate(f"{v:.1f}", (s, v), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=6)
    if floor:
        ax.axhline(floor[0], color="0.4", ls="--", lw=0.8, label=f"real vs real (floor) {floor[0]:.1f}")
    ax.set_xlabel("optimizer step (batch 32)")
    ax.set_ylabel(r"SWD $\times 10^3$ (lower is better)")
    ax.set_title("Quality against training, cpu-celeba 32 px")
    ax.set_ylim(0, max(swd) * 1.15)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def draw_quality(args) -> None:
    with open(SWD_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    print(plotting.save_figure(_quality_figure(rows), FIGURES / "04_quality_vs_steps"))


def step_flops(model, size: int, batch: int = 1) -> int:
    """FLOPs of one training step (forward + backward of the ε loss) counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    x, t = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        ((model(x, t) - x) ** 2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_seconds(model, size: int, batch: int, repeats: int = 2) -> float:
    """Median wall seconds of one CPU training step (forward, backward, SGD update) after one warm-up step."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x, t = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        ((model(x, t) - x) ** 2).mean().backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@plotting.print_styled
def _cost_figure(res: dict):
    sizes = res["sizes"]
    from matplotlib.ticker import ScalarFormatter
    fig, (ax_f, ax_h) = plt.subplots(1, 2, figsize=(plotting.PAGE_WIDTH, 2.6))
    gflop = [res["gflop_per_image"][str(s)] for s in sizes]
    ax_f.plot(sizes, gflop, "o-", ms=3, color="C0")
    for s, g in zip(sizes, gflop):
        ax_f.annotate(f"{g:.1f}", (s, g), textcoords="offset points", xytext=(4, -8), fontsize=6)
    ax_f.set_xscale("log", base=2)
    ax_f.set_yscale("log", base=2)
    ax_f.yaxis.set_major_formatter(ScalarFormatter())
    ax_f.set_xticks(sizes, [str(s) for s in sizes])
    ax_f.set_xlabel("image side (px)")
    ax_f.set_ylabel("GFLOP per image (forward + backward)")
    ax_f.set_title("Compute: ×4 per doubling of the side")
    for name, rates in res["img_per_s"].items():
        xs = [s for s in sizes if str(s) in rates]
        hours = [EPOCHS * CELEBA_TRAIN / rates[str(s)] / 3600 for s in xs]
        ax_h.plot(xs, hours, "o-", ms=3, label=name)
    ax_h.plot([128], [REPORT_HOURS_128], "*", ms=7, color="C3",
              label=f"the report: ≈ {REPORT_HOURS_128:.0f} h (Kaggle)")
    ax_h.set_xscale("log", base=2)
    ax_h.set_yscale("log")
    ax_h.set_xticks(sizes, [str(s) for s in sizes])
    ax_h.set_xlabel("image side (px)")
    ax_h.set_ylabel(f"hours for {EPOCHS} epochs (162,770 images)")
    ax_h.set_title("Time: ×4.6–5 per doubling (a power law)")
    ax_h.legend(fontsize=6)
    fig.tight_layout()
    return fig


def draw_cost(args) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    sizes = [32, 64, 128]
    res = {"sizes": sizes, "gflop_per_image": {}, "cpu_seconds_per_step": {}, "cpu_batch": args.cpu_batch,
           "img_per_s": {name: {str(k): v for k, v in r.items()} for name, r in GPU_IMG_PER_S.items()}}
    cpu = {}
    for size in sizes:
        net = UNet(UNET_PRESETS["report"])
        res["gflop_per_image"][str(size)] = step_flops(net, size) / 1e9
        print(f"{size:4d} px: {res['gflop_per_image'][str(size)]:.2f} GFLOP/img", flush=True)
        if args.cpu_batch:
            sec = step_seconds(net, size, args.cpu_batch)
            res["cpu_seconds_per_step"][str(size)] = sec
            cpu[str(size)] = args.cpu_batch / sec
            print(f"      CPU {sec:.2f} s/step (batch {args.cpu_batch})", flush=True)
    if cpu:
        res["img_per_s"][f"this CPU (fp32, batch {args.cpu_batch})"] = cpu
    (ROOT / "benchmarks" / "cost_vs_resolution.json").write_text(json.dumps(res, indent=1) + "\n")
    print(plotting.save_figure(_cost_figure(res), FIGURES / "04_cost_vs_resolution"))


def heldout_celeba(data_dir: Path, first: int = 4501, last: int = 5000, crop: str = "ddim_128",
                   size: int = 32) -> torch.Tensor:
    """CelebA images first … last (the figures run's held-out ones) as data.py prepares them, in [−1, 1]."""
    import numpy as np

    from ddpm_helpers.data import load_image
    images = np.stack([load_image(data_dir / f"{i:06d}.jpg", crop=crop, image_size=size, channels=3)
                       for i in range(first, last + 1)])                       # (N, H, W, 3) uint8
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def draw_loss_by_t(args) -> None:
    from ddpm_helpers.checkpoint import latest_checkpoint, load_model
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    path = Path(args.checkpoint)
    path = latest_checkpoint(path) if path.is_dir() else path
    model, schedule, cfg = load_model(path, ema=True)
    step = torch.load(path, map_location="cpu", weights_only=False).get("step")
    x0 = heldout_celeba(Path(args.data), crop=cfg.data.crop, size=cfg.data.image_size)
    centres, losses = plotting.loss_by_timestep(model, schedule, x0, bins=args.bins, seed=0)
    name = args.name or path.parent.name
    fig = plotting.plot_loss_by_timestep(centres, losses, title=f"Loss by timestep: run {name}, step {step:,}, "
                                         f"{len(x0)} held-out CelebA images")
    print(name, "step", step, "mean over bands", sum(losses) / len(losses), "crop", cfg.data.crop,
          cfg.data.image_size)
    print(plotting.save_figure(fig, FIGURES / "04_loss_by_timestep"))
    (ROOT / "benchmarks" / "loss_by_timestep.json").write_text(json.dumps(
        {"checkpoint": f"{name}/{path.name}", "step": step, "images": len(x0), "bins": args.bins,
         "t_centres": centres, "loss": losses}, indent=1) + "\n")


def enlarge_grid(path: Path, min_side: int = 900) -> int:
    """Enlarge a committed image grid by the whole factor f = max(⌈min_side / long side⌉, ⌈300 / its dpi tag⌉)
    (nearest: each pixel an f × f block, no smoothing), tagged 300 dpi. A grid at ≥ min_side and 300 dpi (or with
    no tag) is left as it is, so a rerun changes nothing. Returns f."""
    from PIL import Image
    image = Image.open(path)
    dpi = round(image.info.get("dpi", (plotting.PRINT_DPI,))[0])
    f = max(1, -(-min_side // max(image.size)), -(-plotting.PRINT_DPI // dpi))
    if f > 1:
        image.convert("RGB").resize((image.width * f, image.height * f), Image.Resampling.NEAREST).save(
            path, dpi=(plotting.PRINT_DPI, plotting.PRINT_DPI), optimize=True)
    return f


def draw_gpu(args) -> None:
    """The gpu_celeba64_* figures without their checkpoint: grids enlarged by whole pixels, the loss curve redrawn
    from the run's metrics CSV in the print style (centred smoothing, wrapped title)."""
    for name in ("samples", "ddpm_vs_ddim", "trajectory", "training_step_00000500", "training_step_00001500"):
        print(name, "×", enlarge_grid(FIGURES / f"gpu_celeba64_{name}.png"))
    from PIL import Image
    for name in ("ddpm_vs_ddim", "trajectory"):           # tables with labels: a PDF of the raster (no model to redraw)
        Image.open(FIGURES / f"gpu_celeba64_{name}.png").convert("RGB").save(
            FIGURES / f"gpu_celeba64_{name}.pdf", resolution=plotting.PRINT_DPI,
            creationDate=RUN_DATE, modDate=RUN_DATE)                      # fixed dates: a rerun writes the same bytes
    fig = plotting.plot_loss_curve(ROOT / "benchmarks" / "gpu_h200_2026-11-27" / "gpu_celeba64_metrics.csv",
                                   title="celeba64 preset on one H200, 150 s (3,431 steps, batch 128, bf16)")
    print(plotting.save_figure(fig, FIGURES / "gpu_celeba64_loss_curve"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("diagram").set_defaults(run=draw_diagram)
    sub.add_parser("quality").set_defaults(run=draw_quality)
    sub.add_parser("gpu").set_defaults(run=draw_gpu)
    c = sub.add_parser("cost")
    c.add_argument("--cpu-batch", type=int, default=0,
                   help="also time CPU training steps at this batch (0: no; on a shared CPU the times are noise)")
    c.set_defaults(run=draw_cost)
    lt = sub.add_parser("loss-by-t")
    lt.add_argument("--checkpoint", required=True, help="a checkpoint file or a run folder (its newest checkpoint)")
    lt.add_argument("--data", required=True, help="the folder of half-size CelebA images 000001.jpg … 005000.jpg")
    lt.add_argument("--bins", type=int, default=20)
    lt.add_argument("--name", help="the run's name for the title (default: the checkpoint's folder)")
    lt.set_defaults(run=draw_loss_by_t)
    args = p.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
