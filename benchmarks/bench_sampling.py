"""Seconds per image of DDPM-1000, DDIM-50 and DDIM-100 with the same model on the same machine, in one run.

    python benchmarks/bench_sampling.py                          # CPU, "small" U-Net, 32 px, batch 16
    python benchmarks/bench_sampling.py --device cuda --amp --full --batch 64
    python benchmarks/bench_sampling.py --checkpoint runs/celeba64 --device cuda --full

Every loop runs through ``ddpm_helpers.generate.generate`` (the code the CLI and the notebooks use).
On the CPU, unless --full, each loop is timed over a few steps only and the per-step cost is
multiplied by its number of steps (DDPM: a schedule of --probe-steps steps, whose steps cost what the
1000-step schedule's do; DDIM: --probe-steps steps of the 1000-step schedule); the table says so.
The weights are random unless --checkpoint is given: the time per step does not depend on them.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a clone without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))       # benchmarks/common.py

from common import command_line, environment, environment_line, markdown_table, synchronize, write_results  # noqa: E402
from ddpm_helpers.config import UNET_PRESETS, unet_preset          # noqa: E402
from ddpm_helpers.generate import generate                        # noqa: E402
from ddpm_helpers.schedule import NoiseSchedule                   # noqa: E402
from ddpm_helpers.unet import UNet, count_parameters              # noqa: E402

LOOPS = [("DDPM", "ddpm", 1000), ("DDIM", "ddim", 50), ("DDIM", "ddim", 100)]


def build_model(args) -> tuple:
    """(model, 1000-step schedule, image size, description) from --checkpoint or a random-init preset."""
    device = torch.device(args.device)
    if args.checkpoint:
        from ddpm_helpers.checkpoint import load_model
        from ddpm_helpers.generate import resolve_checkpoint
        path = resolve_checkpoint(args.checkpoint)
        model, schedule, cfg = load_model(path, ema=True, device=device)
        return model, schedule, cfg.data.image_size, f"checkpoint {path.name}"
    torch.manual_seed(0)
    model = UNet(unet_preset(args.preset, image_size=args.image_size)).to(device).eval()
    return model, NoiseSchedule.linear(1000).to(device), args.image_size, f"preset {args.preset!r} (random weights)"


def timed_generate(model, schedule, sampler: str, steps: int, args, image_size: int) -> float:
    """Wall seconds of one generate() call for a batch (synchronised on CUDA)."""
    device = torch.device(args.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp and device.type == "cuda" else nullcontext()
    synchronize(device)
    start = time.perf_counter()
    with amp:
        generate(model, schedule, args.batch, sampler=sampler, steps=steps, batch_size=args.batch, seed=0,
                 device=device, image_size=image_size, channels=model.cfg.in_channels, progress=False)
    synchronize(device)
    return time.perf_counter() - start


def measure(model, schedule, args, image_size: int) -> List[Dict]:
    """Per loop: steps, steps actually timed, seconds per step for the batch, seconds per image."""
    extrapolate = not args.full
    probe = max(1, args.probe_steps)
    short = NoiseSchedule.linear(probe, 1e-4, 0.02).to(args.device)   # DDPM's probe: same work per step
    for sampler in ("ddpm", "ddim"):                                       # warm-up (allocator, cuDNN, first calls)
        timed_generate(model, short, sampler, probe, args, image_size)
    best = [float("inf")] * len(LOOPS)
    for _ in range(args.repeats):                 # round-robin, so a burst of load elsewhere hits every loop alike
        for i, (_, sampler, steps) in enumerate(LOOPS):
            run_steps = probe if extrapolate else steps
            sched = short if (extrapolate and sampler == "ddpm") else schedule
            best[i] = min(best[i], timed_generate(model, sched, sampler, run_steps, args, image_size))
    rows = []
    for (label, sampler, steps), seconds in zip(LOOPS, best):
        run_steps = probe if extrapolate else steps
        per_step = seconds / run_steps
        total = per_step * steps
        rows.append({"loop": f"{label}-{steps}", "steps": steps, "timed_steps": run_steps, "s_per_step": per_step,
                     "s_per_batch": total, "s_per_image": total / args.batch, "images_per_s": args.batch / total})
    return rows


def report(rows: List[Dict], args, what: str, params: int, image_size: int) -> str:
    """The run's settings as a line, then the markdown table of the loops."""
    device = torch.device(args.device)
    precision = "bf16 autocast" if args.amp and device.type == "cuda" else "fp32"
    how = (f"extrapolated from {args.probe_steps} timed steps per loop (per-step cost × steps)" if not args.full
           else "full loops timed")
    head = (f"{what}, {params / 1e6:.2f} M parameters, {image_size} px, batch {args.batch}, {device.type}, "
            f"{precision}; {how}; best of {args.repeats} (round-robin).\n\n")
    base = rows[0]["s_per_image"]
    table = [[r["loop"], r["steps"], r["timed_steps"], f"{r['s_per_step']:.4f}", f"{r['s_per_image']:.4g}",
              f"{r['images_per_s']:.4g}", f"{base / r['s_per_image']:.1f}×"] for r in rows]
    return head + markdown_table(["loop", "steps", "timed steps", "s / step (batch)", "s / image", "images / s",
                                  "speed-up vs DDPM-1000"], table)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(UNET_PRESETS), help="U-Net preset (default small)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16, help="images per batch (the s/image divides by it)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--full", action="store_true", help="time the full loops instead of extrapolating")
    p.add_argument("--probe-steps", type=int, default=10, help="steps timed per loop when extrapolating (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="timings per loop; the best is kept (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint", default=None, help="time a trained model instead of a random-init preset")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available here")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args.device)
    model, schedule, image_size, what = build_model(args)
    with torch.inference_mode():
        rows = measure(model, schedule, args, image_size)
    body = report(rows, args, what, count_parameters(model), image_size)
    command = command_line(argv, "benchmarks/bench_sampling.py")
    print(f"## Sampling speed ({env['date'][:10]}, {env.get('gpu') or 'CPU'})\n\n{environment_line(env)}\n"
          f"Reproduce: `{command}`\n\n{body}")
    if args.write:
        print(f"appended to {write_results('Sampling speed', body, env, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
