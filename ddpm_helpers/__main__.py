"""Command line: ``python -m ddpm_helpers {train,sample,evaluate,prepare,kaggle} ...``.

Thin: it parses flags into configs and calls the package's functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional


def resolve_preset(name: str, data_root: Optional[str] = None) -> str:
    """'auto' → celeba64 on a GPU with CelebA, cpu-celeba on a CPU with CelebA, else cpu (offline faces)."""
    if name != "auto":
        return name
    import torch
    from .data import DataNotFoundError, find_celeba
    try:
        find_celeba(data_root)
        found = True
    except DataNotFoundError:
        found = False
    if found:
        return "celeba64" if torch.cuda.is_available() else "cpu-celeba"
    return "cpu"


def build_train_config(args: argparse.Namespace):
    """Start from the named preset and apply the flags that were given."""
    from .config import TRAIN_PRESETS
    from .train import parse_duration
    name = resolve_preset(args.preset, args.data)
    cfg = TRAIN_PRESETS[name]
    top, data = {}, {}
    if args.data is not None:
        data["root"] = args.data
    if args.image_size is not None:
        data["image_size"] = args.image_size
    if args.max_images is not None:
        data["max_images"] = args.max_images
    if args.cache_dir is not None:
        data["cache_dir"] = args.cache_dir
    if args.crop is not None:
        data["crop"] = args.crop
    for flag, field in [("out", "out_dir"), ("batch_size", "batch_size"), ("lr", "lr"), ("max_steps", "max_steps"),
                        ("epochs", "epochs"), ("seed", "seed"), ("amp", "amp"), ("sample_every", "sample_every"),
                        ("checkpoint_every", "checkpoint_every"), ("log_every", "log_every"),
                        ("ema_decay", "ema_decay")]:
        value = getattr(args, flag)
        if value is not None:
            top[field] = value
    if args.time_budget is not None:
        top["time_budget"] = parse_duration(args.time_budget)
    if args.compile:
        top["compile"] = True
    if args.channels_last is not None:
        top["channels_last"] = args.channels_last == "on"
    if args.unet is not None:
        from .config import UNET_PRESETS
        c = cfg.model.in_channels
        model_cfg = dataclasses.replace(UNET_PRESETS[args.unet], in_channels=c, out_channels=c)
        top["model"] = model_cfg
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data), **top)
    return name, cfg


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .config import TRAIN_PRESETS, UNET_PRESETS
    p.add_argument("--preset", default="auto", choices=["auto", *TRAIN_PRESETS],
                   help="auto: celeba64 on a GPU with CelebA, cpu-celeba on a CPU with CelebA, else cpu (offline faces)")
    p.add_argument("--data", help="CelebA folder (else $CELEBA_DIR, /kaggle/input, ./data are searched)")
    p.add_argument("--out", help="run folder for checkpoints, samples, metrics")
    p.add_argument("--image-size", type=int)
    p.add_argument("--crop", choices=["ddim_128", "center_140", "center_178"])
    p.add_argument("--max-images", type=int, help="use only the first N images of the split")
    p.add_argument("--cache-dir", help="where the preprocessed uint8 cache goes")
    p.add_argument("--unet", choices=sorted(UNET_PRESETS), help="U-Net preset to use instead of the preset's own")
    p.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--time-budget", help="e.g. 11h30m: checkpoint and exit cleanly before this much wall time")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from the newest checkpoint in --out, or from the given file/folder")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--amp", choices=["auto", "fp16", "bf16", "off"])
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    p.add_argument("--channels-last", choices=["on", "off"],
                   help="memory format on CUDA (default: on for BatchNorm U-Nets, off for GroupNorm ones)")
    p.add_argument("--sample-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--no-progress", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    from .train import train
    name, cfg = build_train_config(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[train] preset {name} → {cfg.out_dir}")
    result = train(cfg, resume=args.resume, device=args.device, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        out = result.out_dir
        print(f"[train] {result.stop_reason} at step {result.step}. Outputs in {out}: "
              f"{result.checkpoint.name if result.checkpoint else 'no checkpoint'}, samples/latest.png, "
              f"loss_curve.png, metrics.csv")
        if result.stop_reason != "done":
            print(f"[train] continue with: python -m ddpm_helpers train --preset {name} --out {out} --resume")
    return 0


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="CelebA folder (else searched)")
    p.add_argument("--split", default="train", choices=["train", "valid", "test", "all"])
    p.add_argument("--crop", default="ddim_128", choices=["ddim_128", "center_140", "center_178"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3, choices=[1, 3])
    p.add_argument("--max-images", type=int)
    p.add_argument("--cache-dir")


def run_prepare(args: argparse.Namespace) -> int:
    from .config import DataConfig
    from .data import prepare_images
    cfg = DataConfig(root=args.data, split=args.split, crop=args.crop, image_size=args.image_size,
                     channels=args.channels, max_images=args.max_images, cache_dir=args.cache_dir,
                     offline_fallback=False)
    images, desc = prepare_images(cfg)
    print(f"[prepare] {desc}: array {tuple(images.shape)} uint8")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm_helpers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train a U-Net noise predictor"))
    add_prepare_arguments(sub.add_parser("prepare", help="build the preprocessed CelebA cache"))
    commands = {"train": run_train, "prepare": run_prepare}
    optional = [("sample", "generate", "add_sample_arguments", "run_sample", "generate images from a checkpoint"),
                ("evaluate", "evaluate", "add_evaluate_arguments", "run_evaluate", "FID/KID of samples"),
                ("kaggle", "kaggle", "add_kaggle_arguments", "run_kaggle", "write/push Kaggle kernels")]
    import importlib
    for cmd, module, add, run, help_text in optional:
        try:
            mod = importlib.import_module(f".{module}", __package__)
        except ImportError:
            continue
        getattr(mod, add)(sub.add_parser(cmd, help=help_text))
        commands[cmd] = getattr(mod, run)
    args = parser.parse_args(argv)
    try:
        return int(commands[args.command](args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        # Errors we raise on purpose carry a message meant for people; print it without a traceback.
        from .checkpoint import CheckpointError
        from .data import CacheError, DataNotFoundError
        from .evaluate import MetricsUnavailable
        from .train import TrainingError
        if isinstance(e, (DataNotFoundError, CacheError, CheckpointError, TrainingError, MetricsUnavailable)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
