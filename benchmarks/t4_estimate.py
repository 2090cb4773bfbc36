"""What a Kaggle T4×2 session delivers, estimated from a bigger card's measured step (issue 13, item 4).

    python benchmarks/t4_estimate.py                                   # provisional: the 2026-11-27 H200 numbers
    python benchmarks/t4_estimate.py --from gpu_out/step_eager.json    # a bench_step.py run (its fp16 rows)
    python benchmarks/t4_estimate.py --t4-efficiency 0.5 --allreduce-gbs 3 --markdown /tmp/t4.md

The chain of assumptions, each a flag:

1. images/s of each preset's training step on the measured card, in fp16 + GradScaler (a T4 has no bf16 tensor
   cores). From a bench_step.py JSON: its "fp16 + GradScaler" rows at the preset's batch. Without one
   (provisional): the 2026-11-27 H200 bf16 rows of benchmarks/gpu_h200_2026-11-27/bench_train.json, fp16
   assumed to run at the bf16 rate on tensor cores (the same peak on Hopper); celeba128 was not measured
   there, so its rate is derived from its FLOPs per image at the TFLOP/s the recommended U-Net reached at
   128 px.
2. Scaled to one T4 by the ratio of matmul rates: the T4's 65 TFLOP/s fp16 tensor peak (datasheet) × an
   assumed efficiency (default 0.6: a 70 W card that drops from its boost clock under sustained load; not
   measured here) against the measured card's matmul rate in the same precision. This assumes the step
   reaches the same fraction of the peak on both cards. That is conservative where the big card idles between
   kernel launches (a T4's kernels run ~15× longer, so the same launch gaps cost it proportionally less) and
   optimistic where the step is memory-bound (320 GB/s against 4.8 TB/s: a similar ratio, 0.067).
3. Two T4s with DistributedDataParallel: each computes half the batch, then the fp32 gradients (4 bytes per
   parameter) are all-reduced over PCIe: time = bytes / bus bandwidth (two GPUs, ring), default 5 GB/s (no
   NVLink; a conservative figure for PCIe 3 through the host), half of it hidden behind the backward pass
   (DDP's bucketed overlap; assumption). Efficiency = compute / (compute + exposed all-reduce).
4. Epochs of CelebA's 162,770 training images per session: 11.5 h of training in a 12-hour session (the
   README's --time-budget 11h30m; start-up and the data cache take minutes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import markdown_table  # noqa: E402

CELEBA_TRAIN = 162_770
PROVISIONAL_JSON = HERE / "gpu_h200_2026-11-27" / "bench_train.json"
# preset → (our U-Net preset in bench_train.py, size, batch, mode): the Trainer's defaults on CUDA at the time
PROVISIONAL_ROWS = {"celeba64": ("recommended", 64, 128, "amp"), "report64": ("report", 64, 128, "amp+channels_last"),
                    "report128": ("report", 128, 32, "amp+channels_last")}
DERIVED_FROM = {"celeba128": ("recommended", 128, 32, "amp")}       # same TFLOP/s as this measured row
PRESETS = ("celeba64", "celeba128", "report64", "report128")
REPORT_HOURS_128 = 42.0                                              # the original report's 128 px training


def preset_model_numbers(preset: str) -> Dict[str, float]:
    """Parameters and forward + backward FLOPs per image of a training preset, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ddpm_helpers.config import train_preset
    from ddpm_helpers.unet import UNet, count_parameters
    cfg = train_preset(preset)
    s, c = cfg.data.image_size, cfg.model.in_channels
    with torch.device("meta"):
        model = UNet(cfg.model)
        x, t = torch.randn(2, c, s, s), torch.randint(0, cfg.diffusion.timesteps, (2,))
    with FlopCounterMode(display=False) as counter:
        model(x, t).float().pow(2).mean().backward()
    return {"params": count_parameters(model), "flops_per_image": counter.get_total_flops() / 2,
            "batch": cfg.batch_size}


def provisional_rates(path: Path = PROVISIONAL_JSON) -> Dict[str, Any]:
    """{preset: images/s, source text} and the card's peak, from the 2026-11-27 H200 bench_train.json."""
    data = json.loads(path.read_text())
    rows = {(r["preset"], r["size"], r["batch"], r["mode"]): r for r in data["results"]
            if r["model"] == "ours" and r["status"] == "ok"}
    rates = {}
    for preset, key in PROVISIONAL_ROWS.items():
        rates[preset] = {"images_per_s": rows[key]["images_per_s"],
                         "source": f"H200 bf16, {key[0]} U-Net {key[1]} px batch {key[2]} {key[3]}"}
    for preset, key in DERIVED_FROM.items():
        r = rows[key]
        tflops = r["images_per_s"] * r["flops_per_step"] / r["batch"]
        rates[preset] = {"images_per_s": tflops / preset_model_numbers(preset)["flops_per_image"],
                         "source": f"derived: its FLOPs at the {tflops / 1e12:.0f} TFLOP/s of {key[0]} {key[1]} px"}
    return {"rates": rates, "peak": data["peaks_flops"]["bf16"]["matmul"], "card": "H200",
            "label": "provisional, from the 2026-11-27 H200 bf16 numbers, fp16 assumed equal to bf16 on tensor cores"}


def bench_step_rates(paths: List[str]) -> Dict[str, Any]:
    """The fp16 + GradScaler rows (preset batch) of bench_step.py runs, and the card's fp16 matmul rate."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rates = {}
    for run in runs:
        for r in run["results"]:
            if r.get("change") == "fp16 + GradScaler" and r["status"] == "ok":
                rates[r["preset"]] = {"images_per_s": r["images_per_s"],
                                      "source": f"measured fp16 + GradScaler, batch {r['batch']}"}
    env = runs[0]["env"]
    peaks = runs[0]["peaks"]
    return {"rates": rates, "peak": peaks.get("fp16") or peaks.get("bf16") or next(iter(peaks.values())),
            "card": env.get("gpu") or "CPU (dry run)", "label": f"from {', '.join(paths)} ({env['date'][:10]})"}


def ddp_efficiency(params: int, images_per_s_one: float, global_batch: int, gbs: float, overlap: float,
                   world: int = 2) -> float:
    """compute / (compute + exposed all-reduce) for one step of ``global_batch`` split over ``world`` GPUs.

    all-reduce time (ring) = 2 (world − 1) / world × bytes / bus bandwidth, bytes = 4 × params (fp32 gradients).
    """
    compute = global_batch / world / images_per_s_one
    allreduce = 2 * (world - 1) / world * 4 * params / (gbs * 1e9)
    return compute / (compute + (1 - overlap) * allreduce)


def estimate(source: Dict[str, Any], args) -> List[Dict[str, Any]]:
    t4_peak = args.t4_peak_tflops * 1e12 * args.t4_efficiency
    ratio = t4_peak / source["peak"]
    rows = []
    for preset in PRESETS:
        if preset not in source["rates"]:
            continue
        m = preset_model_numbers(preset)
        big = source["rates"][preset]["images_per_s"]
        one = big * ratio
        eff = ddp_efficiency(m["params"], one, m["batch"], args.allreduce_gbs, args.overlap)
        two = 2 * one * eff
        rows.append({"preset": preset, "params": m["params"], "gflop_per_image": m["flops_per_image"] / 1e9,
                     "card_images_per_s": big, "source": source["rates"][preset]["source"], "t4_images_per_s": one,
                     "ddp_efficiency": eff, "t4x2_images_per_s": two,
                     "epochs_per_session": two * args.session_hours * 3600 / CELEBA_TRAIN,
                     "hours_100_epochs": 100 * CELEBA_TRAIN / two / 3600})
    return rows


def markdown(rows: List[Dict[str, Any]], source: Dict[str, Any], args) -> str:
    ratio = args.t4_peak_tflops * args.t4_efficiency * 1e12 / source["peak"]
    table = [[r["preset"], f"{r['params'] / 1e6:.1f} M", f"{r['gflop_per_image']:.1f}",
              f"{r['card_images_per_s']:,.0f}", f"{r['t4_images_per_s']:,.0f}", f"{100 * r['ddp_efficiency']:.0f} %",
              f"{r['t4x2_images_per_s']:,.0f}", f"{r['epochs_per_session']:.1f}", f"{r['hours_100_epochs']:,.0f} h"]
             for r in rows]
    head = (f"**Kaggle T4×2 estimate ({source['label']}).** One T4 = {args.t4_peak_tflops:g} TFLOP/s fp16 "
            f"tensor peak × {args.t4_efficiency:g} assumed sustained = {args.t4_peak_tflops * args.t4_efficiency:.0f} "
            f"TFLOP/s, against the measured {source['card']}'s {source['peak'] / 1e12:.0f} TFLOP/s: × {ratio:.4f}. "
            f"DDP: fp32 gradients all-reduced at {args.allreduce_gbs:g} GB/s, {100 * args.overlap:.0f} % hidden "
            f"behind backward. {args.session_hours:g} h of training per 12-hour session; CelebA train split "
            f"{CELEBA_TRAIN:,} images.\n\n")
    body = markdown_table(["preset", "params", "GFLOP/img (fwd+bwd)", f"{source['card']} img/s", "one T4 img/s",
                           "DDP efficiency", "T4×2 img/s", "epochs / session", "100 epochs"], table,
                          align="lrrrrrrrr")
    sources = "\n".join(f"- {r['preset']}: {r['source']}" for r in rows)
    r128 = next((r for r in rows if r["preset"] == "report128"), None)
    tail = ""
    if r128:
        tail = (f"\nThe report trained its 128 px model for 100 epochs in ≈ {REPORT_HOURS_128:g} h on Kaggle; this "
                f"estimate gives {r128['hours_100_epochs']:,.0f} h for `report128` on T4×2 (100 epochs of the "
                f"train split), i.e. {r128['hours_100_epochs'] / (args.session_hours):.1f} sessions.\n")
    return head + body + "\nRates on the measured card:\n" + sources + "\n" + tail


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="from_json", nargs="+", metavar="JSON",
                   help="bench_step.py JSON(s) with fp16 + GradScaler rows (default: the provisional H200 numbers)")
    p.add_argument("--t4-peak-tflops", type=float, default=65.0, help="T4 fp16 tensor peak, datasheet (65)")
    p.add_argument("--t4-efficiency", type=float, default=0.6,
                   help="fraction of that peak a large fp16 matmul sustains on a T4 (assumed 0.6)")
    p.add_argument("--allreduce-gbs", type=float, default=5.0, help="all-reduce bus bandwidth, GB/s (assumed 5)")
    p.add_argument("--overlap", type=float, default=0.5, help="share of the all-reduce hidden by DDP (assumed 0.5)")
    p.add_argument("--session-hours", type=float, default=11.5, help="training hours per 12-hour session (11.5)")
    p.add_argument("--json", help="write the rows and assumptions as JSON here")
    p.add_argument("--markdown", help="write the markdown here too")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    source = bench_step_rates(args.from_json) if args.from_json else provisional_rates()
    rows = estimate(source, args)
    text = markdown(rows, source, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"source": {k: v for k, v in source.items() if k != "rates"},
                                               "assumptions": vars(args), "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
