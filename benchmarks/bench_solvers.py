"""Quality against model calls: SWD of DDPM-1000, DDIM and DPM-Solver++ 2M/3M samples against held-out faces.

    python benchmarks/bench_solvers.py --checkpoint runs/fig32 --out benchmarks/solvers_celeba32.json
    python benchmarks/bench_solvers.py --checkpoint runs/fig32 --n 200 --calls 10 20 --samplers ddim dpm++2m
    python benchmarks/bench_solvers.py --dry-run --out /tmp/solvers.json      # tiny random model, no CelebA

For every sampler (on its default grid, plus any --grids SAMPLER:SPACING) and every number of model calls, n
samples are drawn for each sampling seed through ``ddpm_helpers.generate.generate`` (the code the CLI uses) and
scored by SWD×10³ (ddpm_helpers.swd.swd, fixed SWD seed) against n held-out real images of the checkpoint's run;
the real-vs-real floor is SWD(the run's first n training images, the same held-out images). DDPM runs all T
steps (one row). Each row records the SWD per sampling seed, their mean and spread (max − min), and wall seconds
per image. The JSON is rewritten after every row, so a run stopped early keeps what it measured.
Default grids: DDIM "uniform" (the DDIM paper's), DPM-Solver++ "logsnr" (the best on the Gaussian oracle: 2M's
std error 3.7e-3 at 10 calls against 1.3e-2 uniform, 2.8e-3 at 20 against 5.1e-2; tests/test_dpm_solver.py).
--dry-run: a tiny random U-Net (T = 50, 8 px) and random "real" images, for the tests; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment, markdown_table  # noqa: E402

from ddpm_helpers.config import SAMPLER_NAMES as SAMPLERS  # noqa: E402
from ddpm_helpers.generate import SOLVER_ORDERS, default_spacing, generate  # noqa: E402
from ddpm_helpers.images import from_model_range  # noqa: E402
from ddpm_helpers.schedule import SPACINGS, NoiseSchedule  # noqa: E402
from ddpm_helpers.swd import swd  # noqa: E402

CALLS = (5, 10, 20, 50, 100)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint .pt or run folder (EMA weights)")
    p.add_argument("--dry-run", action="store_true", help="tiny random model and random real images (tests)")
    p.add_argument("--out", default="benchmarks/solvers.json", help="JSON written after every row")
    p.add_argument("--n", type=int, default=500, help="samples per row and seed, and real images per set")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default 0 1)")
    p.add_argument("--calls", type=int, nargs="+", default=list(CALLS), help="model calls of DDIM / DPM-Solver++")
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    p.add_argument("--grids", nargs="*", default=[], metavar="SAMPLER:SPACING",
                   help="extra rows on other grids, e.g. ddim:logsnr dpm++2m:uniform")
    p.add_argument("--swd-seed", type=int, default=0, help="SWD's patch/direction seed (fixed across rows)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="CelebA folder, when not where the checkpoint's run found it")
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (not args.dry_run):
        p.error("give --checkpoint, or --dry-run (and not both)")
    for g in args.grids:
        sampler, _, spacing = g.partition(":")
        if sampler not in SAMPLERS or sampler == "ddpm" or spacing not in SPACINGS:
            p.error(f"--grids {g!r}: want SAMPLER:SPACING with SAMPLER in ddim, dpm++2m, dpm++3m and SPACING in "
                    f"{', '.join(SPACINGS)}")
    return args


def load(args):
    """(model, schedule, held-out uint8 (n, C, H, W), other real uint8 (n, C, H, W), description)."""
    if args.dry_run:
        from ddpm_helpers.config import unet_preset
        from ddpm_helpers.unet import UNet
        torch.manual_seed(0)
        model = UNet(dataclasses.replace(unet_preset("tiny", base_channels=8), image_size=8)).eval()
        g = torch.Generator().manual_seed(0)
        real = torch.randint(0, 256, (2 * args.n, 3, 8, 8), generator=g, dtype=torch.uint8)
        return model, NoiseSchedule.linear(50), real[:args.n], real[args.n:], "dry run: random images"
    from ddpm_helpers.checkpoint import load_model
    from ddpm_helpers.data import prepare_images
    from ddpm_helpers.generate import resolve_checkpoint
    from ddpm_helpers.swd import heldout_images
    model, schedule, cfg = load_model(resolve_checkpoint(args.checkpoint), ema=True, device=args.device)
    data = dataclasses.replace(cfg.data, root=args.data or cfg.data.root, offline_fallback=False)
    heldout, desc = heldout_images(data)
    train, _ = prepare_images(dataclasses.replace(data, max_images=args.n), progress=False)
    n = min(args.n, len(heldout), len(train))
    def as_chw(images):                                           # uint8 (N, H, W, C) memmap → (n, C, H, W) tensor
        return torch.from_numpy(np.ascontiguousarray(np.asarray(images[:n]))).permute(0, 3, 1, 2)
    return model, schedule, as_chw(heldout), as_chw(train), f"{desc}; floor: the run's first {n:,} training images"


def rows_to_run(args, T: int):
    """(sampler, spacing, calls) for every row: DDPM once (T calls), the others at each --calls on their grids."""
    rows = [("ddpm", None, T)] if "ddpm" in args.samplers else []
    grids = [(s, default_spacing(s)) for s in args.samplers if s != "ddpm"]
    grids += [tuple(g.split(":")) for g in args.grids]
    rows += [(s, sp, c) for s, sp in grids for c in args.calls if c <= T]
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    model, schedule, heldout, other, desc = load(args)
    n = len(heldout)
    floor = swd(other, heldout, seed=args.swd_seed, n=n).mean
    result = {"checkpoint": args.checkpoint, "dry_run": args.dry_run, "n": n, "seeds": args.seeds,
              "swd_seed": args.swd_seed, "heldout": desc, "real_vs_real": floor, "T": schedule.T,
              "environment": environment(args.device), "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for sampler, spacing, calls in rows_to_run(args, schedule.T):
        scores, seconds = [], 0.0
        for seed in args.seeds:
            start = time.perf_counter()
            x = generate(model, schedule, n, sampler=sampler, steps=calls, seed=seed, batch_size=args.batch_size,
                         device=args.device, progress=False, spacing=spacing,
                         image_size=heldout.shape[-1], channels=heldout.shape[1])
            seconds += time.perf_counter() - start
            scores.append(swd(from_model_range(x), heldout, seed=args.swd_seed, n=n).mean)
        row = {"sampler": sampler, "order": SOLVER_ORDERS.get(sampler), "spacing": spacing, "calls": calls,
               "swd": scores, "swd_mean": float(np.mean(scores)), "swd_spread": float(np.ptp(scores)),
               "seconds_per_image": seconds / (n * len(args.seeds))}
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=2))
        print(f"{sampler:8s} {spacing or '-':9s} {calls:5d} calls  SWD {row['swd_mean']:.2f} "
              f"(spread {row['swd_spread']:.2f})  {row['seconds_per_image']:.3f} s/img", flush=True)
    print(markdown_table(["sampler", "grid", "model calls", "SWD×10³ (mean of seeds)", "seed spread", "s / image"],
                         [[r["sampler"], r["spacing"] or "-", r["calls"], f"{r['swd_mean']:.2f}",
                           f"{r['swd_spread']:.2f}", f"{r['seconds_per_image']:.3f}"] for r in result["rows"]]))
    print(f"real vs real (floor): {floor:.2f}; n = {n:,}; held-out: {desc}")
    return result


if __name__ == "__main__":
    main()
