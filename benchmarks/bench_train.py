"""Training throughput: our U-Net against diffusers.UNet2DModel of the same size, and against the device's limit.

    python benchmarks/bench_train.py                                   # CPU: small + recommended, 32/64 px, batch 8
    python benchmarks/bench_train.py --what-if          # + our U-Net with GroupNorm in the AMP dtype (GPU)
    python benchmarks/bench_train.py --device cuda --json gpu/bench_train.json
    python benchmarks/bench_train.py --device cuda --sizes 32 64 128 --batch 128,128,32 \
        --modes amp+channels_last amp fp32 amp+channels_last+compile --what-if --write

Not a test: nothing here runs in the test suite, and no timing is asserted anywhere.

What is timed: images per second of a full training step, the step of ``Trainer.train_step`` itself
(this script calls it, on a Trainer set up without data or a run folder): t and ε drawn, q_sample,
the forward pass under autocast for "amp" (bf16 where supported, else fp16 with a GradScaler), the MSE
loss, backward, clip_grad_norm_, its one finiteness check (a host sync), Adam, the LR schedule and the
EMA update. The diffusers model goes through the very same step, EMA included, wrapped so that
``model(x, t)`` returns ``.sample``. The uint8 batch already sits on the device (data loading is
bench_data.py's job). CUDA is synchronised only before and after each timed round.

Fairness: for each of our presets a diffusers.UNet2DModel config is searched (same number of levels and
channel multipliers, GroupNorm, the same activation and dropout, attention only in the mid block when
ours has bottleneck attention, layers_per_block 2 when it can match, else 1) whose parameter count is
within 10 % of ours; both counts are printed. Our run and the diffusers run alternate in one process
(AB, BA, AB, ...), so that a burst of load on a shared machine hits both; the table gives the median.

Against the hardware: the FLOPs of one step (forward + backward) are counted once with
torch.utils.flop_counter.FlopCounterMode (convolutions, matmuls, attention; elementwise ops count 0),
outside the timed region; achieved FLOP/s = FLOPs per step × steps per second, as a fraction of the
device's peak, measured here as the better of a large matrix product (4096² on the CPU, 8192² on CUDA)
and a large 3×3 convolution, in the precision of the row: fp32 on the CPU, bf16 (or fp16) for "amp"
rows on CUDA, TF32 for "fp32" rows on CUDA (cuDNN runs fp32 convolutions in TF32 by default). One
step of each model is profiled with torch.profiler: the top ops by self time and the share of each
kind of op, and from that share the rate at which the convolutions and matmuls alone run.

--what-if adds "ours+fixes": the same U-Net and weights with the changes this benchmark suggests
(see WHAT_IF and benchmarks/README.md), so that their effect is measured rather than guessed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))    # run from a clone without installing
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    command_line,
    environment,
    environment_line,
    markdown_table,
    median,
    synchronize,
    timed,
    write_results,
)

from ddpm_helpers.config import UNET_PRESETS, TrainConfig, UNetConfig, unet_preset  # noqa: E402
from ddpm_helpers.train import Trainer, build_trainer  # noqa: E402
from ddpm_helpers.unet import UNet, count_parameters  # noqa: E402

MODE_TOKENS = ("fp32", "amp", "channels_last", "compile", "cudnn_benchmark")
CPU_DEFAULTS = dict(presets=["small", "recommended"], sizes=[32, 64], batch="8", modes=["fp32"],
                    steps=3, warmup=2, repeats=3, compile_at=None, threads=1)
CUDA_DEFAULTS = dict(presets=["report", "recommended"], sizes=[32, 64, 128], batch="64",
                     modes=["fp32", "amp", "amp+channels_last", "amp+channels_last+compile"],
                     steps=10, warmup=3, repeats=3, compile_at=["recommended@64"])


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """A precision and layout setting: 'fp32' or 'amp', optionally '+channels_last', '+compile' and
    '+cudnn_benchmark' (torch.backends.cudnn.benchmark on for this mode only; the Trainer leaves it off)."""
    name: str
    amp: bool
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool = False


def parse_mode(text: str) -> Mode:
    tokens = [t for t in text.split("+") if t]
    bad = [t for t in tokens if t not in MODE_TOKENS]
    if bad or not tokens or ("fp32" in tokens and "amp" in tokens):
        raise ValueError(f"mode {text!r}: join 'fp32' or 'amp' with optional 'channels_last', 'compile' and "
                         f"'cudnn_benchmark' by '+'")
    return Mode(text, "amp" in tokens, "channels_last" in tokens, "compile" in tokens, "cudnn_benchmark" in tokens)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


# ---------------------------------------------------------------------------------------------
# The diffusers model of matched size
# ---------------------------------------------------------------------------------------------
def load_diffusers():
    """(UNet2DModel class, version) or (None, reason) when diffusers is not importable here."""
    try:
        import diffusers
        from diffusers import UNet2DModel
        return UNet2DModel, diffusers.__version__
    except Exception as e:  # missing, or a dependency missing: the rows are skipped, the run goes on
        return None, f"{type(e).__name__}: {e}"


class DiffusersEps(nn.Module):
    """diffusers.UNet2DModel as an ε-predictor with our call signature: model(x, t) → (B, C, H, W)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def diffusers_config(cfg: UNetConfig, base: int, layers: int, image_size: int) -> Dict[str, Any]:
    """A UNet2DModel config shaped like ours: one block per level, our channel multipliers × base."""
    mults = cfg.channel_mults or tuple(2 ** i for i in range(cfg.depth + 1))
    chs = tuple(base * m for m in mults)
    common = math.gcd(*chs)
    groups = max(g for g in range(1, 33) if common % g == 0)      # diffusers' 32 where the channels allow
    n = len(chs)
    return dict(sample_size=image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                block_out_channels=chs, layers_per_block=layers,
                down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                add_attention=cfg.attention, attention_head_dim=chs[-1] // cfg.attn_heads,
                norm_num_groups=groups, act_fn=cfg.act, dropout=cfg.dropout)


def match_diffusers(UNet2DModel, cfg: UNetConfig, target: int, image_size: int,
                    tolerance: float = 0.10) -> Tuple[Dict[str, Any], int]:
    """The config (see diffusers_config) whose parameter count is closest to target: layers_per_block 2
    (diffusers' default) if some even base channel count comes within tolerance, else 1."""
    best: Optional[Tuple[float, Dict[str, Any], int]] = None
    for layers in (2, 1):
        for base in range(4, 513, 2):
            conf = diffusers_config(cfg, base, layers, image_size)
            with torch.device("meta"):
                n = count_parameters(UNet2DModel(**conf))
            err = abs(n - target) / target
            if best is None or err < best[0]:
                best = (err, conf, n)
            if n > target * (1 + tolerance):
                break
        if best[0] <= tolerance:
            break
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# The training step: Trainer.train_step on a bare Trainer
# ---------------------------------------------------------------------------------------------
def bench_trainer(model: nn.Module, device: torch.device, mode: Mode, cfg: TrainConfig):
    """A Trainer from the package's factory, without data or run folder: the timed step is our training step."""
    run_cfg = dataclasses.replace(cfg, amp="auto" if mode.amp else "off", channels_last=mode.channels_last,
                                  compile=mode.compile)
    return build_trainer(run_cfg, device=str(device), model=model, with_data=False, progress=False, verbose=False)


def random_batch(batch: int, channels: int, size: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=g).to(device)


def step_fn(bt: Trainer, batch: torch.Tensor):
    def step():
        _, _, ok = bt.train_step(batch)
        if not ok:
            raise RuntimeError("non-finite loss or gradient in the benchmark step")
    return step


# ---------------------------------------------------------------------------------------------
# FLOPs, the matmul peak and the profile
# ---------------------------------------------------------------------------------------------
def _cpu_attention_flop_formulas() -> Dict[Any, Any]:
    """FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel; count it the same way."""
    from torch.utils import flop_counter as fc
    mapping = {}
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        mapping[fwd] = lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v)
    if bwd is not None:
        mapping[bwd] = lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v)
    return mapping


def count_step_flops(bt: Trainer, batch: torch.Tensor) -> int:
    """Matmul-like FLOPs of one training step (forward + backward), counted on the eager model."""
    from torch.utils.flop_counter import FlopCounterMode
    net, bt.net = bt.net, bt.model
    try:
        with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flop_formulas()) as counter:
            bt.train_step(batch)
        return int(counter.get_total_flops())
    finally:
        bt.net = net


@contextlib.contextmanager
def _tf32_matmul(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def peak_kind(mode: Mode, device: torch.device) -> str:
    """Which matrix product the step's convolutions compare with: fp32 (CPU), tf32 or bf16/fp16 (CUDA)."""
    if device.type != "cuda":
        return "fp32"
    if mode.amp:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def matmul_flops(device: torch.device, kind: str, n: Optional[int] = None, rounds: int = 3) -> float:
    """Best FLOP/s of an n×n @ n×n matrix product (n = 4096 on CPU, 8192 on CUDA) over a few timings."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 4096)
    a = torch.randn(n, n, device=device).to(PEAK_DTYPES[kind])
    b = torch.randn(n, n, device=device).to(PEAK_DTYPES[kind])
    reps = 10 if cuda else 1
    with _tf32_matmul(kind == "tf32") if cuda else contextlib.nullcontext():
        a @ b                                                     # warm-up (and cuBLAS heuristics)
        best = min(timed(lambda: a @ b, reps, device) for _ in range(rounds))
    return 2 * n ** 3 * reps / best


def conv_flops(device: torch.device, kind: str, rounds: int = 3) -> float:
    """Best FLOP/s of a large 3×3 convolution (256 → 256 channels, 32×32, batch 16 on CPU, 128 on CUDA).

    A second reference for the limit: on some CPUs the convolution library (oneDNN, AVX-512) runs at
    twice the rate of the BLAS matrix product (MKL takes its AVX2 path on AMD CPUs).
    """
    import torch.nn.functional as F
    cuda = device.type == "cuda"
    dtype = PEAK_DTYPES[kind]
    b = 128 if cuda else 16
    x = torch.randn(b, 256, 32, 32, device=device).to(dtype)
    w = torch.randn(256, 256, 3, 3, device=device).to(dtype)
    if cuda:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    reps = 10 if cuda else 1
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = kind == "tf32" or (not cuda and old)
    try:
        F.conv2d(x, w, padding=1)
        best = min(timed(lambda: F.conv2d(x, w, padding=1), reps, device) for _ in range(rounds))
    finally:
        torch.backends.cudnn.allow_tf32 = old
    return 2 * b * 256 * 256 * 9 * 32 * 32 * reps / best


def measure_peak(device: torch.device, kind: str) -> Dict[str, float]:
    """The device's limit for one precision: the larger of the matmul and the 3×3 convolution rates."""
    mm, conv = matmul_flops(device, kind), conv_flops(device, kind)
    return {"matmul": mm, "conv3x3": conv, "peak": max(mm, conv)}


PEAK_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


OP_KINDS = [  # first match wins; names are aten ops and profiler annotations
    ("optimizer/EMA/clip", ("foreach", "adam", "optimizer", "lerp", "clip_grad", "vector_norm")),
    ("convolution", ("conv", "cudnn", "mkldnn", "im2col", "col2im")),
    ("matmul/attention", ("mm", "linear", "attention", "matmul", "baddbmm")),
    ("normalization", ("group_norm", "batch_norm", "layer_norm", "native_norm")),
    ("pool/upsample/cat", ("pool", "upsample", "cat", "interpolate")),
    ("copy/layout", ("copy", "contiguous", "clone", "to_copy", "empty_strided", "as_strided", "permute",
                     "transpose", "reshape", "view")),
    ("autograd/python overhead", ("autograd::", "profiler", "backward", "accumulategrad")),
]


def op_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in OP_KINDS:
        if any(k in low for k in keys):
            return kind
    return "elementwise/other"


def _self_time(event, cuda: bool) -> float:
    """An op's own time in µs: CPU time on the CPU; on CUDA the time of the kernels it launched itself."""
    if not cuda:
        return float(event.self_cpu_time_total)
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else event.self_cuda_time_total)


AUTOGRAD_NODE = "autograd::engine::evaluate_function: "


def _context(event) -> Tuple[str, bool]:
    """(where the op was called from, whether inside the optimizer): the autograd node for backward ops
    (e.g. AddBackward0), 'Adam.step' inside the optimizer, else the outermost aten op that called it
    (e.g. aten::group_norm for the copies it makes); '' when called directly."""
    outer, parent = "", getattr(event, "cpu_parent", None)
    while parent is not None:
        name = parent.name
        if name.startswith("Optimizer."):
            return name.split("#")[-1], True
        if name.startswith(AUTOGRAD_NODE):
            return name[len(AUTOGRAD_NODE):], False
        if name.startswith("aten::"):
            outer = name
        parent = getattr(parent, "cpu_parent", None)
    return outer, False


def profile_step(bt: Trainer, batch: torch.Tensor, device: torch.device, top: int = 5) -> Dict[str, Any]:
    """Self time per op over one step (CPU time on the CPU, kernel time on CUDA): the top ops and kinds.

    Ops inside Optimizer.step (Adam's sqrt, div, addcdiv, ...) count as optimizer work, not elementwise.
    Top ops are named with where they were called from: 'aten::sum in AddBackward0' (the gradient of a
    broadcast add), 'aten::copy_ in aten::group_norm' (a layout or dtype copy made by the norm).
    """
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step = step_fn(bt, batch)
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    by_name: Dict[str, float] = {}
    kinds: Dict[str, float] = {}
    for e in prof.events():
        if cuda and not str(getattr(e, "device_type", "CPU")).endswith("CPU"):
            continue                                    # kernels: their time is already on the op that launched them
        t = _self_time(e, cuda)
        if t <= 0:
            continue
        where, in_optimizer = _context(e)
        key = f"{e.name} in {where}" if where and where != e.name else e.name
        by_name[key] = by_name.get(key, 0.0) + t
        kind = "optimizer/EMA/clip" if in_optimizer else op_kind(e.name)
        kinds[kind] = kinds.get(kind, 0.0) + t
    total = sum(by_name.values()) or 1.0
    times = sorted(by_name.items(), key=lambda kv: kv[1], reverse=True)
    return {"clock": "kernel (device) time" if cuda else "CPU self time", "total_ms": total / 1e3,
            "top": [{"op": n, "ms": t / 1e3, "share": t / total} for n, t in times[:top]],
            "kinds": {k: v / total for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}}


# ---------------------------------------------------------------------------------------------
# One configuration: our model and the diffusers model, alternating
# ---------------------------------------------------------------------------------------------
def build_models(preset: str, size: int, UNet2DModel, dconf: Optional[Dict[str, Any]],
                 what_if: bool = False) -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    models = {"ours": UNet(unet_preset(preset, image_size=size))}
    if what_if and what_if_applies(preset):
        torch.manual_seed(0)
        models["ours+fixes"] = apply_fixes(UNet(unet_preset(preset, image_size=size)))
    if UNet2DModel is not None and dconf is not None:
        torch.manual_seed(0)
        models["diffusers"] = DiffusersEps(UNet2DModel(**dict(dconf, sample_size=size)))
    return models


# ---------------------------------------------------------------------------------------------
# --what-if: our model with the changes this benchmark suggests, same weights and parameters
# ---------------------------------------------------------------------------------------------
WHAT_IF = "GroupNorm in the autocast dtype instead of autocast's fp32 round trip (matters under AMP on a GPU)"


class AutocastDtypeGroupNorm(nn.GroupNorm):
    """GroupNorm that under autocast runs in its input's dtype (bf16/fp16): autocast puts group_norm on its
    fp32 list, which adds a cast before and after every norm. The kernel still accumulates in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and _autocast_on(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                w = self.weight.to(x.dtype) if self.weight is not None else None
                b = self.bias.to(x.dtype) if self.bias is not None else None
                return torch.nn.functional.group_norm(x, self.num_groups, w, b, self.eps)
        return super().forward(x)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:                     # torch < 2.4
        return torch.is_autocast_enabled()


def what_if_applies(preset: str) -> bool:
    return UNET_PRESETS[preset].norm == "group"


def apply_fixes(model: UNet) -> UNet:
    """Our U-Net with the suggested changes applied in place (parameters and outputs unchanged in fp32)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.GroupNorm:
                new = AutocastDtypeGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
    return model


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"


def run_config(preset: str, size: int, batch_size: int, mode: Mode, args, device: torch.device, UNet2DModel,
               dconf, train_cfg: TrainConfig, flops_cache: Dict, do_profile: bool) -> List[Dict[str, Any]]:
    """Time our model and the diffusers model in one mode, alternating; one result dict per model."""
    models = build_models(preset, size, UNet2DModel, dconf, what_if=args.what_if and not mode.compile)
    rows, runners = {}, {}
    for name, model in models.items():
        row = {"model": name, "preset": preset, "params": count_parameters(model), "size": size,
               "batch": batch_size, "mode": mode.name, "status": "ok", "times_s": []}
        rows[name] = row
        try:
            bt = bench_trainer(model, device, mode, train_cfg)
            batch = random_batch(batch_size, model_channels(model), size, device)
            step = step_fn(bt, batch)
            t0 = time.perf_counter()
            for _ in range(args.warmup):        # first calls: allocator, cuDNN autotuning, torch.compile
                step()
            synchronize(device)
            row["warmup_s"] = time.perf_counter() - t0
            runners[name] = (bt, batch, step)
        except Exception as e:  # a compile or memory failure marks the row and the run goes on
            row["status"] = "failed: " + _error_text(e)
            print(f"  [{name} {preset} {size}px {mode.name}] {row['status']}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    order = list(runners)
    for r in range(args.repeats):
        for name in (order if r % 2 == 0 else order[::-1]):        # AB, BA, AB, ...
            bt, batch, step = runners[name]
            if rows[name]["status"] != "ok":
                continue
            try:
                rows[name]["times_s"].append(timed(step, args.steps, device))
            except Exception as e:
                rows[name]["status"] = "failed: " + _error_text(e)
    for name, (bt, batch, _step) in runners.items():
        row = rows[name]
        if row["status"] != "ok":
            continue
        rates = [args.steps * batch_size / t for t in row["times_s"]]
        row.update(images_per_s=median(rates), images_per_s_min=min(rates), images_per_s_max=max(rates))
        key = ("ours" if name == "ours+fixes" else name, preset, size, batch_size)   # the fixes keep the FLOPs
        try:
            if key not in flops_cache:
                flops_cache[key] = count_step_flops(bt, batch)
            row["flops_per_step"] = flops_cache[key]
            row["achieved_flops"] = row["flops_per_step"] * row["images_per_s"] / batch_size
        except Exception as e:
            row["flops_error"] = _error_text(e)
            print(f"  [{name}] FLOP count failed: {row['flops_error']}", flush=True)
        if do_profile:
            try:
                row["profile"] = profile_step(bt, batch, device)
            except Exception as e:
                row["profile_error"] = _error_text(e)
                print(f"  [{name}] profile failed: {row['profile_error']}", flush=True)
    runners.clear()
    del models
    bt = batch = step = None             # drop the last references before freeing the cache
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [rows[n] for n in rows]


def model_channels(model: nn.Module) -> int:
    return model.cfg.in_channels if isinstance(model, UNet) else model.unet.config.in_channels


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
HEADER = ["model", "params", "size", "batch", "mode", "img/s (median; min–max)", "ours / diffusers",
          "GFLOP/img", "achieved TFLOP/s", "% of peak"]


def table_rows(results: List[Dict[str, Any]], peaks: Dict[str, float]) -> List[List[str]]:
    out = []
    for r in results:
        label = f"diffusers (≈ {r['preset']})" if r["model"] == "diffusers" else f"{r['model']} ({r['preset']})"
        head = [label, f"{r['params'] / 1e6:.2f} M", f"{r['size']}", f"{r['batch']}", r["mode"]]
        if r["status"] != "ok":
            out.append(head + [r["status"], "", "", "", ""])
            continue
        pk = peaks.get(r["peak_kind"])
        flops = r.get("flops_per_step")
        out.append(head + [
            f"{r['images_per_s']:.4g} ({r['images_per_s_min']:.4g}–{r['images_per_s_max']:.4g})",
            f"{r['ratio']:.2f}×" if r.get("ratio") else ("" if r["model"] == "diffusers" else "n/a"),
            f"{flops / r['batch'] / 1e9:.3g}" if flops else "n/a",
            f"{r['achieved_flops'] / 1e12:.3g}" if flops else "n/a",
            f"{100 * r['achieved_flops'] / pk:.0f} % ({r['peak_kind']})" if pk and flops else ""])
    return out


def add_conv_efficiency(results: List[Dict[str, Any]], peaks: Dict[str, float]) -> None:
    """From the profile's share of convolution and matmul ops: the rate those ops alone run at.

    CPU: conv_fraction_of_peak = FLOPs per step / (median step time × their share of the CPU time) / peak.
    CUDA: the same with the profiled kernel time instead of the step time, and gpu_busy = kernel time /
    step time (below 1 when the GPU waits for the host: kernel launches, the per-step sync).
    """
    for r in results:
        p, pk = r.get("profile"), peaks.get(r.get("peak_kind"))
        if not p or not pk or not r.get("flops_per_step") or r["status"] != "ok":
            continue
        share = p["kinds"].get("convolution", 0.0) + p["kinds"].get("matmul/attention", 0.0)
        if share <= 0:
            continue
        step_s = r["batch"] / r["images_per_s"]
        busy_s = p["total_ms"] / 1e3 if p["clock"].startswith("kernel") else step_s
        r["conv_share"] = share
        r["conv_fraction_of_peak"] = r["flops_per_step"] / (busy_s * share) / pk
        if p["clock"].startswith("kernel"):
            r["gpu_busy"] = busy_s / step_s


def add_ratios(results: List[Dict[str, Any]]) -> None:
    by_key = {(r["model"], r["preset"], r["size"], r["batch"], r["mode"]): r for r in results}
    for r in results:
        if r["model"] == "diffusers" or r["status"] != "ok":
            continue
        d = by_key.get(("diffusers", r["preset"], r["size"], r["batch"], r["mode"]))
        if d and d["status"] == "ok":
            r["ratio"] = r["images_per_s"] / d["images_per_s"]


def peak_text(peak_runs: Dict[str, Dict[str, float]]) -> str:
    return "Device limit (best timing; the larger is the peak): " + "; ".join(
        f"{k}: matmul {v['matmul'] / 1e12:.3g} TFLOP/s, 3×3 conv {v['conv3x3'] / 1e12:.3g} TFLOP/s"
        for k, v in peak_runs.items()) + "."


def profile_text(results: List[Dict[str, Any]]) -> str:
    lines = []
    for r in results:
        p = r.get("profile")
        if not p:
            continue
        eff = ""
        if r.get("gpu_busy"):
            eff += f" (kernels busy {100 * r['gpu_busy']:.0f} % of the timed step)"
        if r.get("conv_share") and r.get("conv_fraction_of_peak"):
            eff += (f"; convolutions + matmuls take {100 * r['conv_share']:.0f} % of it and run at "
                    f"≈ {100 * r['conv_fraction_of_peak']:.0f} % of the peak")
        lines.append(f"- {r['model']} ({r['preset']}), {r['size']} px, batch {r['batch']}, {r['mode']}: "
                     f"{p['clock']} {p['total_ms']:.1f} ms per step{eff}")
        lines.append("  - top ops: " + "; ".join(f"`{t['op']}` {100 * t['share']:.0f} %" for t in p["top"]))
        lines.append("  - by kind: " + "; ".join(f"{k} {100 * v:.0f} %" for k, v in p["kinds"].items() if v >= 0.005))
    return "\n".join(lines) + ("\n" if lines else "")


def diffusers_text(dconfs: Dict[str, Tuple[Dict[str, Any], int]], ours: Dict[str, int]) -> str:
    lines = []
    for preset, (conf, n) in dconfs.items():
        keys = ("block_out_channels", "layers_per_block", "add_attention", "attention_head_dim", "norm_num_groups",
                "act_fn", "dropout")
        desc = ", ".join(f"{k}={conf[k]}" for k in keys)
        lines.append(f"- {preset}: ours {ours[preset]:,} parameters; diffusers.UNet2DModel({desc}; DownBlock2D/"
                     f"UpBlock2D, mid-block attention as configured) {n:,} parameters "
                     f"({100 * (n / ours[preset] - 1):+.1f} %)")
    return "\n".join(lines) + ("\n" if lines else "")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--presets", nargs="+", choices=sorted(UNET_PRESETS),
                   help="our U-Net presets (default CPU: small recommended; cuda: report recommended)")
    p.add_argument("--sizes", nargs="+", type=int, help="image sizes (default CPU: 32 64; cuda: 32 64 128)")
    p.add_argument("--batch", help="batch size, or one per size separated by commas, e.g. 128,64,32 "
                                   "(default CPU 8, cuda 64)")
    p.add_argument("--modes", nargs="+", help="fp32 or amp, + channels_last, + compile, + cudnn_benchmark, e.g. "
                                              "amp+channels_last (default CPU: fp32; cuda: fp32 amp "
                                              "amp+channels_last amp+channels_last+compile)")
    p.add_argument("--compile-at", nargs="*", metavar="PRESET@SIZE",
                   help="run the +compile modes only here (default cuda: recommended@64, to stay within a few "
                        "minutes; pass 'all' for every preset and size)")
    p.add_argument("--steps", type=int, help="timed steps per round (default CPU 3, cuda 10)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default CPU 2, cuda 3)")
    p.add_argument("--repeats", type=int, help="alternating rounds; the median is reported (default 3)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default on CPU: 1, since 2 OpenMP threads on a shared 2-core machine "
                        "stall whenever another process holds a core; cuda: torch's choice)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="start no new configuration after this many seconds; the rest are marked skipped "
                        "(default: none)")
    p.add_argument("--no-diffusers", action="store_true", help="time our U-Net only")
    p.add_argument("--what-if", action="store_true",
                   help="also time 'ours+fixes': our U-Net with the changes suggested in benchmarks/README.md "
                        "(GroupNorm or attention presets, modes without compile)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    p.add_argument("--profile-mode", help="the mode whose step is profiled (default: amp+channels_last if timed, "
                                          "else the first mode without compile)")
    p.add_argument("--json", metavar="PATH", help="write every measurement (and the environment) as JSON here")
    p.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available here")
    defaults = CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.mode_list = [parse_mode(m) for m in args.modes]
    except ValueError as e:
        p.error(str(e))
    if args.device == "cpu" and any(m.amp for m in args.mode_list):
        p.error("amp is off on the CPU (resolve_amp ignores it there); use fp32 modes on --device cpu")
    batches = [int(b) for b in str(args.batch).split(",")]
    if len(batches) not in (1, len(args.sizes)):
        p.error(f"--batch {args.batch}: give one batch size or one per size ({len(args.sizes)})")
    args.batch_for = dict(zip(args.sizes, batches * len(args.sizes) if len(batches) == 1 else batches))
    for s in args.sizes:
        for preset in args.presets:
            depth = UNET_PRESETS[preset].depth
            if s % 2 ** depth:
                p.error(f"size {s} does not divide by 2**{depth} (preset {preset})")
    return args


def pick_profile_mode(args) -> Mode:
    """--profile-mode, else the Trainer's CUDA default (amp+channels_last) when timed, else the first mode
    without compile."""
    names = [m.name for m in args.mode_list]
    want = args.profile_mode or ("amp+channels_last" if "amp+channels_last" in names else None)
    if want in names:
        return args.mode_list[names.index(want)]
    return next((m for m in args.mode_list if not m.compile), args.mode_list[0])


def compile_allowed(args, preset: str, size: int) -> bool:
    at = args.compile_at
    return at is None or "all" in at or f"{preset}@{size}" in at


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    env = environment(device, packages=("diffusers",))
    print(environment_line(env), flush=True)

    UNet2DModel, dver = (None, "skipped (--no-diffusers)") if args.no_diffusers else load_diffusers()
    if UNet2DModel is None:
        print(f"[bench_train] diffusers rows skipped: {dver}", flush=True)
    train_cfg = TrainConfig()            # lr 2e-4, Adam (0.9, 0.999), grad_clip 1.0, EMA 0.9999 with warm-up
    ours_params = {p: count_parameters(UNet(unet_preset(p))) for p in args.presets}
    dconfs: Dict[str, Tuple[Dict[str, Any], int]] = {}
    if UNet2DModel is not None:
        for preset in args.presets:
            dconfs[preset] = match_diffusers(UNet2DModel, UNET_PRESETS[preset], ours_params[preset], args.sizes[0])
    print(diffusers_text(dconfs, ours_params), end="", flush=True)

    kinds = sorted({peak_kind(m, device) for m in args.mode_list})
    peak_runs = {k: measure_peak(device, k) for k in kinds}
    print(peak_text(peak_runs), flush=True)

    profile_mode = pick_profile_mode(args)
    results, flops_cache = [], {}

    def save_json(final: bool) -> None:
        if not args.json:
            return
        out = {"complete": final, "args": {k: v for k, v in vars(args).items() if k != "mode_list"}, "env": env,
               "diffusers": dver, "peaks_flops": peak_runs, "profile_mode": profile_mode.name,
               "diffusers_configs": {p: {"config": c, "params": n} for p, (c, n) in dconfs.items()},
               "ours_params": ours_params, "results": results, "elapsed_s": time.perf_counter() - t_start}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))

    for mode in args.mode_list:                  # modes outermost: the compile modes come last
        for preset in args.presets:
            for size in args.sizes:
                if mode.compile and not compile_allowed(args, preset, size):
                    continue
                b = args.batch_for[size]
                if args.time_limit and time.perf_counter() - t_start > args.time_limit:
                    print(f"[bench_train] {preset} {size}px {mode.name}: skipped, past --time-limit "
                          f"{args.time_limit:.0f} s", flush=True)
                    results.extend({"model": m, "preset": preset, "params": ours_params[preset] if m == "ours"
                                    else dconfs[preset][1], "size": size, "batch": b, "mode": mode.name,
                                    "status": "skipped (time limit)", "peak_kind": peak_kind(mode, device)}
                                   for m in (["ours"] + (["diffusers"] if preset in dconfs else [])))
                    continue
                print(f"[bench_train] {preset} {size}px batch {b} {mode.name} ...", flush=True)
                with cudnn_benchmark(mode.cudnn_benchmark):
                    rows = run_config(preset, size, b, mode, args, device, UNet2DModel,
                                      dconfs.get(preset, (None, 0))[0], train_cfg, flops_cache,
                                      do_profile=not args.no_profile and mode == profile_mode)
                for r in rows:
                    r["peak_kind"] = peak_kind(mode, device)
                    if r["status"] == "ok":
                        print(f"    {r['model']:9s} {r['images_per_s']:9.1f} img/s  "
                              f"(rounds: {', '.join(f'{args.steps * b / t:.1f}' for t in r['times_s'])})", flush=True)
                results.extend(rows)
                save_json(final=False)
    # a second look at the limit at the end: on a shared machine the best of both is the fairer limit
    if device.type == "cpu":
        for k in kinds:
            again = measure_peak(device, k)
            peak_runs[k] = {key: max(v, again[key]) for key, v in peak_runs[k].items()}
    peaks = {k: v["peak"] for k, v in peak_runs.items()}
    add_ratios(results)
    add_conv_efficiency(results, peaks)
    elapsed = time.perf_counter() - t_start

    table = markdown_table(HEADER, table_rows(results, peaks), align="lrrrlrrrrr")
    peak_line = peak_text(peak_runs) + "\n"
    notes = ("Step = `Trainer.train_step` (q_sample, forward, MSE, backward, clip_grad_norm_, Adam, LR schedule, "
             "EMA) for both models; EMA included for both. GFLOP/img counts forward + backward convolutions, "
             "matmuls and attention (torch.utils.flop_counter); elementwise, norm and optimizer work count 0. "
             f"{args.steps} timed steps × {args.repeats} alternating rounds after {args.warmup} warm-up steps; "
             f"whole run {elapsed:.0f} s.\n")
    parts = [table, peak_line, notes]
    if any(r["model"] == "ours+fixes" for r in results):
        parts += [f"ours+fixes: {WHAT_IF}.\n"]
    if dconfs:
        parts += ["Matched diffusers configs:\n", diffusers_text(dconfs, ours_params)]
    else:
        parts += [f"diffusers rows skipped: {dver}.\n"]
    if profile_text(results):
        parts += [f"Profile of one step ({profile_mode.name}):\n", profile_text(results)]
    body = "\n".join(parts)
    print()
    print(body)
    if args.json:
        save_json(final=True)
        print(f"[bench_train] wrote {args.json}")
    if args.write:
        path = write_results("Training throughput (bench_train.py)", body, env,
                             command=command_line(argv, "benchmarks/bench_train.py"))
        print(f"[bench_train] appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
