"""Benchmark: decoding JPEGs on the fly versus batches from the uint8 cache (not a test).

Measures images/s, on the same images, of
  (a) decode + crop + resize + flip per image, in one process and in a torch DataLoader with workers;
  (b) BatchIterator over the memory-mapped cache, followed by to_model_range (optionally onto a GPU);
and the one-off cost of building the cache. Prints a markdown table with the machine's details.

    python benchmarks/bench_data.py                        # $DDPM_SHARED_DATA/celeba_5k_half, 64 px
    python benchmarks/bench_data.py --full-size            # 178×218 JPEGs (celeba_sample, repeated)
    python benchmarks/bench_data.py --device cuda --write  # append the table to benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddpm_helpers.cache import build_cache, load_cache  # noqa: E402
from ddpm_helpers.celeba import load_image  # noqa: E402
from ddpm_helpers.data import BatchIterator  # noqa: E402
from ddpm_helpers.images import to_model_range  # noqa: E402


class OnTheFlyDataset(torch.utils.data.Dataset):
    """The classic pipeline: every item is a JPEG decode, crop, resize and random flip. Item: uint8 (C, H, W)."""

    def __init__(self, paths: list[Path], crop: str, image_size: int):
        self.paths, self.crop, self.image_size = paths, crop, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_image(self.paths[i], self.crop, self.image_size, 3)  # (H, W, C)
        if torch.rand(()) < 0.5:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # a fresh, writable copy


def generated_jpegs(folder: Path, n: int) -> list[Path]:
    """n smooth 178×218 JPEGs (a stand-in when no real CelebA images are available)."""
    yy, xx = np.mgrid[0:218, 0:178] / 218.0
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        waves = [np.sin(xx * rng.uniform(2, 12) + yy * rng.uniform(2, 12) + rng.uniform(0, 6)) for _ in range(3)]
        noise = rng.normal(0, 0.08, (218, 178, 3))
        image = np.clip((np.stack(waves, -1) + noise + 1) * 127.5, 0, 255).astype(np.uint8)
        paths.append(folder / f"{i + 1:06d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
    return paths


def pick_images(args: argparse.Namespace, scratch: Path) -> tuple[list[Path], str]:
    """The benchmark's image list and a description of it."""
    shared = os.environ.get("DDPM_SHARED_DATA")
    if args.full_size:
        sample = Path(args.data or (Path(shared) / "celeba_sample" if shared else ""))
        if sample.is_dir():
            base = sorted(sample.glob("*.jpg"))
            repeated = (base * (args.n // len(base) + 1))[:args.n]
            return repeated, f"{len(base)} real 178×218 CelebA JPEGs ({sample}), repeated"
        return generated_jpegs(scratch, args.n), "generated 178×218 JPEGs"
    folder = Path(args.data) if args.data else (Path(shared) / "celeba_5k_half" if shared else None)
    if folder is not None and folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.n]
        w, h = Image.open(paths[0]).size
        return paths, f"{folder} ({w}×{h} JPEGs)"
    return generated_jpegs(scratch, args.n), "generated 178×218 JPEGs (no --data, no $DDPM_SHARED_DATA)"


def time_single_process(paths: list[Path], args: argparse.Namespace) -> float:
    """Images/s of decoding in this process, batched and mapped to [-1, 1]."""
    dataset = OnTheFlyDataset(paths, args.crop, args.image_size)
    start = time.perf_counter()
    for i in range(0, len(paths), args.batch_size):
        batch = torch.stack([dataset[j] for j in range(i, min(len(paths), i + args.batch_size))])
        to_model_range(batch, args.device)
    return len(paths) / (time.perf_counter() - start)


def time_dataloader(paths: list[Path], args: argparse.Namespace) -> float:
    """Images/s of one shuffled pass of a DataLoader with worker processes (startup included)."""
    loader = torch.utils.data.DataLoader(OnTheFlyDataset(paths, args.crop, args.image_size), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.loader_workers,
                                         pin_memory=args.device.startswith("cuda"))
    start, seen = time.perf_counter(), 0
    for batch in loader:
        to_model_range(batch, args.device)
        seen += len(batch)
    return seen / (time.perf_counter() - start)


def time_cache_iterator(cache: Path, args: argparse.Namespace) -> tuple[float, int]:
    """Images/s of BatchIterator + to_model_range over whole epochs, for at least --seconds; and the epoch count."""
    images, _ = load_cache(cache)
    batches = BatchIterator(images, args.batch_size, seed=0, pin_memory=args.device.startswith("cuda"))
    start, seen, epoch = time.perf_counter(), 0, 0
    while epoch == 0 or time.perf_counter() - start < args.seconds:
        for batch in batches.epoch(epoch):
            to_model_range(batch, args.device, channels_last=args.device.startswith("cuda"))
            seen += len(batch)
        epoch += 1
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start), epoch


def machine_line(args: argparse.Namespace) -> str:
    """Platform, CPU count, torch version, date and device, on one line."""
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    load = " · load avg %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.platform()} · Python {platform.python_version()} · "
            f"{os.cpu_count()} CPUs{load} · torch {torch.__version__} ({args.torch_threads} thread) · "
            f"Pillow {Image.__version__} · device {device}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder of JPEGs (default $DDPM_SHARED_DATA/celeba_5k_half)")
    parser.add_argument("--full-size", action="store_true", help="use 178×218 images (celeba_sample, repeated)")
    parser.add_argument("--n", type=int, default=5000, help="number of images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop", default="ddim_128")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--cache-workers", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time spent in (b)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads here (per-batch ops are tiny; more threads stall on a busy CPU)")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as scratch:
        paths, source = pick_images(args, Path(scratch))
        setting = f"crop {args.crop} → {args.image_size} px; batch {args.batch_size}"
        print(f"{len(paths)} images: {source}; {setting}", flush=True)
        single = time_single_process(paths, args)
        print(f"  on the fly, 1 process: {single:,.0f} img/s", flush=True)
        loader = time_dataloader(paths, args)
        print(f"  on the fly, DataLoader({args.loader_workers} workers): {loader:,.0f} img/s", flush=True)
        start = time.perf_counter()
        cache = build_cache(paths, Path(scratch) / "bench.npy", args.crop, args.image_size, 3,
                            workers=args.cache_workers, progress=False)
        build = len(paths) / (time.perf_counter() - start)
        print(f"  cache build ({args.cache_workers} workers, once): {build:,.0f} img/s", flush=True)
        cached, epochs = time_cache_iterator(cache, args)
        print(f"  cache + BatchIterator: {cached:,.0f} img/s ({epochs} epochs)", flush=True)

    rows = [("on the fly: decode + crop + resize + flip, 1 process", single),
            (f"on the fly: DataLoader, {args.loader_workers} workers (startup included)", loader),
            (f"cache build, {args.cache_workers} processes (once per settings)", build),
            (f"cache: BatchIterator + to_model_range → {args.device}", cached)]
    table = "\n".join([f"### Data pipeline, {machine_line(args)}",
                       f"{len(paths):,} images from {source}; {setting}.",
                       "", "| pipeline | images/s | × 1-process decode |", "|---|---:|---:|",
                       *[f"| {name} | {rate:,.0f} | {rate / single:,.1f}× |" for name, rate in rows], ""])
    print("\n" + table)
    if args.write:
        results = Path(__file__).resolve().parent / "RESULTS.md"
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n" + table)
        print(f"appended to {results}")


if __name__ == "__main__":
    main()
