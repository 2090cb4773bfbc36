"""The CPU recipe before and after issue 24's defaults decision, side by side at the same wall-time budget.

    python benchmarks/bench_recipe.py --data ../shared/data/celeba_5k_half              # 480 s each, 2 seeds
    python benchmarks/bench_recipe.py --data DIR --seconds 60 --seeds 1 --json out.json   # a quick look
    python benchmarks/bench_recipe.py --data DIR --after min-snr-5,input-perturbation-0.1   # levers combined

What it measures (issue 24's target): the `cpu-celeba` preset's SWD excess over the real-vs-real floor after
``--seconds`` of training on the first 2,500 half-size CelebA images, for the recipe of main at af5d58b
("before", the preset cpu-celeba-v1) and the preset as it is now ("after"), or, with ``--after a,b``, the
before recipe with the changes of those ablation variants applied one after the other (their combined effect).
Both recipes of one seed train at the same time, each in its own process with one torch thread, so that the
machine's load hits both alike (on the 2-core dev machine two one-thread runs give 1.6x the images per second of one
two-thread run); seeds run one after the other. Each run is scored as the ablation scores (ablate.score): 256
samples, DDIM-50, sampling seed 0, EMA weights, SWD×10³ against the first 256 held-out images (2,501-2,756), beside
the floor (256 training images against the same held-out ones). Excess = SWD − floor; the reduction =
1 − excess(after) / excess(before), per seed and of the means.

Not a test: nothing here runs in the test suite; run folders go under runs/bench_recipe (ignored by git).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))    # run from a clone without installing
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpm_helpers import ablate  # noqa: E402
from ddpm_helpers.checkpoint import load_model  # noqa: E402
from ddpm_helpers.config import TRAIN_PRESETS  # noqa: E402
from ddpm_helpers.train import train  # noqa: E402

# The fields a recipe decision can change; "before" is the preset cpu-celeba-v1 (cpu-celeba as it was at af5d58b).
RECIPE_FIELDS = ("model", "diffusion", "batch_size", "lr", "warmup_steps", "ema_decay", "ema_warmup", "min_snr_gamma",
                 "input_perturbation")


def recipes(train_images: int, data: str, after: str = ""):
    now = TRAIN_PRESETS["cpu-celeba"]
    now = dataclasses.replace(now, data=dataclasses.replace(now.data, root=data, max_images=train_images,
                                                            offline_fallback=False))
    before = dataclasses.replace(now, **{k: getattr(TRAIN_PRESETS["cpu-celeba-v1"], k) for k in RECIPE_FIELDS})
    if not after:
        return {"before (af5d58b)": before, "after (now)": now}
    combined = before
    for name in after.split(","):
        v = ablate.variant(name.strip())
        if v.kind != "train":
            raise SystemExit(f"--after {name}: a sampling variant changes no recipe")
        combined = v.config(combined)
    return {"before (af5d58b)": before, f"after ({after})": combined}


def changed_fields(before, after):
    out = {}
    for k in RECIPE_FIELDS:
        a, b = getattr(before, k), getattr(after, k)
        if a != b:
            out[k] = (a, b) if not dataclasses.is_dataclass(a) else {
                f: (getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__ if getattr(a, f) != getattr(b, f)}
    return out


def _run(cfg, images, conn):
    torch.set_num_threads(1)
    t0 = time.time()
    res = train(cfg, images=images, progress=False, verbose=False)
    conn.send({"step": res.step, "checkpoint": str(res.checkpoint), "wall": time.time() - t0,
               "stop_reason": res.stop_reason})
    conn.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the half-size CelebA folder")
    p.add_argument("--train-images", type=int, default=2500)
    p.add_argument("--seconds", type=float, default=480.0, help="wall-time budget per run (default 480)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--out", default="runs/bench_recipe")
    p.add_argument("--after", default="", help="ablation variants to combine on the before recipe (default: the "
                   "preset as it is now)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    rec = recipes(args.train_images, args.data, args.after)
    before, after = rec.values()
    diff = changed_fields(before, after)
    print("changed by the defaults decision:", diff or "nothing (the preset is still af5d58b's)")
    train_images, heldout, desc = ablate.split_data(after)
    fl = ablate.floor(train_images, heldout, args.n)
    print(f"data: {desc}\nfloor (real vs real, n = {args.n}): {fl:.2f}")
    ctx = mp.get_context("spawn")
    rows = []
    for seed in range(args.seeds):
        procs = []
        for name, cfg in rec.items():
            folder = Path(args.out) / f"seed{seed}" / name.split()[0]      # before / after
            if folder.exists() and any(folder.glob("ckpt_*")):
                raise SystemExit(f"{folder} holds a run already: remove it or choose another --out")
            cfg = dataclasses.replace(cfg, seed=seed, out_dir=str(folder), time_budget=args.seconds,
                                      max_steps=10**9, epochs=None, sample_every=0, checkpoint_every=10**9,
                                      log_every=100, num_threads=1)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_run, args=(cfg, train_images, send))
            proc.start()
            procs.append((name, cfg, proc, recv))
        for name, cfg, proc, recv in procs:
            info = recv.recv()
            proc.join()
            model, schedule, _ = load_model(info["checkpoint"])
            value = ablate.score(model, schedule, ablate.Sampler(), args.n, heldout, seed=0)
            rows.append({"recipe": name, "seed": seed, "steps": info["step"],
                         "images_seen": info["step"] * cfg.batch_size, "train_wall_s": round(info["wall"], 1),
                         "swd": value, "excess": value - fl})
            print(f"seed {seed} {name}: {info['step']:,} steps ({info['step'] * cfg.batch_size:,} images) "
                  f"SWD {value:.2f}, excess over floor {value - fl:.2f}", flush=True)
    ex = {name: [r["excess"] for r in rows if r["recipe"] == name] for name in rec}
    b, a = (float(np.mean(v)) for v in ex.values())
    summary = {"before": "before (af5d58b)", "after": list(rec)[1], "floor": fl, "n": args.n,
               "seconds": args.seconds, "data": desc, "changed": repr(diff),
               "runs": rows, "excess_mean": {"before": b, "after": a}, "reduction": 1 - a / b,
               "reduction_per_seed": [1 - y / x for x, y in zip(*ex.values())]}
    print(f"excess over floor, mean of {args.seeds} seeds: before {b:.2f}, after {a:.2f}: "
          f"{100 * (1 - a / b):.0f} % lower (per seed: "
          + ", ".join(f"{100 * r:.0f} %" for r in summary["reduction_per_seed"]) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
