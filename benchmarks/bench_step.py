"""Training-step efficiency experiments on one card (issue 13): what each change does to the step of each preset.

    python benchmarks/bench_step.py --device cuda --stage eager   --json gpu_out/step_eager.json
    python benchmarks/bench_step.py --device cuda --stage compile --json gpu_out/step_compile.json --time-limit 150
    python benchmarks/bench_step.py --report gpu_out/step_eager.json gpu_out/step_compile.json   # markdown tables
    python benchmarks/bench_step.py --dry-run --stage eager --json /tmp/step.json              # CPU, tiny sizes

Not a test: nothing here runs in the test suite, and no timing is asserted anywhere.

The step is the package's own (``Trainer.train_step`` on a trainer from ``train.build_trainer`` without data):
q_sample, forward under autocast, MSE, backward, clipping, the finiteness check (one host sync), fused Adam,
LR schedule, EMA. Each row changes one thing against the preset's default on this device (bf16 autocast on
an H100/H200, channels_last on for BatchNorm U-Nets only, no compile, the preset's batch):

- stage "eager": channels_last flipped; fp16 + GradScaler (a T4's path); GroupNorm kept in the autocast
  dtype (GroupNorm presets; autocast otherwise runs it in fp32 with a cast before and after); batch ×2, ×4
  and ×8 (until memory runs out); and a torch.profiler summary of the default step (top kernels, share of each
  kind of op, how busy the GPU was).
- stage "compile", in priority order (a stage stops starting rows after --time-limit seconds; each row's
  JSON is written as soon as it is done, so a run killed by `timeout` keeps every finished row): torch.compile
  in its default mode (inductor fuses GroupNorm + SiLU and the elementwise work), "reduce-overhead" (the same
  plus CUDA graphs, which remove the launch gaps) and "max-autotune-no-cudagraphs", with the compile time and
  the number of steps after which the compile has paid for itself.

Against the hardware: FLOPs of one step counted once per preset with torch.utils.flop_counter (convolutions,
matmuls, attention; norms, elementwise and the optimizer count 0), × steps per second, as a fraction of the
measured bf16 matmul rate (8192³ on CUDA; fp32 on the CPU), the yardstick issue 13 sets (celeba64 ≥ 30 %,
report ≥ 40 %).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_train import _error_text, apply_fixes, count_step_flops, matmul_flops, profile_step, random_batch  # noqa: E402
from common import environment, environment_line, markdown_table, median, synchronize, timed  # noqa: E402

from ddpm_helpers.config import TrainConfig, train_preset, unet_preset  # noqa: E402
from ddpm_helpers.train import build_trainer  # noqa: E402
from ddpm_helpers.unet import UNet, count_parameters  # noqa: E402

PRESETS = ("celeba64", "report64", "report128", "celeba128")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
GOALS = {"celeba": 0.30, "report": 0.40}          # issue 13: fraction of the bf16 matmul peak


@dataclass(frozen=True)
class Variant:
    """One change against the preset's default step. None fields keep the default."""
    preset: str
    change: str = "default"
    batch_factor: int = 1
    amp: str = "auto"
    channels_last: Union[bool, str, None] = None    # True/False, "flip" (not the default), None (default)
    gn_lowp: bool = False
    compile: Optional[str] = None           # torch.compile mode, or None for eager


def preset_config(name: str, dry_run: bool) -> TrainConfig:
    """The training preset; with --dry-run a tiny stand-in at 16 px, batch 8: the `tiny` U-Net as the dry run's
    `train --unet tiny` builds it (so that its compiled graph is in inductor's cache for that run), with
    BatchNorm and ReLU for the report presets."""
    cfg = train_preset(name)
    if not dry_run:
        return cfg
    c = cfg.model.in_channels
    report = {"norm": "batch", "act": "relu", "attention": False} if cfg.model.norm == "batch" else {}
    tiny = unet_preset("tiny", in_channels=c, out_channels=c, **report)
    return dataclasses.replace(cfg, model=tiny, batch_size=8, data=dataclasses.replace(cfg.data, image_size=16))


def eager_plan(presets: List[str], max_batch_factor: int) -> List[Variant]:
    plan = []
    for p in presets:
        group_norm = train_preset(p).model.norm == "group"
        plan += [Variant(p), Variant(p, "channels_last flipped", channels_last="flip"),
                 Variant(p, "fp16 + GradScaler", amp="fp16")]
        if group_norm:
            plan.append(Variant(p, "GroupNorm in bf16", gn_lowp=True))
        f = 2
        while f <= max_batch_factor:
            plan.append(Variant(p, f"batch ×{f}", batch_factor=f))
            f *= 2
    return plan


def compile_plan(presets: List[str], modes: List[str]) -> List[Variant]:
    """Priority order: default mode first for the two 64 px presets, then the other modes, then 128 px."""
    first = [p for p in ("celeba64", "report64") if p in presets]
    rest = [p for p in presets if p not in first]
    plan = [Variant(p, f"compile {m}", compile=m) for m in modes for p in first]
    plan += [Variant(p, "compile default", compile="default") for p in rest if "default" in modes]
    return plan


# ---------------------------------------------------------------------------------------------
# One variant
# ---------------------------------------------------------------------------------------------
def build(v: Variant, cfg: TrainConfig, device: torch.device):
    """(trainer, uint8 batch) for the variant, through the package's own trainer factory."""
    torch.manual_seed(0)
    model = UNet(cfg.model)
    if v.gn_lowp:
        apply_fixes(model)
    amp = v.amp
    cl = v.channels_last
    if cl == "flip":
        default_cl = device.type == "cuda" and cfg.model.norm == "batch"      # the Trainer's default
        cl = not default_cl
    run_cfg = dataclasses.replace(cfg, amp=amp, channels_last=cl, compile=False,
                                  batch_size=cfg.batch_size * v.batch_factor)
    bt = build_trainer(run_cfg, device=str(device), model=model, with_data=False, progress=False, verbose=False)
    if v.compile:
        bt.net = torch.compile(bt.model, **({} if v.compile == "default" else {"mode": v.compile}))
    batch = random_batch(run_cfg.batch_size, cfg.model.in_channels, cfg.data.image_size, device)
    return bt, batch


def run_variant(v: Variant, cfg: TrainConfig, device: torch.device, args, flops: Dict[str, float],
                do_profile: bool) -> Dict[str, Any]:
    row: Dict[str, Any] = {"preset": v.preset, "change": v.change, "variant": dataclasses.asdict(v),
                           "params": count_parameters(UNet(cfg.model)), "size": cfg.data.image_size,
                           "batch": cfg.batch_size * v.batch_factor, "status": "ok"}
    bt = batch = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        bt, batch = build(v, cfg, device)
        row.update(amp=str(bt.amp_dtype).replace("torch.", ""), channels_last=bt.memory_format == torch.channels_last)

        def step():
            _, _, ok = bt.train_step(batch)
            if not ok:
                raise RuntimeError("non-finite loss in the benchmark step")
        t0 = time.perf_counter()
        step()
        synchronize(device)
        row["first_step_s"] = time.perf_counter() - t0         # compile time for the compiled rows
        for _ in range(args.warmup):
            step()
        one = timed(step, 1, device)
        steps = max(args.min_steps, min(args.max_steps, round(args.round_s / max(one, 1e-6))))
        times = [timed(step, steps, device) for _ in range(args.repeats)]
        rates = [steps * row["batch"] / t for t in times]
        row.update(steps=steps, times_s=times, images_per_s=median(rates), images_per_s_min=min(rates),
                   images_per_s_max=max(rates))
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        if v.preset not in flops:
            flops[v.preset] = count_step_flops(bt, batch) / row["batch"]       # per image, counted on eager
        row["flops_per_image"] = flops[v.preset]
        row["achieved_flops"] = flops[v.preset] * row["images_per_s"]
        if do_profile:
            p = profile_step(bt, batch, device, top=8)
            step_ms = 1e3 * row["batch"] / row["images_per_s"]
            p["step_ms"] = step_ms
            if p["clock"].startswith("kernel"):
                p["busy"] = p["total_ms"] / step_ms
            row["profile"] = p
    except Exception as e:          # out of memory, a compile failure: the row says so and the run goes on
        row["status"] = "failed: " + _error_text(e)
    finally:
        bt = batch = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if hasattr(torch, "_dynamo"):
            torch._dynamo.reset()                               # compiled graphs of this row go with it
    return row


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.1f} %"


def load_runs(paths: List[str]) -> List[Dict[str, Any]]:
    runs = [json.loads(Path(p).read_text()) for p in paths if Path(p).exists()]
    if not runs:
        raise SystemExit(f"none of {paths} exists")
    return runs


def merge(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The rows of several stages' runs (same machine) as one report's data."""
    rows = [r for run in runs for r in run["results"]]
    return {"env": runs[0]["env"], "peaks": runs[0]["peaks"], "rows": rows,
            "complete": {run["stage"]: run["complete"] for run in runs}, "elapsed": sum(r["elapsed_s"] for r in runs)}


def report(data: Dict[str, Any]) -> str:
    peaks, rows = data["peaks"], data["rows"]
    ref_kind = "bf16" if "bf16" in peaks else next(iter(peaks))
    ref = peaks[ref_kind]
    defaults = {r["preset"]: r for r in rows if r["change"] == "default" and r["status"] == "ok"}
    table = []
    for r in rows:
        head = [r["preset"], str(r["batch"]), r["change"]]
        if r["status"] != "ok":
            table.append(head + [r["status"]] + [""] * 7)
            continue
        base = defaults.get(r["preset"])
        speed = r["images_per_s"] / base["images_per_s"] if base else None
        pays = ""
        if r["variant"]["compile"] and base and r["images_per_s"] > base["images_per_s"]:
            saved = r["batch"] / base["images_per_s"] - r["batch"] / r["images_per_s"]    # s per step
            pays = f"{r['first_step_s'] / saved:,.0f} steps"
        table.append(head + [
            f"{r['images_per_s']:,.0f} ({r['images_per_s_min']:,.0f}–{r['images_per_s_max']:,.0f})",
            f"{speed:.2f}×" if speed else "", f"{r['flops_per_image'] / 1e9:.3g}",
            f"{r['achieved_flops'] / 1e12:.3g}", _pct(r["achieved_flops"] / ref),
            f"{r['first_step_s']:.1f}" if r["variant"]["compile"] else "",
            f"{r.get('peak_mem_gib', 0):.1f}" if "peak_mem_gib" in r else "", pays])
    header = ["preset", "batch", "change vs default", "img/s (median; min–max)", "× default", "GFLOP/img",
              "TFLOP/s", f"% of {ref_kind} matmul peak", "compile s", "peak GiB", "compile pays after"]
    parts = [f"{environment_line(data['env'])}\n",
             "Measured peaks: " + "; ".join(f"{k} matmul {v / 1e12:,.1f} TFLOP/s" for k, v in peaks.items())
             + f". Stages complete: {data['complete']}; {data['elapsed']:.0f} s in all.\n",
             markdown_table(header, table, align="lrlrrrrrrrr"), best_text(rows, ref, ref_kind), profile_text(rows)]
    return "\n".join(parts)


def best_text(rows: List[Dict[str, Any]], ref: float, ref_kind: str) -> str:
    lines = ["Best per preset against the issue's goal (celeba ≥ 30 %, report ≥ 40 % of the "
             f"{ref_kind} matmul peak):\n"]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        ok = [r for r in rows if r["preset"] == preset and r["status"] == "ok"]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["images_per_s"])
        frac = best["achieved_flops"] / ref
        goal = next(g for k, g in GOALS.items() if preset.startswith(k))
        lines.append(f"- {preset}: {best['change']} (batch {best['batch']}), {best['images_per_s']:,.0f} img/s = "
                     f"{100 * frac:.1f} % — goal {100 * goal:.0f} % {'met' if frac >= goal else 'not met'}")
    return "\n".join(lines) + "\n"


def _short(op: str) -> str:
    """Inductor's '## Call CompiledFxGraph <hash> ##' as 'compiled graph' (the hash says nothing to a reader)."""
    return re.sub(r"## Call CompiledFxGraph \w+ ##", "compiled graph", op)


def profile_text(rows: List[Dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        p = r.get("profile")
        if not p:
            continue
        busy = f"; kernels busy {100 * p['busy']:.0f} % of the {p['step_ms']:.1f} ms step" if "busy" in p else ""
        lines.append(f"Profile, {r['preset']} batch {r['batch']}, {r['change']}: {p['clock']} "
                     f"{p['total_ms']:.1f} ms per step{busy}.\n")
        lines.append("- top: " + "; ".join(f"`{_short(t['op'])}` {100 * t['share']:.0f} %" for t in p["top"]))
        lines.append("- by kind: " + "; ".join(f"{k} {100 * v:.0f} %" for k, v in p["kinds"].items() if v >= 0.005))
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stage", choices=["eager", "compile"], default="eager")
    p.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    p.add_argument("--compile-modes", nargs="+", choices=COMPILE_MODES, default=list(COMPILE_MODES))
    p.add_argument("--max-batch-factor", type=int, default=8, help="batch sweep ×2, ×4, ... up to this (default 8)")
    p.add_argument("--profile", nargs="*", default=["celeba64", "report64"],
                   help="presets whose default step (eager stage) or default-mode compiled step is profiled")
    p.add_argument("--warmup", type=int, default=3, help="steps after the first, untimed (default 3)")
    p.add_argument("--round-s", type=float, default=1.0, help="seconds per timed round (default 1)")
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    p.add_argument("--time-limit", type=float, help="start no new row after this many seconds")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny stand-ins of the presets (16 px, batch 8), one round: checks the script only")
    p.add_argument("--json", help="write the rows here (rewritten after every row)")
    p.add_argument("--report", nargs="+", metavar="JSON", help="print the markdown tables of these runs and exit")
    p.add_argument("--out", help="with --report: also write the markdown here")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.warmup, args.repeats, args.min_steps, args.max_steps = "cpu", 0, 1, 1, 1
        args.max_batch_factor = min(args.max_batch_factor, 2)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available here (use --dry-run on a CPU)")
    return args


def measure_peaks(device: torch.device, dry_run: bool) -> Dict[str, float]:
    if device.type != "cuda":
        return {"fp32": matmul_flops(device, "fp32", n=512 if dry_run else None)}
    return {k: matmul_flops(device, k) for k in ("bf16", "fp16")}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.report:
        text = report(merge(load_runs(args.report)))
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return 0
    device = torch.device(args.device)
    t_start = time.perf_counter()
    env = environment(device)
    print(environment_line(env), flush=True)
    peaks = measure_peaks(device, args.dry_run)
    print("peaks: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in peaks.items()), flush=True)
    plan = (eager_plan(args.presets, args.max_batch_factor) if args.stage == "eager"
            else compile_plan(args.presets, args.compile_modes))
    if args.dry_run and args.stage == "compile":
        plan = plan[:1]                                 # one compile on a CPU takes minutes already
    rows: List[Dict[str, Any]] = []
    flops: Dict[str, float] = {}
    out = {"stage": args.stage, "env": env, "peaks": peaks, "dry_run": args.dry_run, "results": rows}

    def save(complete: bool) -> None:
        out.update(complete=complete, elapsed_s=time.perf_counter() - t_start)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))

    for v in plan:
        if args.time_limit and time.perf_counter() - t_start > args.time_limit:
            rows.append({"preset": v.preset, "change": v.change, "variant": dataclasses.asdict(v),
                         "batch": "", "status": "skipped (time limit)"})
            continue
        cfg = preset_config(v.preset, args.dry_run)
        profile = v.preset in args.profile and v.change in ("default", "compile default")
        t0 = time.perf_counter()
        row = run_variant(v, cfg, device, args, flops, profile)
        row["row_s"] = time.perf_counter() - t0
        rows.append(row)
        rate = f"{row['images_per_s']:,.0f} img/s" if row["status"] == "ok" else row["status"]
        print(f"[bench_step] {v.preset:9s} {v.change:32s} batch {row['batch']:>4}: {rate} ({row['row_s']:.0f} s)",
              flush=True)
        save(False)
    save(True)
    print(report(merge([out])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
