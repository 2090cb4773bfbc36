"""Command line: ``python -m ddpm_helpers {train,sample,evaluate,figures,prepare,kaggle,ablate,export} ...``.

The one place where flags are declared. Each subcommand is two functions here — ``add_<name>_arguments(parser)``
declaring its flags, each checked when parsed by a ``type=`` function below, and a thin ``run_<name>(args)``
calling the package — and one row of COMMANDS. To add a subcommand, write those two and add the row.

``main`` is the one error boundary: the package's own errors (errors.DDPMError: bad flags, missing data,
unusable checkpoints, ...) and OS errors (no space left, permission denied, read-only, symlink loops, missing
files) print one or two lines saying what happened and what to do, and exit with code 2; Ctrl-C exits with
130. ``--debug`` (or the environment variable DDPM_DEBUG=1) adds the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import re
import shlex
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from . import kaggle
from .celeba import DataNotFoundError, find_celeba
from .config import (
    AMP_NAMES,
    CROP_NAMES,
    FIGURE_PARTS,
    MAX_SEED,
    SAMPLER_NAMES,
    SPLIT_NAMES,
    TRAIN_PRESETS,
    UNET_PRESETS,
    VARIANCE_NAMES,
    DataConfig,
    parse_duration,
)
from .data import prepare_images
from .errors import ConfigError, DDPMError
from .evaluate import evaluate_sample_folder, reference_config
from .export import export_with_facts
from .fast_sampling import MODES as FAST_MODES
from .files import write_json
from .generate import default_spacing, default_steps, read_samples_json, sample_from_checkpoint
from .schedule import SPACINGS
from .swd import swd_of_sample_folder

EXIT_ERROR, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130
DEBUG_ENV = "DDPM_DEBUG"


# ---------------------------------------------------------------------------------------------
# Flag types: each checks its value when the flag is parsed and says what would work
# ---------------------------------------------------------------------------------------------
def _number(text: str, kind: Callable, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: must be an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: must be an integer >= 0")
    return value


def seed_value(text: str) -> int:
    """A seed: an integer in [0, MAX_SEED] (2³² − 1, NumPy's range; larger ones would overflow the derived seeds)."""
    value = _number(text, int, "an integer")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, {MAX_SEED}]; a seed from the clock fits with "
                                         f"$(( $(date +%s) % {MAX_SEED + 1} ))")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0, e.g. 2e-4")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number >= 0")
    return value


def probability(text: str) -> float:
    """A number in [0, 1) (a decay or a rate)."""
    value = _number(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in [0, 1), e.g. 0.9999")
    return value


def eta_value(text: str) -> float:
    """DDIM's η in [0, 1]: 0 deterministic, 1 as noisy as DDPM."""
    value = _number(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in [0, 1] (0: deterministic DDIM, 1: as noisy as DDPM)")
    return value


def loss_weight(text: str):
    """'none' (L_simple's uniform weight) or 'min-snr-G' (Min-SNR-γ with γ = G > 0, e.g. min-snr-5) → 'none' or G."""
    if text == "none":
        return "none"
    match = re.fullmatch(r"min-snr-(.+)", text)
    gamma = _number(match.group(1), float, "a number") if match else None
    if gamma is None or not (math.isfinite(gamma) and gamma > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: use none or min-snr-G with a number G > 0, e.g. min-snr-5")
    return gamma


def perturbation(text: str) -> float:
    """A number in [0, 1] (input perturbation δ)."""
    value = _number(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in [0, 1], e.g. 0.1 (0: off)")
    return value


def duration(text: str) -> float:
    """A time budget > 0: '11h30m', '90m', '45s' or seconds."""
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the time budget must be > 0, e.g. 11h30m")
    return seconds


def device_name(text: str) -> str:
    """cpu, cuda, cuda:N or mps, and only one this machine has."""
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU that torch can use; use --device "
                                             "cpu, or leave --device out to pick the best device there is")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} GPU(s): cuda:0 … cuda:{count - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no Apple GPU (MPS) here; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: {dev.type} devices are not supported; use cpu, cuda or mps")
    return text


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in two lines (the error, and where help is) instead of the whole usage."""

    def error(self, message: str):
        flag = re.match(r"argument (--[\w-]+): expected one argument", message)
        if flag:   # `--lr -1e-3`: argparse takes a value starting with '-' for a flag
            message += f" (for a value starting with '-', write {flag.group(1)}=VALUE)"
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n(see: {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
PATH_FLAGS = ("data", "out", "cache_dir")   # made absolute in the "continue with" command


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--preset", default="auto", choices=["auto", *TRAIN_PRESETS],
                   help="auto: celeba64 on a GPU with CelebA, cpu-celeba on a CPU with CelebA, else cpu "
                        "(offline faces)")
    p.add_argument("--data", help="CelebA folder (else $CELEBA_DIR, /kaggle/input, ./data are searched)")
    p.add_argument("--out", help="run folder for checkpoints, samples, metrics")
    p.add_argument("--image-size", type=positive_int, help="pixels; a multiple of 2**depth of the U-Net")
    p.add_argument("--crop", choices=CROP_NAMES)
    p.add_argument("--max-images", type=positive_int, help="use only the first N images of the split")
    p.add_argument("--cache-dir", help="where the preprocessed uint8 cache goes")
    p.add_argument("--unet", choices=sorted(UNET_PRESETS), help="U-Net preset to use instead of the preset's own")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (split across torchrun processes)")
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--time-budget", type=duration,
                   help="e.g. 11h30m: checkpoint and exit cleanly before this much wall time")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from the newest checkpoint in --out, or from the given file/folder")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though the data differs from what the checkpoint was trained on")
    p.add_argument("--seed", type=seed_value)
    p.add_argument("--device", type=device_name, help="cuda, cuda:1, mps or cpu (default: cuda if available)")
    p.add_argument("--amp", choices=AMP_NAMES)
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    p.add_argument("--channels-last", choices=["on", "off"],
                   help="memory format on CUDA (default: on for BatchNorm U-Nets, off for GroupNorm ones)")
    p.add_argument("--sample-every", type=non_negative_int, help="steps between sample grids (0: only at the end)")
    p.add_argument("--checkpoint-every", type=non_negative_int, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--log-every", type=positive_int)
    p.add_argument("--ema-decay", type=probability)
    p.add_argument("--loss-weight", type=loss_weight, metavar="{none,min-snr-G}",
                   help="per-step loss weight: none (L_simple) or min-snr-G, min(SNR, G)/SNR (e.g. min-snr-5)")
    p.add_argument("--input-perturbation", type=perturbation, metavar="DELTA",
                   help="build x_t from eps + DELTA*xi (target eps), e.g. 0.1; 0: off")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve_preset(name: str, data_root: Optional[str] = None) -> str:
    """'auto' → celeba64 on a GPU with CelebA, cpu-celeba on a CPU with CelebA, else cpu (offline faces)."""
    if name != "auto":
        return name
    try:
        find_celeba(data_root)
    except DataNotFoundError:
        return "cpu"
    return "celeba64" if torch.cuda.is_available() else "cpu-celeba"


# flag → TrainConfig field, for the flags that set one field as given
TRAIN_FIELDS = {"out": "out_dir", "batch_size": "batch_size", "lr": "lr", "max_steps": "max_steps",
                "epochs": "epochs", "seed": "seed", "amp": "amp", "sample_every": "sample_every",
                "checkpoint_every": "checkpoint_every", "log_every": "log_every", "ema_decay": "ema_decay",
                "time_budget": "time_budget"}
DATA_FIELDS = {"data": "root", "image_size": "image_size", "max_images": "max_images", "cache_dir": "cache_dir",
               "crop": "crop"}


def build_train_config(args: argparse.Namespace):
    """Start from the named preset and apply the flags that were given; (preset name, TrainConfig).

    The config checks every field as it is built (ConfigError naming the flag), before any file is written.
    """
    name = resolve_preset(args.preset, args.data)
    cfg = TRAIN_PRESETS[name]
    top = {field: getattr(args, flag) for flag, field in TRAIN_FIELDS.items() if getattr(args, flag) is not None}
    data = {field: getattr(args, flag) for flag, field in DATA_FIELDS.items() if getattr(args, flag) is not None}
    if args.compile:
        top["compile"] = True
    if getattr(args, "loss_weight", None) is not None:
        top["min_snr_gamma"] = None if args.loss_weight == "none" else args.loss_weight
    if getattr(args, "input_perturbation", None) is not None:
        top["input_perturbation"] = args.input_perturbation
    if args.channels_last is not None:
        top["channels_last"] = args.channels_last == "on"
    if args.unet is not None:
        c = cfg.model.in_channels
        top["model"] = dataclasses.replace(UNET_PRESETS[args.unet], in_channels=c, out_channels=c)
    return name, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data), **top)


def _data_location(cfg) -> Optional[str]:
    """The absolute folder the run's images came from: the --data given, else the CelebA the search finds
    (None: the offline faces)."""
    if cfg.data.root:
        return str(Path(cfg.data.root).expanduser().resolve())
    try:
        return str(find_celeba(None).image_dir.resolve())
    except DataNotFoundError:
        return None


def program_name() -> str:
    """'ddpm' when this process is the installed ``ddpm`` script, else 'python -m ddpm_helpers' (usage lines)."""
    return "ddpm" if Path(sys.argv[0]).stem == "ddpm" else "python -m ddpm_helpers"


def invocation() -> str:
    """How to start this program again from a new shell, as it was started now: ``ddpm``, or this interpreter's
    absolute path with ``-m ddpm_helpers`` (a bare ``python`` may be another one, without torch), preceded by
    ``cd`` to the clone when the package is imported from one rather than installed."""
    if program_name() == "ddpm":
        return "ddpm"
    command = f"{shlex.quote(sys.executable)} -m ddpm_helpers"
    parent = Path(__file__).resolve().parent.parent
    if parent.name not in ("site-packages", "dist-packages"):
        command = f"cd {shlex.quote(str(parent))} && {command}"
    return command


def continue_command(args: argparse.Namespace, preset: str, cfg) -> str:
    """The shell command that continues this run exactly, runnable in a new shell (see invocation): every flag
    that was given (paths absolute), the data pinned (--data, --image-size, --max-images, --cache-dir as
    resolved), and --resume."""
    pinned = {"preset": preset, "out": cfg.out_dir, "data": _data_location(cfg), "image_size": cfg.data.image_size,
              "max_images": cfg.data.max_images, "cache_dir": cfg.data.cache_dir}
    parser = Parser()
    add_train_arguments(parser)
    words = ["train"]
    for action in parser._actions:
        dest = action.dest
        if not action.option_strings or dest in ("help", "resume", "allow_data_change"):
            continue
        value = pinned[dest] if pinned.get(dest) is not None else getattr(args, dest, None)
        if value is None or value is False:
            continue
        if dest in PATH_FLAGS:
            value = str(Path(value).expanduser().resolve())
        words += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return invocation() + " " + " ".join(shlex.quote(w) for w in words + ["--resume"])


def _resolved(path: Any) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):   # a symlink loop: judged as written (reported later)
        return Path(os.path.abspath(Path(path).expanduser()))


def is_within(path: Any, folder: Any) -> bool:
    """Whether path is folder or lies inside it, after resolving symlinks and '..'."""
    path, folder = _resolved(path), _resolved(folder)
    return path == folder or folder in path.parents


def run_train(args: argparse.Namespace) -> int:
    from .train import train  # optional: heavy (matplotlib for the loss curve), only the train command needs it
    name, cfg = build_train_config(args)
    data_dir = _resolved(cfg.data.root) if cfg.data.root else None
    if data_dir and is_within(cfg.out_dir, data_dir):
        raise ConfigError(f"--out {cfg.out_dir} is inside the data folder {data_dir}: the run's PNGs would be read as "
                          "training images next time; choose an --out outside it, e.g. runs/NAME")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        print(f"[train] preset {name} → {cfg.out_dir}")
    extra = {"allow_data_change": True} if args.allow_data_change else {}
    result = train(cfg, resume=args.resume, device=args.device, progress=not args.no_progress, **extra)
    if main_rank:
        print(f"[train] {result.stop_reason} at step {result.step}. Outputs in {result.out_dir}: "
              f"{result.checkpoint.name if result.checkpoint else 'no checkpoint'}, samples/latest.png, "
              f"loss_curve.png, metrics.csv")
        if result.stop_reason != "done":
            print(f"[train] continue with: {continue_command(args, name, cfg)}")
    return 0


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------
def add_sample_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint .pt file, an exported .safetensors model, or a run folder (newest checkpoint)")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples (default 64)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim",
                   help="ddim (default), ddpm (all T steps), dpm++2m or dpm++3m (DPM-Solver++, 10-20 model calls)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="model calls: DDIM default 50, DPM-Solver++ default 20, at most T; DDPM uses T")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="timestep grid of ddim and dpm++: uniform (ddim's default), linspace, quadratic, logsnr "
                        "(dpm++'s default)")
    p.add_argument("--eta", type=eta_value, default=0.0, help="DDIM η: 0 deterministic (default), 1 ≈ DDPM")
    p.add_argument("--variance", choices=VARIANCE_NAMES, default=None,
                   help="DDPM σ_t²: beta (the report's) or posterior (β̃); default: the checkpoint's")
    p.add_argument("--seed", type=seed_value, default=0, help="sample i starts from noise seeded by (seed, i)")
    p.add_argument("--out", default=None, help="write one grid PNG here")
    p.add_argument("--out-dir", default=None, help="write single PNGs here (resumable; damaged files are redone)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--fast", choices=FAST_MODES, default="off",
                   help="U-Net without launch overhead: cudagraph (CUDA graphs, the same samples), compile, "
                        "compile+cudagraph, auto (cudagraph on CUDA); default off")
    p.add_argument("--device", type=device_name, default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not the EMA")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def check_png_out(out: Optional[str], flag: str = "--out") -> None:
    """A grid's path: a .png name that is not a folder (a name without extension would hide what the file is)."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"{flag} {out} is a folder; give the grid's file name, e.g. {path / 'grid.png'} "
                          "(single PNGs go to --out-dir)")
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{flag} {out}: the grid is written as PNG; name it so, e.g. {path.with_suffix('.png')}")


def run_sample(args: argparse.Namespace) -> int:
    if args.out is None and args.out_dir is None:
        raise ConfigError("sample needs --out (a grid PNG) and/or --out-dir (single PNGs for metrics)")
    check_png_out(args.out)
    if args.sampler == "ddpm" and (args.steps is not None or args.spacing is not None):
        print("note: DDPM runs all T steps of the schedule; --steps/--spacing are ignored (use --sampler ddim or "
              "dpm++2m for fewer)", file=sys.stderr)
    run = sample_from_checkpoint(args.checkpoint, n=args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                 seed=args.seed, out=args.out, out_dir=args.out_dir, ema=args.ema, device=args.device,
                                 batch_size=args.batch_size, variance=args.variance, progress=not args.quiet,
                                 fast=args.fast, spacing=args.spacing)
    steps, spacing = args.steps or default_steps(args.sampler), default_spacing(args.sampler, args.spacing)
    label = ("DDPM" if args.sampler == "ddpm" else f"DDIM-{steps} η={args.eta:g} ({spacing} grid)"
             if args.sampler == "ddim" else f"{args.sampler.upper()}-{steps} ({spacing} grid)")
    print(f"checkpoint: {run.checkpoint} ({'EMA' if args.ema else 'raw'} weights), sampler {label}, seed {args.seed}")
    if run.folder is not None:
        r = run.folder
        for i, why in sorted(r.damaged.items())[:5]:
            print(f"note: {i:06d}.png {why}: regenerated", file=sys.stderr)
        redone = f" ({len(r.damaged)} of them replaced damaged files)" if r.damaged else ""
        print(f"{r.out_dir}: wrote {r.written} PNGs{redone}, kept {r.skipped} already there ({r.n} in all)")
    if run.grid is not None:
        print(f"grid of {len(run.images)} images: {run.grid}")
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def add_evaluate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--samples", required=True, help="folder of sample PNGs (from `sample --out-dir`)")
    p.add_argument("--data", default=None, help="CelebA root (default: search $CELEBA_DIR, /kaggle/input, ./data)")
    p.add_argument("--split", default="train", choices=SPLIT_NAMES, help="reference split (default train)")
    p.add_argument("--crop", default=None, choices=CROP_NAMES,
                   help="reference crop (default: the samples' training crop, else ddim_128)")
    p.add_argument("--image-size", type=positive_int, default=None, help="reference size (default: the samples')")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="reference channels (default: the samples')")
    p.add_argument("--n-real", type=positive_int, default=10_000,
                   help="reference images, the split's first N (default 10000)")
    p.add_argument("--n-fake", type=positive_int, default=None, help="use only the first N samples (default: all)")
    p.add_argument("--feature", default="inception", choices=("inception", "simple"),
                   help="inception (downloads weights once) or simple (offline stand-in, self-comparable only)")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (offline use)")
    p.add_argument("--kid-subset-size", type=positive_int, default=1000)
    p.add_argument("--kid-subsets", type=positive_int, default=100)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", type=device_name, default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--cache-dir", default=None, help="where the reference images and features are cached")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of KID's subset draws and SWD's patches")
    p.add_argument("--swd-n", type=positive_int, default=None,
                   help="images per set for SWD (default: up to 2000 samples, capped by the held-out real images)")
    p.add_argument("--no-swd", action="store_true", help="skip the sliced Wasserstein distance")
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    if not Path(args.samples).is_dir():
        raise ConfigError(f"--samples {args.samples}: no such folder (write one with `sample --out-dir`)")
    meta = read_samples_json(args.samples) or {}
    reference = reference_config(meta, root=args.data, split=args.split, crop=args.crop, image_size=args.image_size,
                                 channels=args.channels, n_real=args.n_real, cache_dir=args.cache_dir)
    swd = None
    if not args.no_swd:           # needs no download, so it comes first and is printed even when FID cannot run
        try:
            swd = swd_of_sample_folder(args.samples, meta, reference, root=args.data, n=args.swd_n, seed=args.seed)
            print(swd)
        except DDPMError as e:    # e.g. no held-out images: FID and KID can still run (the full reason once, below)
            print(f"note: no SWD: {str(e).splitlines()[0]} (--no-swd skips it)", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
            result = evaluate_sample_folder(args.samples, reference, n_fake=args.n_fake, device=args.device,
                                            feature=args.feature, kid_subset_size=args.kid_subset_size,
                                            kid_subsets=args.kid_subsets, batch_size=args.batch_size, seed=args.seed,
                                            inception_weights=args.inception_weights, progress=True)
    except DataNotFoundError as e:
        if swd is None:           # no number at all: the whole "where to get CelebA" message, once
            raise
        print(f"note: no FID/KID: {str(e).splitlines()[0]} They compare with CelebA; the SWD above needs no "
              "download (--data DIR points at CelebA).", file=sys.stderr)
        result = None
    if result is not None:
        print(result)
    if args.json:
        write_json(args.json, {**(result.as_dict() if result is not None else {}), "samples": str(args.samples),
                               "checkpoint": meta.get("checkpoint"), "swd": swd.as_dict() if swd is not None else None})
    return 0


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------
def add_prepare_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--data", help="CelebA folder (else searched)")
    p.add_argument("--split", default="train", choices=SPLIT_NAMES)
    p.add_argument("--crop", default="ddim_128", choices=CROP_NAMES)
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--channels", type=int, default=3, choices=[1, 3])
    p.add_argument("--max-images", type=positive_int)
    p.add_argument("--cache-dir")
    return p


def run_prepare(args: argparse.Namespace) -> int:
    cfg = DataConfig(root=args.data, split=args.split, crop=args.crop, image_size=args.image_size,
                     channels=args.channels, max_images=args.max_images, cache_dir=args.cache_dir,
                     offline_fallback=False)
    images, desc = prepare_images(cfg)
    print(f"[prepare] {desc}: array {tuple(images.shape)} uint8")
    return 0


# ---------------------------------------------------------------------------------------------
# kaggle — the flags live here, the work in kaggle.py (engineer B's: add a flag here, use it in kaggle.run_kaggle)
# ---------------------------------------------------------------------------------------------
def add_kaggle_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--user", default=os.environ.get("KAGGLE_USERNAME"), required="KAGGLE_USERNAME" not in os.environ,
                   help="your Kaggle user name (default: $KAGGLE_USERNAME)")
    p.add_argument("--out", default="build/kaggle", help="where to write the folders (default: build/kaggle)")
    p.add_argument("--notebooks", default="notebooks", help="folder of the notebooks (default: notebooks)")
    p.add_argument("--repo-root", default=".", help="repository root holding ddpm_helpers/ (default: .)")
    p.add_argument("--push", action="store_true",
                   help="upload: the package dataset (waits until it is ready), then the kernels (01-04)")
    p.add_argument("--wait", action="store_true",
                   help="with --push: wait until 04's version has completed, then push 05 (which samples it)")
    p.add_argument("--poll", type=non_negative_float, default=60.0, help="seconds between status checks (default: 60)")
    p.add_argument("--message", default="update ddpm_helpers", help="version note for `kaggle datasets version`")
    return p


def run_kaggle(args: argparse.Namespace) -> int:
    if not (Path(args.repo_root) / "ddpm_helpers" / "__init__.py").is_file():
        raise ConfigError(f"--repo-root {args.repo_root} does not hold the ddpm_helpers package (no "
                          "ddpm_helpers/__init__.py): run from the repository root, or point --repo-root there")
    source = Path(args.repo_root) / "ddpm_helpers"
    copy = Path(args.out) / kaggle.PACKAGE_DATASET_SLUG / "ddpm_helpers"
    if is_within(args.out, source) or is_within(source, copy):
        raise ConfigError(f"--out {args.out} would put the package dataset inside the package's own source "
                          f"({source.resolve()}) or replace it; choose a folder outside it, e.g. build/kaggle")
    if not sorted(Path(args.notebooks).glob("*.ipynb")):
        raise ConfigError(f"--notebooks {args.notebooks}: no notebooks (*.ipynb) there; point it at the "
                          "repository's notebooks/ folder")
    return kaggle.run_kaggle(args)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def figure_parts(text: str) -> Tuple[str, ...]:
    """A comma-separated subset of config.FIGURE_PARTS, e.g. 'samples,curves'."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or any(p not in FIGURE_PARTS for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated subset of {','.join(FIGURE_PARTS)}")
    return parts


def add_figures_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint .pt file, an exported .safetensors model, or a run folder (newest checkpoint)")
    p.add_argument("--out", required=True, help="folder for the figures, figures.json and captions.md")
    p.add_argument("--prefix", default="", help="put before every file name, e.g. celeba32_")
    p.add_argument("--n", type=positive_int, default=None, help="samples in the grid (default 64; 16 with --quick)")
    p.add_argument("--seed", type=seed_value, default=0, help="sample i starts from noise seeded by (seed, i)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim",
                   help="the grid's and SWD's sampler: ddim (default), ddpm, dpm++2m, dpm++3m")
    p.add_argument("--steps", type=positive_int, default=None, help="their steps (default 50)")
    p.add_argument("--device", type=device_name, default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--data", default=None, help="CelebA folder, when not where the checkpoint's run found it")
    p.add_argument("--no-data", action="store_true", help="skip the nearest training images and the SWD")
    p.add_argument("--swd-n", type=positive_int, default=None,
                   help="samples scored by SWD (default 500, capped by the held-out images)")
    p.add_argument("--only", type=figure_parts, default=None,
                   help="draw only these parts: samples, samplers, reverse, curves, data (comma-separated)")
    p.add_argument("--trained-on", default=None,
                   help="the training hardware for the captions, e.g. '2 CPU cores' (checkpoints do not record it)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not the EMA")
    p.add_argument("--quick", action="store_true", help="a few images and steps (seconds on a CPU), for tests")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run_figures(args: argparse.Namespace) -> int:
    from .figures import draw_figures  # optional: heavy (matplotlib), only the figures command draws
    result = draw_figures(args.checkpoint, args.out, prefix=args.prefix, n=args.n, seed=args.seed,
                          sampler=args.sampler, steps=args.steps, device=args.device, data=not args.no_data,
                          data_root=args.data, quick=args.quick, swd_n=args.swd_n, ema=args.ema,
                          trained_on=args.trained_on, parts=args.only or FIGURE_PARTS, progress=not args.quiet)
    count = sum(len(paths) for paths in result.files.values())
    print(f"[figures] {count} figure files in {result.out_dir}; facts in {result.json_path.name}, captions in "
          f"{result.captions_path.name}")
    return 0


# ---------------------------------------------------------------------------------------------
# ablate
# ---------------------------------------------------------------------------------------------
def add_ablate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--list", action="store_true", help="print every variant with what it changes, and exit")
    p.add_argument("--variants", help="comma-separated variant names (default: all; see --list)")
    p.add_argument("--seeds", type=positive_int, default=3, help="training seeds 0 … K−1 per variant (default 3)")
    p.add_argument("--preset", default="cpu-celeba-v1", choices=sorted(TRAIN_PRESETS),
                   help="the base recipe (default cpu-celeba-v1: the one the committed ablation measured; "
                        "cpu-celeba is it with the levers that won, lr 2e-3 and no warm-up)")
    p.add_argument("--data", help="CelebA folder (else $CELEBA_DIR, /kaggle/input, ./data are searched)")
    p.add_argument("--train-images", type=positive_int, default=2500,
                   help="train on the first N images of the split; the images after them are held out (default 2500)")
    p.add_argument("--image-size", type=positive_int, help="pixels (default: the preset's)")
    p.add_argument("--cache-dir", help="where the preprocessed uint8 caches go")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=positive_int, help="optimizer steps per training run (default 1500)")
    budget.add_argument("--images", type=positive_int, help="images seen per training run (steps = images // batch)")
    p.add_argument("--n", type=positive_int, default=256, help="samples per run = held-out images scored (default 256)")
    p.add_argument("--curve", default="base,min-snr-5,input-perturbation-0.1",
                   help="variants also scored at 1/4, 1/2, 3/4 of the budget (SWD against images seen); '' for none")
    p.add_argument("--out", default="runs/ablate", help="ablation folder (default runs/ablate, ignored by git)")
    p.add_argument("--publish", action="store_true",
                   help="also write figures/ablations.json and the plot into the repository (the committed copy)")
    p.add_argument("--device", type=device_name, help="cuda, cuda:1, mps or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_ablate(args: argparse.Namespace) -> int:
    from . import ablate  # optional: heavy (training + matplotlib), only the ablate command needs it
    if args.list:
        print(ablate.list_variants())
        return 0
    cfg = TRAIN_PRESETS[args.preset]
    data = {"root": args.data, "max_images": args.train_images, "cache_dir": args.cache_dir,
            "image_size": args.image_size or cfg.data.image_size}
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **{k: v for k, v in data.items() if v}))
    steps = (ablate.steps_for_images(args.images, cfg.batch_size) if args.images is not None
             else args.max_steps or 1500)
    curve = tuple(ablate.parse_variants(args.curve)) if args.curve.strip() else ()
    ab = ablate.Ablation(base=cfg, variants=ablate.parse_variants(args.variants), seeds=args.seeds, max_steps=steps,
                         n=args.n, curve=curve, out=args.out, device=args.device)
    results = ablate.run_ablation(ab, progress=not args.no_progress, publish=ablate.REPO_FIGURES if args.publish
                                  else None)
    print(ablate.table(results))
    print(f"[ablate] results in {Path(args.out) / 'results.json'}, plot {Path(args.out) / 'ablations.png'}")
    return 0


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True, help="a checkpoint .pt file, or a run folder (newest checkpoint)")
    p.add_argument("--out", required=True, help="the model file to write, NAME.safetensors (a NAME.json of its "
                                                "training facts is written beside it)")
    p.add_argument("--facts", default=None,
                   help="a JSON file of facts the checkpoint does not record (preset, data, held_out, hardware, "
                        "swd, command), merged in; may be the NAME.json beside --out (it is rewritten)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="export the raw weights, not the EMA")
    return p


def run_export(args: argparse.Namespace) -> int:
    command = " ".join(shlex.quote(w) for w in ["python", "-m", "ddpm_helpers", "export", *_export_words(args)])
    out, sidecar, facts = export_with_facts(args.checkpoint, args.out, facts_file=args.facts, ema=args.ema,
                                            command=command)
    print(f"[export] {out} ({out.stat().st_size / 1e6:.1f} MB, {facts['weights']} weights of step "
          f"{facts['step']:,}); facts in {sidecar}")
    return 0


def _export_words(args: argparse.Namespace) -> List[str]:
    words = ["--checkpoint", str(args.checkpoint), "--out", str(args.out)]
    words += ["--facts", str(args.facts)] if args.facts else []
    return words + ([] if args.ema else ["--no-ema"])


# ---------------------------------------------------------------------------------------------
# The parser and the error boundary
# ---------------------------------------------------------------------------------------------
COMMANDS: List[Tuple[str, str, Callable[[argparse.ArgumentParser], Any], Callable[[argparse.Namespace], int]]] = [
    ("train", "train a U-Net noise predictor", add_train_arguments, run_train),
    ("sample", "generate images from a checkpoint", add_sample_arguments, run_sample),
    ("evaluate", "SWD (no download) and FID/KID of a folder of samples", add_evaluate_arguments, run_evaluate),
    ("figures", "every model-dependent figure of the series from one checkpoint", add_figures_arguments, run_figures),
    ("prepare", "build the preprocessed CelebA cache", add_prepare_arguments, run_prepare),
    ("kaggle", "write/push the Kaggle kernels and the package dataset", add_kaggle_arguments, run_kaggle),
    ("ablate", "same-budget ablations of the recipe, scored by SWD over seeds", add_ablate_arguments, run_ablate),
    ("export", "share a model: EMA weights + config as a .safetensors file that runs no code when read",
     add_export_arguments, run_export),
]
DEBUG_HELP = f"show the traceback of an error (also: {DEBUG_ENV}=1)"


def build_parser() -> Parser:
    """The parser of every subcommand (from COMMANDS); each sets args.run to its run function."""
    parser = Parser(prog=program_name(), description=__doc__.splitlines()[0].replace("``", "`"))
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(c[0] for c in COMMANDS) + "}")
    for name, help_text, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(run=run)
    return parser


def _outputs(args: argparse.Namespace) -> str:
    """The output flags of this command, as typed: where an OS error without a file name most likely happened."""
    given = [f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in ("out", "out_dir", "json", "cache_dir")
             if getattr(args, flag, None)]
    return " / ".join(given) or "the output folder"


def describe_os_error(e: OSError, args: argparse.Namespace) -> str:
    """One or two lines for an OS error: what happened to which file, and what to do."""
    name = e.filename if e.filename is not None else f"under {_outputs(args)}"
    if e.errno == errno.ENOSPC:
        return f"no space left on device writing {name}; free some space or choose another --out"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded writing {name}; free some space or choose another --out"
    if e.errno == errno.EROFS:
        return f"cannot write {name}: the file system is read-only; choose another --out"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {name}; choose a folder you can write (--out), or fix its permissions"
    if e.errno == errno.ELOOP:
        return f"{name}: too many levels of symbolic links (a symlink loop); remove the loop, or point --data elsewhere"
    if e.errno == errno.ENOENT:
        return f"no such file or folder: {name}; check the path"
    if e.errno is None:       # raised with a message only, e.g. FileNotFoundError("no notebooks in ...")
        return str(e)
    return f"{e.strerror or e}: {name}"


def explain(e: BaseException, args: argparse.Namespace) -> Tuple[str, int]:
    """(message, exit code) for an exception that reached the command line."""
    if isinstance(e, DDPMError):
        return f"error: {e}", EXIT_ERROR
    if isinstance(e, OSError):
        return f"error: {describe_os_error(e, args)}", EXIT_ERROR
    return (f"error: unexpected {type(e).__name__}: {e}\nThis is a bug in ddpm_helpers: rerun with --debug (or "
            f"{DEBUG_ENV}=1) to see the traceback, and report it."), EXIT_BUG


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse argv (default sys.argv[1:]), run the subcommand, turn expected failures into messages; exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:      # argparse printed the message (or the help)
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:   # noqa: BLE001 - the one boundary: every failure becomes a message
        if debug:
            traceback.print_exc()
        message, code = explain(e, args)
        print(message, file=sys.stderr)
        return code
