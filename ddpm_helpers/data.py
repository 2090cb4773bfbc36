"""The per-step data pipeline: the offline faces, the one-call entry point, and batches.

Data flows one way: JPEG files → ``celeba.find_celeba`` / ``celeba.list_images`` → ``celeba.load_image`` (crop +
antialiased resize, uint8) → ``cache.build_cache`` (one memory-mapped ``.npy`` of shape (N, H, W, C),
decoded once) → ``BatchIterator`` (deterministic, resumable uint8 batches (B, C, H, W), random horizontal
flips) → ``images.to_model_range`` (float32 in [-1, 1] on the training device).

``prepare_images(cfg)`` is the one-call entry point (``prepare_training_data`` adds the data's identity,
recorded in checkpoints). When CelebA is absent it falls back to ``offline_faces(part="train")``: the first 80
of the 100 real LFW faces shipped inside scikit-image, so the project trains with no download; the last 20
(``part="heldout"``) are never trained on and are the reference of ``evaluate`` and ``figures`` (SWD).

Crops are defined in config.CROPS, in the coordinates of a full-size aligned CelebA image (178 wide × 218
high), and scaled in proportion for other sizes by celeba.crop_box.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from . import cache, celeba, config, images
from ._types import PathLike, moved_names
from .cache import build_cache, cache_name, default_cache_dir, load_cache
from .celeba import (
    DataNotFoundError,
    _check_split,
    _explicit_root,
    _not_found,
    check_settings,
    find_celeba,
    list_images,
)
from .config import DataConfig, derive_seed
from .errors import MissingDependencyError

# Names that lived here (or were re-exported here) before issue 19: see moved_names.
__getattr__ = moved_names(__name__, {
    **{n: celeba for n in ("IMAGE_EXTENSIONS", "CelebALocation", "read_partition", "load_image", "crop_box",
                           "ImageTooSmallError")},
    **{n: cache for n in ("CacheError", "files_fingerprint")},
    **{n: config for n in ("SPLITS", "CROPS", "MIN_IMAGE_SIZE", "FULL_WIDTH", "FULL_HEIGHT")},
    **{n: images for n in ("to_model_range", "from_model_range")},
})

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The offline default and the one-call entry point
# ---------------------------------------------------------------------------------------------
def _lfw_faces() -> np.ndarray:
    """The 100 LFW faces of scikit-image as stored: uint8 (100, 25, 25)."""
    try:
        from skimage.data import lfw_subset  # optional: scikit-image, only for the offline faces
    except ImportError:
        raise MissingDependencyError("the offline faces need scikit-image, which is not installed: "
                                     "pip install scikit-image") from None
    return np.round(lfw_subset()[:100] * 255.0).astype(np.uint8)   # float in [0, 1] → uint8


# The offline faces' fixed split: a run trains on the first 80 and never sees the last 20, which evaluate and
# figures score against when CelebA is not here (runs made before this split trained on all 100).
OFFLINE_HELDOUT = 20
OFFLINE_PARTS = {"all": slice(None), "train": slice(None, -OFFLINE_HELDOUT), "heldout": slice(-OFFLINE_HELDOUT, None)}


def offline_faces(image_size: int = 32, channels: int = 1, part: str = "all") -> np.ndarray:
    """The 100 LFW faces bundled with scikit-image (no download), resized to image_size.

    part: "all" (100), "train" (the first 100 − OFFLINE_HELDOUT, what the offline run trains on) or "heldout"
    (the last OFFLINE_HELDOUT, never trained on). Returns uint8 (N, image_size, image_size, channels);
    channels=3 replicates the gray channel.
    """
    if part not in OFFLINE_PARTS:
        raise ValueError(f"part must be one of {sorted(OFFLINE_PARTS)}, got {part!r}")
    check_settings("ddim_128", image_size, channels)
    faces = _lfw_faces()[OFFLINE_PARTS[part]]                       # (N, 25, 25) uint8
    resized = np.stack([np.asarray(Image.fromarray(f).resize((image_size, image_size), Image.Resampling.BILINEAR))
                        for f in faces])  # (100, S, S)
    return np.repeat(resized[..., None], channels, axis=-1)


@dataclass(frozen=True)
class TrainingData:
    """Images to train on, a one-line description, and their identity (recorded in every checkpoint).

    identity: kind ("celeba" / "offline" / "given"), source, split, count, crop, image_size, channels and
    fingerprint (for CelebA the names and sizes of the source files; for an array, its bytes).
    """

    images: np.ndarray           # uint8 (N, H, W, C)
    description: str
    identity: Dict[str, Any]


def array_fingerprint(images: np.ndarray, max_bytes: int = 64 * 2 ** 20) -> str:
    """SHA-1 of an image array's shape and bytes; of every k-th image when it is bigger than max_bytes."""
    step = max(1, -(-images.nbytes // max_bytes))
    digest = hashlib.sha1(f"{images.dtype}{images.shape}{step}".encode())
    for i in range(0, len(images), step):
        digest.update(np.ascontiguousarray(images[i]).tobytes())
    return digest.hexdigest()


def _array_identity(images: np.ndarray, kind: str, source: str) -> Dict[str, Any]:
    """The identity of images held in memory (the offline faces, or an array given to train())."""
    return {"kind": kind, "source": source, "split": None, "count": int(len(images)), "crop": None,
            "image_size": int(images.shape[1]), "channels": int(images.shape[-1]),
            "fingerprint": array_fingerprint(images)}


def prepare_images(cfg: DataConfig, kaggle_input: PathLike = "/kaggle/input",
                   progress: bool = True) -> tuple[np.ndarray, str]:
    """Find CelebA, build or reuse its cache, and return (uint8 (N, H, W, C) memmap, a one-line description).

    Without CelebA and with cfg.offline_fallback, returns offline_faces(cfg.image_size, cfg.channels)
    (100 images) instead. An explicit cfg.root or $CELEBA_DIR that holds no images always raises
    DataNotFoundError, so a typo never silently trains on the offline set.
    """
    data = prepare_training_data(cfg, kaggle_input=kaggle_input, progress=progress)
    return data.images, data.description


def prepare_training_data(cfg: DataConfig, images: Optional[np.ndarray] = None,
                          kaggle_input: PathLike = "/kaggle/input", progress: bool = True,
                          verify: str = "auto") -> TrainingData:
    """prepare_images with the data's identity; images: use this uint8 (N, H, W, C) array instead of cfg.
    verify: "full" re-hashes every chunk of a reused cache (see cache.FULL_VERIFY_BYTES)."""
    if images is not None:
        return TrainingData(images, f"{len(images)} images given directly",
                            _array_identity(images, "given", "images given directly"))
    check_settings(cfg.crop, cfg.image_size, cfg.channels)
    _check_split(cfg.split)
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {cfg.max_images}")
    explicit, _ = _explicit_root(cfg.root)
    try:
        location = find_celeba(cfg.root, kaggle_input)
    except DataNotFoundError:
        if explicit is not None or not cfg.offline_fallback:
            raise
        logger.warning("CelebA images were not found, so this run trains on the offline LFW faces (for CelebA: pass "
                       "--data DIR, or see the README's \"Training on CelebA\").")
        faces = offline_faces(cfg.image_size, cfg.channels, part="train")
        return TrainingData(faces, f"offline LFW faces (skimage.data.lfw_subset, 25×25 grayscale → {cfg.image_size} "
                            f"px, {cfg.channels} channel{'s' if cfg.channels > 1 else ''}), {len(faces)} images (the "
                            f"other {OFFLINE_HELDOUT} held out): a tiny stand-in because CelebA was not found",
                            {**_array_identity(faces, "offline", "offline LFW faces (skimage.data.lfw_subset)"),
                             "fingerprint": array_fingerprint(_lfw_faces()[OFFLINE_PARTS["train"]]),  # the source
                             "heldout": OFFLINE_HELDOUT})
    paths = list_images(location, cfg.split)
    if cfg.max_images is not None:
        paths = paths[:cfg.max_images]
    if not paths:
        raise _not_found([f"{location.image_dir} with {location.partition_file}: no images in split {cfg.split!r}"],
                         headline=f"The {cfg.split!r} split is empty.")
    count = len(paths) if cfg.max_images is not None else None
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    cache_path = build_cache(paths, cache_dir / cache_name(cfg.split, cfg.crop, cfg.image_size, cfg.channels, count),
                             cfg.crop, cfg.image_size, cfg.channels, source=str(location.image_dir),
                             split=cfg.split, progress=progress, verify=verify)
    images, meta = load_cache(cache_path)
    skipped = f" ({len(meta['skipped'])} unusable files skipped)" if meta["skipped"] else ""
    identity = {"kind": "celeba", "source": str(location.image_dir), "split": cfg.split, "count": int(len(images)),
                "crop": cfg.crop, "image_size": cfg.image_size, "channels": cfg.channels,
                "fingerprint": meta["names_sizes_sha1"]}
    return TrainingData(images, f"CelebA {cfg.split} ({cfg.crop} → {cfg.image_size} px), {len(images):,} images "
                        f"from {location.image_dir}{skipped}", identity)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
class BatchIterator:
    """Deterministic, resumable batches from a uint8 array, no JPEG decoding.

    Epoch e uses the permutation torch.randperm(N, generator=torch.Generator().manual_seed(derive_seed(seed, e)));
    with world_size > 1, rank r takes perm[r::world_size] (after truncating to a multiple of world_size);
    drop_last=True drops the incomplete final batch. Flip decisions are drawn from the same per-epoch
    generator (one bool per image, indexed by image, drawn once per epoch after the permutation) so
    resume is exact. images: (N, H, W, C) uint8, e.g. the memmap from prepare_images.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int = 0, hflip: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, pin_memory: bool = False):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(images) < world_size:
            raise ValueError(f"{len(images)} images cannot be shared by {world_size} ranks")
        self.images, self.batch_size, self.seed, self.hflip = images, batch_size, seed, hflip
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.pin_memory = pin_memory and torch.cuda.is_available()  # pinning needs CUDA; ignored without it
        self.per_rank = len(images) // world_size

    def batches_per_epoch(self) -> int:
        """Number of batches this rank yields per epoch."""
        full, rest = divmod(self.per_rank, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self.batches_per_epoch()

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's image indices for an epoch (per_rank,) int64 and the flip decision of every image (N,) bool."""
        n = len(self.images)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        mine = perm[: self.per_rank * self.world_size][self.rank::self.world_size]
        return mine, flips

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Yield this rank's batches of an epoch from batch index start_batch on: uint8 (B, C, H, W), contiguous."""
        if not 0 <= start_batch <= self.batches_per_epoch():
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches_per_epoch()}]")
        return self._iterate(epoch, start_batch)  # checked now, not at the first next()

    def _iterate(self, epoch: int, start_batch: int) -> Iterator[torch.Tensor]:
        """The generator behind epoch()."""
        order, flips = self.epoch_order(epoch)
        for b in range(start_batch, self.batches_per_epoch()):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._gather(idx.numpy(), flips[idx])

    def _gather(self, idx: np.ndarray, flip: torch.Tensor) -> torch.Tensor:
        """Read rows idx of the array and mirror the chosen ones: uint8 (B, H, W, C) → (B, C, H, W).

        The transposing copy is done per image in numpy, flip folded in: as fast as torch's batched ops and,
        being single-threaded, immune to the collapse of torch's thread pool on a busy CPU.
        """
        rows = np.take(self.images, idx, axis=0)  # (B, H, W, C), one read from the memmap
        b, h, w, c = rows.shape
        batch = torch.empty((b, c, h, w), dtype=torch.uint8, pin_memory=self.pin_memory)
        out = batch.numpy()
        for r, mirrored in enumerate(flip.tolist()):
            out[r] = (rows[r, :, ::-1] if mirrored else rows[r]).transpose(2, 0, 1)  # (H, W, C) → (C, H, W)
        return batch
