"""Figures from a GPU-trained checkpoint: samples, DDPM vs DDIM from the same noise, a trajectory.

Run by benchmarks/gpu_session.sh right after the short CelebA training run:
    python benchmarks/gpu_figures.py --run RUN_DIR --out OUT_DIR [--tag gpu_celeba64]
Writes OUT_DIR/{tag}_samples.png, {tag}_ddpm_vs_ddim.png, {tag}_trajectory.png and a JSON of timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_helpers.checkpoint import latest_checkpoint, load_model  # noqa: E402
from ddpm_helpers.diffusion import ddim_sample, ddpm_sample  # noqa: E402
from ddpm_helpers.images import save_image_grid  # noqa: E402
from ddpm_helpers.plotting import plot_image_rows, save_figure  # noqa: E402


def timed(fn):
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default="gpu_celeba64")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    out = Path(args.out)
    ckpt = latest_checkpoint(args.run)
    model, schedule, cfg = load_model(ckpt, ema=True, device=args.device)
    c, s = cfg.model.in_channels, cfg.data.image_size
    info = {"checkpoint": str(ckpt), "step": int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"])}
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda"
           else torch.autocast("cpu", enabled=False))
    g = torch.Generator().manual_seed(0)
    with amp:
        grid, t = timed(lambda: ddim_sample(model, (64, c, s, s), schedule, steps=min(100, schedule.T), generator=g,
                                            progress=False))
    info["ddim100_64_images_s"] = t
    save_image_grid(grid.float(), out / f"{args.tag}_samples.png", nrow=8)

    noise = torch.randn(8, c, s, s, generator=torch.Generator().manual_seed(1))
    rows = {}
    with amp:
        rows["DDPM, 1000 steps\n(σ=√β, report)"], t = timed(lambda: ddpm_sample(
            model, noise.shape, schedule, noise=noise, generator=torch.Generator().manual_seed(2), progress=False))
        info["ddpm1000_8_images_s"] = t
        rows["DDIM η=0, 100 steps"], _ = timed(lambda: ddim_sample(model, noise.shape, schedule,
                                                                    steps=min(100, schedule.T),
                                                                   noise=noise, progress=False))
        rows["DDIM η=0, 20 steps"], _ = timed(lambda: ddim_sample(model, noise.shape, schedule, steps=20,
                                                                  noise=noise, progress=False))
    fig = plot_image_rows({k: v.float() for k, v in rows.items()}, [f"noise #{i}" for i in range(8)])
    save_figure(fig, out / f"{args.tag}_ddpm_vs_ddim")

    T = schedule.T
    keep = sorted({round(f * (T - 1)) for f in (1, .8, .6, .4, .3, .2, .1, .05, 0)}, reverse=True)
    with amp:
        x, traj = ddpm_sample(model, (2, c, s, s), schedule, generator=torch.Generator().manual_seed(3),
                              keep_steps=keep, progress=False)
    order = [traj.steps.index(k) for k in keep]
    rows = {}
    for b in range(2):
        rows[f"x_t (sample {b})"] = traj.xt[order, b]
        rows[f"x̂_0 (sample {b})"] = traj.x0_pred[order, b].clamp(-1, 1)
    fig = plot_image_rows(rows, [f"t={k + 1}" for k in keep])
    save_figure(fig, out / f"{args.tag}_trajectory")
    (out / f"{args.tag}_figures.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
