"""Seconds per image of DDPM-1000, DDIM-50 and DDIM-100 with the same model on the same machine, in one run.

    python benchmarks/bench_sampling.py                          # CPU, "small" U-Net, 32 px, batch 16
    python benchmarks/bench_sampling.py --device cuda --amp --full --batch 64
    python benchmarks/bench_sampling.py --checkpoint runs/celeba64 --device cuda --full
    python benchmarks/bench_sampling.py --device cuda --preset recommended --image-size 64 --amp \
        --fast off cudagraph compile+cudagraph --fast-batches 64 500        # 10,000 DDIM-50 samples, projected

Every loop runs through ``ddpm_helpers.generate.generate`` (the code the CLI and the notebooks use).
On the CPU, unless --full, each loop is timed over a few steps only and the per-step cost is
multiplied by its number of steps (DDPM: a schedule of --probe-steps steps, whose steps cost what the
1000-step schedule's do; DDIM: --probe-steps steps of the 1000-step schedule); the table says so.
The weights are random unless --checkpoint is given: the time per step does not depend on them.

--fast MODE ...: instead of the loop table, the time of 10,000 DDIM-50 samples (--fid-n) with the model
wrapped by ``ddpm_helpers.fast_sampling.compile_for_sampling`` in each mode (off = the eager model, cudagraph,
compile, compile+cudagraph) at each of --fast-batches: one untimed batch first (the CUDA graph capture or the
compilation; its time is reported and added once), then --fast-repeats timed batches; the projection is
ceil(N / batch) × the best batch time + that set-up time.
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

from ddpm_helpers.config import UNET_PRESETS, unet_preset  # noqa: E402
from ddpm_helpers.generate import generate  # noqa: E402
from ddpm_helpers.schedule import NoiseSchedule  # noqa: E402
from ddpm_helpers.unet import UNet, count_parameters  # noqa: E402

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


def timed_generate(model, schedule, sampler: str, steps: int, args, image_size: int,
                   batch: Optional[int] = None) -> float:
    """Wall seconds of one generate() call for a batch (synchronised on CUDA)."""
    batch = batch or args.batch
    device = torch.device(args.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp and device.type == "cuda" else nullcontext()
    synchronize(device)
    start = time.perf_counter()
    with amp:
        generate(model, schedule, batch, sampler=sampler, steps=steps, batch_size=batch, seed=0,
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
    for (label, _sampler, steps), seconds in zip(LOOPS, best):
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


def measure_fast(model, schedule, args, image_size: int) -> List[Dict]:
    """Per (batch size, wrapper mode): set-up seconds, seconds per DDIM-50 batch, projected time for --fid-n."""
    import math

    from ddpm_helpers.fast_sampling import compile_for_sampling
    t_start, rows = time.perf_counter(), []
    for batch in args.fast_batches:
        for mode in args.fast:
            row = {"batch": batch, "mode": mode}
            rows.append(row)
            if args.time_limit and time.perf_counter() - t_start > args.time_limit:
                row["status"] = "skipped (time limit)"
                continue
            try:
                fast = compile_for_sampling(model, mode=mode)
                run = lambda fast=fast, batch=batch: timed_generate(fast, schedule, "ddim", 50, args, image_size, batch)  # noqa: E731
                row["setup_s"] = run()                      # capture or compile, plus one batch
                row["s_per_batch"] = min(run() for _ in range(args.fast_repeats))
                row["setup_s"] = max(0.0, row["setup_s"] - row["s_per_batch"])
                row["mode_used"] = fast.mode_used
                row["projected_s"] = math.ceil(args.fid_n / batch) * row["s_per_batch"] + row["setup_s"]
                row["status"] = "ok"
            except Exception as e:                      # a compile failure marks the row; the others still run
                row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            print(f"[bench_sampling] batch {batch} {mode}: {row['status']} "
                  f"{row.get('s_per_batch', float('nan')):.3f} s/batch", flush=True)
    return rows


def report_fast(rows: List[Dict], args, what: str, params: int, image_size: int) -> str:
    device = torch.device(args.device)
    precision = "bf16 autocast" if args.amp and device.type == "cuda" else "fp32"
    head = (f"{what}, {params / 1e6:.2f} M parameters, {image_size} px, {device.type}, {precision}; DDIM-50 through "
            f"generate(); {args.fid_n:,} samples projected from the best of {args.fast_repeats} timed batches "
            f"plus the set-up (graph capture or compilation, once per batch shape).\n\n")
    table = []
    eager = {r["batch"]: r for r in rows if r["mode"] == "off" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            table.append([r["mode"], r["batch"], r["status"], "", "", "", ""])
            continue
        base = eager.get(r["batch"])
        table.append([r["mode"] if r["mode_used"] == r["mode"] else f"{r['mode']} (ran as {r['mode_used']})",
                      r["batch"], f"{r['setup_s']:.1f}", f"{r['s_per_batch']:.3f}",
                      f"{r['batch'] / r['s_per_batch']:,.0f}", f"{r['projected_s']:,.1f}",
                      f"{base['s_per_batch'] / r['s_per_batch']:.2f}×" if base else ""])
    return head + markdown_table(["mode", "batch", "set-up s", "s / batch (DDIM-50)", "images / s",
                                  f"{args.fid_n:,} samples (s)", "per batch vs eager"], table, align="lrrrrrr")


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
    p.add_argument("--fast", nargs="+", choices=["off", "cudagraph", "compile", "compile+cudagraph"],
                   help="project --fid-n DDIM-50 samples with the model wrapped in these fast_sampling modes")
    p.add_argument("--fast-batches", nargs="+", type=int, help="batch sizes for --fast (default: --batch)")
    p.add_argument("--fast-repeats", type=int, default=2, help="timed batches per --fast row; the best counts")
    p.add_argument("--fid-n", type=int, default=10_000, help="samples to project for --fast (default 10,000)")
    p.add_argument("--time-limit", type=float, help="--fast: start no new row after this many seconds")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.fast_batches = args.fast_batches or [args.batch]
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
        rows = measure_fast(model, schedule, args, image_size) if args.fast else measure(model, schedule, args,
                                                                                            image_size)
    report_fn = report_fast if args.fast else report
    body = report_fn(rows, args, what, count_parameters(model), image_size)
    if args.json:
        import json
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {"env": env, "args": vars(args), "rows": rows, "body": body}
        Path(args.json).write_text(json.dumps(record, indent=1, default=str))
    command = command_line(argv, "benchmarks/bench_sampling.py")
    print(f"## Sampling speed ({env['date'][:10]}, {env.get('gpu') or 'CPU'})\n\n{environment_line(env)}\n"
          f"Reproduce: `{command}`\n\n{body}")
    if args.write:
        print(f"appended to {write_results('Sampling speed', body, env, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
