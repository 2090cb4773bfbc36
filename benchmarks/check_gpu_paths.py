"""Every GPU path of the package, run for real and judged PASS/FAIL (issue 13, item 3).

    python benchmarks/check_gpu_paths.py --data gpu/celeba_5k_half --out gpu_out          # on a GPU
    python benchmarks/check_gpu_paths.py --dry-run --data /work/shared/data/celeba_5k_half --out /tmp/paths

Each training check is a short run of the real command line, ``python -m ddpm_helpers train --preset celeba64
--data ...`` (with --dry-run: the same command on the CPU with a tiny U-Net at 16 px):

1. bf16, train → SIGTERM → resume: the run is stopped by SIGTERM mid-way; it must checkpoint at its step S
   and say so; ``--resume`` must continue from S (not bit-exact on a GPU, but the same step count) to S + k
   with finite losses.
2. fp16 + GradScaler (a T4's path), then a resume: finite losses, the scaler's state in the checkpoint.
3. bf16 with ``--compile``: finite losses; its wall time against the same run without compile.
4. Sampling through ``ddpm_helpers.fast_sampling`` from the checkpoint of check 1: DDIM-20 with a CUDA graph
   must equal the eager model's samples (fp32 and bf16); compiled + graphed ones (bf16) must agree within a
   tolerance. And the command line's ``sample --fast cudagraph`` must write the same grid as ``--fast off``.

Writes OUT/paths.md (the PASS/FAIL table), OUT/paths.json and OUT/paths_logs.txt (the tail of each run).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


class Runner:
    """Runs `python -m ddpm_helpers train ...` with the shared flags and keeps the logs."""

    def __init__(self, args):
        self.args, self.logs = args, []
        self.base = [sys.executable, "-m", "ddpm_helpers", "train", "--preset", "celeba64", "--data", args.data,
                     "--cache-dir", str(Path(args.work) / "cache"), "--no-progress", "--sample-every", "0",
                     "--checkpoint-every", "0", "--log-every", str(args.log_every), "--device", args.device]
        if args.dry_run:
            self.base += ["--unet", "tiny", "--image-size", "16", "--batch-size", "8", "--max-images", "64"]

    def command(self, name: str, *extra: str) -> List[str]:
        return self.base + ["--out", str(Path(self.args.work) / name), *extra]

    def run(self, name: str, *extra: str, timeout: float) -> Dict[str, Any]:
        return self.finish(name, subprocess.Popen(self.command(name, *extra), **_popen_kwargs()), timeout)

    def finish(self, name: str, proc: subprocess.Popen, timeout: float, t0: Optional[float] = None) -> Dict[str, Any]:
        t0 = t0 or time.perf_counter()
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += f"\n[check] killed after {timeout:.0f} s"
        self.logs.append(f"===== {name}: {' '.join(proc.args)}\n" + "\n".join(out.splitlines()[-25:]))
        return {"rc": proc.returncode, "out": out, "wall_s": time.perf_counter() - t0,
                "folder": Path(self.args.work) / name}


def _popen_kwargs() -> Dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))


def metrics(folder: Path) -> List[Dict[str, str]]:
    path = folder / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def stopped_at(out: str) -> Optional[int]:
    """The step of the CLI's closing line '[train] <reason> at step N. Outputs in ...'."""
    for line in reversed(out.splitlines()):
        if line.startswith("[train] ") and " at step " in line and "Outputs in" in line:
            return int(line.split(" at step ")[1].split(".")[0])
    return None


def finite_losses(rows: List[Dict[str, str]]) -> bool:
    return bool(rows) and all(math.isfinite(float(r["loss"])) for r in rows)


def result(name: str, ok: bool, detail: str, **extra) -> Dict[str, Any]:
    print(f"[check] {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return {"check": name, "ok": bool(ok), "detail": detail, **extra}


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
def check_sigterm_resume(r: Runner, args) -> List[Dict[str, Any]]:
    name, extra = "bf16", ["--amp", "bf16"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(r.command(name, *extra, "--max-steps", "1000000"), **_popen_kwargs())
    folder = Path(args.work) / name
    while proc.poll() is None and time.perf_counter() - t0 < args.timeout:
        if len(metrics(folder)) >= 3:                       # a few logged windows: well inside the loop
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    first = r.finish(name, proc, args.timeout, t0)
    s = stopped_at(first["out"])
    ckpt = folder / f"ckpt_{s:08d}.pt" if s else None
    ok1 = first["rc"] == 0 and "SIGTERM" in first["out"] and ckpt is not None and ckpt.exists()
    out = [result("bf16 train → SIGTERM", ok1, f"rc {first['rc']}, stopped at step {s}, checkpoint "
                  f"{ckpt.name if ckpt and ckpt.exists() else 'missing'}", wall_s=first["wall_s"], step=s)]
    if not ok1:
        return out
    target = s + args.more_steps
    second = r.run(name, *extra, "--resume", "--max-steps", str(target), timeout=args.timeout)
    rows = [row for row in metrics(folder) if int(row["step"]) > s]
    ok2 = (second["rc"] == 0 and f"at step {s} " in second["out"] and stopped_at(second["out"]) == target
           and finite_losses(rows))
    out.append(result("bf16 resume after SIGTERM", ok2, f"rc {second['rc']}, resumed at step {s}: "
                      f"{'yes' if f'at step {s} ' in second['out'] else 'no'}, ended at {stopped_at(second['out'])} "
                      f"(want {target}), {len(rows)} new log rows, losses finite: {finite_losses(rows)}",
                      wall_s=second["wall_s"], last_loss=rows[-1]["loss"] if rows else None))
    return out


def check_fp16(r: Runner, args) -> List[Dict[str, Any]]:
    name, extra = "fp16", ["--amp", "fp16"]
    first = r.run(name, *extra, "--max-steps", str(args.steps), timeout=args.timeout)
    folder = Path(args.work) / name
    ckpt = folder / f"ckpt_{args.steps:08d}.pt"
    scaler = None
    if ckpt.exists():
        scaler = torch.load(ckpt, map_location="cpu", weights_only=False).get("scaler")
    on_gpu = args.device.startswith("cuda")
    scale = scaler.get("scale") if isinstance(scaler, dict) else None
    scaler_text = (f"scale {float(scale):g}" if scale is not None
                   else "none (amp is off on a CPU)" if not on_gpu else "MISSING")
    ok1 = (first["rc"] == 0 and stopped_at(first["out"]) == args.steps and finite_losses(metrics(folder))
           and (scaler is not None or not on_gpu))
    out = [result("fp16 + GradScaler", ok1, f"rc {first['rc']}, ended at {stopped_at(first['out'])}, losses finite: "
                  f"{finite_losses(metrics(folder))}, scaler state: "
                  f"{scaler_text}",
                  wall_s=first["wall_s"])]
    target = args.steps + args.more_steps
    second = r.run(name, *extra, "--resume", "--max-steps", str(target), timeout=args.timeout)
    ok2 = second["rc"] == 0 and stopped_at(second["out"]) == target and finite_losses(metrics(folder))
    out.append(result("fp16 resume", ok2, f"rc {second['rc']}, ended at {stopped_at(second['out'])} (want {target})",
                      wall_s=second["wall_s"]))
    return out


def check_compile(r: Runner, args) -> List[Dict[str, Any]]:
    runs = {}
    for name, extra in (("bf16_eager", []), ("bf16_compile", ["--compile"])):
        runs[name] = r.run(name, "--amp", "bf16", "--max-steps", str(args.steps), *extra,
                           timeout=args.compile_timeout if extra else args.timeout)
    out = []
    for name, run in runs.items():
        rows = metrics(run["folder"])
        ok = run["rc"] == 0 and stopped_at(run["out"]) == args.steps and finite_losses(rows)
        rate = rows[-1].get("images_per_s") if rows else None
        out.append(result(f"bf16, compile {'on' if 'compile' in name else 'off'}", ok,
                          f"rc {run['rc']}, {args.steps} steps in {run['wall_s']:.0f} s wall (start-up included), "
                          f"last window {rate} img/s, losses finite: {finite_losses(rows)}", wall_s=run["wall_s"]))
    return out


def check_fast_sampling(args, checkpoint_folder: Path) -> List[Dict[str, Any]]:
    """DDIM-20 from the trained checkpoint: eager against CUDA graph / compile / both (fp32 and bf16 autocast)."""
    from ddpm_helpers.checkpoint import latest_checkpoint, load_model
    from ddpm_helpers.diffusion import ddim_sample
    from ddpm_helpers.fast_sampling import compile_for_sampling
    device = torch.device(args.device)
    model, schedule, cfg = load_model(latest_checkpoint(checkpoint_folder), ema=True, device=device)
    c, s = cfg.model.in_channels, cfg.data.image_size
    noise = torch.randn(args.sample_batch, c, s, s, generator=torch.Generator().manual_seed(0)).to(device)

    def sample(m, amp):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
        t0 = time.perf_counter()
        with ctx:
            x = ddim_sample(m, noise.shape, schedule, steps=20, noise=noise, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return x.float(), time.perf_counter() - t0
    out = []
    # fp32: the CUDA graph must reproduce the eager samples exactly; bf16 (what one samples with): the graph and
    # the compiled graph. One compilation only (minutes on a CPU, ~half a minute on the GPU machine's host).
    for amp, modes in ((False, ("cudagraph",)), (True, ("cudagraph", "compile+cudagraph"))):
        ref, t_ref = sample(model, amp)
        for mode in modes:
            try:
                fast = compile_for_sampling(model, mode=mode)
                first, t_first = sample(fast, amp)            # includes capture / compile
                again, t_again = sample(fast, amp)
                diff = (again - ref).abs().max().item()
                rel = ((again - ref).norm() / ref.norm()).item()
                exact = fast.mode_used in ("cudagraph", "off")          # same kernels: the same samples
                ok = (diff <= 1e-5 if exact else rel <= 2e-2) and torch.equal(first, again)
                want = "≤ 1e-5 max" if exact else "≤ 2e-2 relative"
                out.append(result(
                    f"sampling {mode} ({'bf16' if amp else 'fp32'})", ok,
                    f"ran as {fast.mode_used}; max |x − eager| = {diff:.2e}, ‖x − eager‖/‖eager‖ = {rel:.2e} "
                    f"(want {want}); DDIM-20 batch {args.sample_batch}: eager {t_ref:.2f} s, first call "
                    f"{t_first:.2f} s, then {t_again:.2f} s", diff=diff, eager_s=t_ref, first_s=t_first,
                    again_s=t_again))
            except Exception as e:
                out.append(result(f"sampling {mode} ({'bf16' if amp else 'fp32'})", False, f"{type(e).__name__}: {e}"))
    return out


def check_sample_cli(r: Runner, args) -> List[Dict[str, Any]]:
    """`python -m ddpm_helpers sample --fast cudagraph` writes the PNG grid of `--fast off` (fp32: same kernels)."""
    grids, runs = {}, {}
    for fast in ("off", "cudagraph"):
        png = Path(args.work) / f"sample_{fast}.png"
        cmd = [sys.executable, "-m", "ddpm_helpers", "sample", "--checkpoint", str(Path(args.work) / "bf16"),
               "--n", "16", "--steps", "20", "--device", args.device, "--quiet", "--fast", fast, "--out", str(png)]
        runs[fast] = r.finish(f"sample --fast {fast}", subprocess.Popen(cmd, **_popen_kwargs()), args.timeout)
        grids[fast] = png.read_bytes() if png.exists() else None
    ok = (all(run["rc"] == 0 for run in runs.values()) and grids["off"] is not None
          and grids["off"] == grids["cudagraph"])
    return [result("sample --fast cudagraph (CLI)", ok, f"rc {runs['off']['rc']}/{runs['cudagraph']['rc']}, grids "
                   f"{'identical' if ok else 'DIFFER or missing'}; wall {runs['off']['wall_s']:.1f} s / "
                   f"{runs['cudagraph']['wall_s']:.1f} s (start-up included)")]


def markdown(results: List[Dict[str, Any]]) -> str:
    lines = ["| check | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {r['check']} | {'PASS' if r['ok'] else '**FAIL**'} | {r['detail']} |" for r in results]
    passed = sum(r["ok"] for r in results)
    return "\n".join(lines) + f"\n\n{passed} of {len(results)} checks passed.\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CelebA folder (the half-size copy is enough)")
    p.add_argument("--out", required=True, help="where paths.md, paths.json and paths_logs.txt go")
    p.add_argument("--work", default="/tmp/ddpm_paths", help="run folders and the data cache (emptied first)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checks", nargs="+", default=["sigterm", "fp16", "compile", "sampling", "sample_cli"],
                   choices=["sigterm", "fp16", "compile", "sampling", "sample_cli"])
    p.add_argument("--steps", type=int, default=60, help="steps of the fp16 and compile runs (default 60)")
    p.add_argument("--more-steps", type=int, default=30, help="steps after a resume (default 30)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--timeout", type=float, default=120, help="seconds per run (default 120)")
    p.add_argument("--compile-timeout", type=float, default=240, help="seconds for the --compile run (default 240)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny U-Net at 16 px: checks the script only")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.steps, args.more_steps, args.log_every, args.sample_batch = "cpu", 6, 4, 2, 4
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import shutil
    shutil.rmtree(Path(args.work), ignore_errors=True)
    Path(args.work).mkdir(parents=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = Runner(args)
    results: List[Dict[str, Any]] = []
    checks = {"sigterm": lambda: check_sigterm_resume(r, args), "fp16": lambda: check_fp16(r, args),
              "compile": lambda: check_compile(r, args),
              "sampling": lambda: check_fast_sampling(args, Path(args.work) / "bf16"),
              "sample_cli": lambda: check_sample_cli(r, args)}
    for name in args.checks:
        if name in ("sampling", "sample_cli") and not (Path(args.work) / "bf16").exists():
            results.append(result("sampling", False, "no checkpoint: the sigterm check did not run or failed"))
            continue
        try:
            results.extend(checks[name]())
        except Exception as e:             # a broken check is a FAIL, and the others still run
            results.append(result(name, False, f"{type(e).__name__}: {e}"))
        (out_dir / "paths.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / "paths_logs.txt").write_text("\n\n".join(r.logs) + "\n")
    text = markdown(results)
    (out_dir / "paths.md").write_text(text)
    print(text)
    return 0 if all(x["ok"] for x in results) else 1


if __name__ == "__main__":
    sys.exit(main())
