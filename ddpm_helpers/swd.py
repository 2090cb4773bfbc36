"""A quality number that needs no download: sliced Wasserstein distance on Laplacian-pyramid patches.

Karras et al. 2018 ("Progressive Growing of GANs", sec. 5 and appendix D): build a Laplacian pyramid of every
image, draw 7×7 patches at random positions of each level (128 per image), normalise each set's patches per
channel, and compare the two sets of patch descriptors level by level with the sliced Wasserstein distance
(random unit directions, sorted projections, mean absolute difference). Small values at the finest level mean
the fine detail (edges, texture) is distributed like the real images'; at the coarsest, the large-scale layout
and colour. Reported like the paper: per level ×10³, and their mean.

Numbers depend on n (fewer images → a higher floor), so always report them beside the real-vs-real value at
the same n (two disjoint sets of real images): ``swd_report`` does both. No pretrained network is involved.
Inputs: anything ``evaluate.as_image_source`` reads — uint8 arrays (N, H, W, C) / (N, C, H, W), float tensors
in [−1, 1] (N, C, H, W), or a folder of PNGs.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .cache import build_cache, cache_name, load_cache, usable_cache_dir
from .celeba import find_celeba, list_images
from .checkpoint import CheckpointError, config_from_dict, load_checkpoint
from .data import OFFLINE_HELDOUT, offline_faces, prepare_images
from .errors import ConfigError
from .evaluate import as_image_source

logger = logging.getLogger(__name__)

PATCH_SIZE = 7              # the paper's 7×7 neighbourhoods
PATCHES_PER_IMAGE = 128     # descriptors drawn per image and level
DIR_REPEATS = 4             # the paper's 4 repeats …
DIRS_PER_REPEAT = 128       # … of 128 random directions
MAX_LEVELS = 4
MIN_LEVEL_SIZE = 8          # the coarsest level must hold a 7×7 patch
DEFAULT_N = 2000            # images per set for `evaluate` unless told: ~1 GB of descriptors at 64 px


# ---------------------------------------------------------------------------------------------
# Laplacian pyramid (matches cv2.pyrDown / pyrUp, as the paper's code does)
# ---------------------------------------------------------------------------------------------
def _binomial_kernel(channels: int, dtype=torch.float32) -> torch.Tensor:
    """The 5×5 binomial filter [1 4 6 4 1]ᵀ[1 4 6 4 1] / 256, one copy per channel: (C, 1, 5, 5)."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=dtype)
    k2 = torch.outer(k, k) / 256.0
    return k2.expand(channels, 1, 5, 5).contiguous()


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur with the binomial filter (mirrored borders) and keep every second pixel. (B, C, H, W) → (B, C, H/2, W/2)."""
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), _binomial_kernel(x.shape[1], x.dtype),
                       groups=x.shape[1])
    return blurred[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels and blur with 4 × the binomial filter. (B, C, H, W) → (B, C, 2H, 2W)."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), 4.0 * _binomial_kernel(c, x.dtype), groups=c)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> List[torch.Tensor]:
    """Levels L_0 … L_{levels−1}: L_k = G_k − up(G_{k+1}) for k < levels−1, the last one the Gaussian G_{levels−1}.

    G_0 = x, G_{k+1} = down(G_k). x: (B, C, H, W) float; level k is (B, C, H/2^k, W/2^k).
    """
    gaussians = [x]
    for _ in range(levels - 1):
        gaussians.append(pyr_down(gaussians[-1]))
    return [g - pyr_up(g_next) for g, g_next in zip(gaussians, gaussians[1:])] + [gaussians[-1]]


def pyramid_levels(image_size: int, max_levels: int = MAX_LEVELS, min_size: int = MIN_LEVEL_SIZE) -> int:
    """How many levels an image_size pyramid gets: halvings while the side stays ≥ min_size, at most max_levels."""
    if image_size < min_size:
        raise ValueError(f"SWD needs images of at least {min_size}×{min_size} px (a {PATCH_SIZE}×{PATCH_SIZE} patch "
                         f"at the coarsest level), got {image_size} px")
    levels, size = 0, image_size
    while size >= min_size and levels < max_levels:
        levels, size = levels + 1, size // 2
    return levels


# ---------------------------------------------------------------------------------------------
# Patch descriptors and the sliced Wasserstein distance
# ---------------------------------------------------------------------------------------------
def patch_descriptors(level: torch.Tensor, patches_per_image: int, generator: torch.Generator,
                      patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """patches_per_image random patch_size² neighbourhoods per image. (B, C, H, W) → (B·P, C, p, p)."""
    b, c, h, w = level.shape
    r = patch_size // 2
    m = b * patches_per_image
    img = torch.arange(b).repeat_interleave(patches_per_image)                       # (M,)
    y = torch.randint(r, h - r, (m,), generator=generator)                           # patch centres
    x = torch.randint(r, w - r, (m,), generator=generator)
    offsets = torch.arange(-r, r + 1)
    rows = (y[:, None] + offsets)[:, :, None]                                        # (M, p, 1)
    cols = (x[:, None] + offsets)[:, None, :]                                        # (M, 1, p)
    patches = level[img[:, None, None], :, rows, cols]                               # (M, p, p, C)
    return patches.permute(0, 3, 1, 2)                                               # (M, C, p, p)


def normalise_descriptors(desc: torch.Tensor) -> torch.Tensor:
    """Subtract each channel's mean and divide by its std over the whole set, then flatten. (M, C, p, p) → (M, C·p²)."""
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return desc.reshape(desc.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator, dir_repeats: int = DIR_REPEATS,
                       dirs_per_repeat: int = DIRS_PER_REPEAT) -> float:
    """SW₁(a, b) ≈ mean over random unit directions θ of W₁(θᵀa, θᵀb) = mean |sort(aθ) − sort(bθ)|.

    a, b: (M, D) descriptor sets of equal size M. Directions θ ~ N(0, I_D) normalised to unit length.
    """
    if a.shape != b.shape:
        raise ValueError(f"descriptor sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    results = []
    for _ in range(dir_repeats):
        dirs = torch.randn(dirs_per_repeat, a.shape[1], generator=generator, dtype=a.dtype)   # (K, D)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        proj_a = np.sort((dirs @ a.T).cpu().numpy(), axis=1)                                  # (K, M)
        proj_b = np.sort((dirs @ b.T).cpu().numpy(), axis=1)     # numpy's sort: 4-5× torch's on a CPU here
        results.append(float(np.abs(proj_a - proj_b).mean()))
    return float(np.mean(results))


# ---------------------------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SWDResult:
    """Per-level SWD ×10³ (finest level first, with its resolution) and their mean, with the set sizes."""

    per_level: Tuple[float, ...]
    resolutions: Tuple[int, ...]
    mean: float
    n: int
    seed: int

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready fields."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def levels_text(self) -> str:
        """'32 px 4.1, 16 px 3.2, 8 px 5.0'."""
        return ", ".join(f"{r} px {v:.2f}" for r, v in zip(self.resolutions, self.per_level))

    def __str__(self) -> str:
        return f"SWD×1e3 {self.mean:.2f} (per level: {self.levels_text()}; n = {self.n:,})"


def _descriptors(source, n: int, levels: int, patches_per_image: int, generator: torch.Generator,
                 batch_size: int) -> List[torch.Tensor]:
    """Normalised patch descriptors of the first n images of source, one (n·P, C·49) tensor per pyramid level."""
    source = as_image_source(source, limit=n)
    per_level: List[List[torch.Tensor]] = [[] for _ in range(levels)]
    for batch in source.batches(batch_size):                                         # uint8 (B, C, H, W)
        for k, level in enumerate(laplacian_pyramid(batch.float(), levels)):
            per_level[k].append(patch_descriptors(level, patches_per_image, generator))
    return [normalise_descriptors(torch.cat(d)) for d in per_level]


def _count_and_shape(images) -> Tuple[int, Tuple[int, int, int]]:
    """(N, (C, H, W)) of anything as_image_source reads."""
    source = as_image_source(images)
    return source.n, tuple(source.shape)


def swd(images_a, images_b, seed: int = 0, n: Optional[int] = None, levels: Optional[int] = None,
        patches_per_image: int = PATCHES_PER_IMAGE, dir_repeats: int = DIR_REPEATS,
        dirs_per_repeat: int = DIRS_PER_REPEAT, batch_size: int = 256) -> SWDResult:
    """Sliced Wasserstein distance ×10³ between two image sets, per Laplacian level and averaged (Karras et al. 2018).

    Uses the first n images of each set (default: as many as the smaller set has). levels: default
    pyramid_levels(H) (up to 4, coarsest side ≥ 8 px). Seeded: patch positions and directions come from
    torch.Generator().manual_seed(seed), so the same inputs and seed give the same number.
    """
    n_a, shape_a = _count_and_shape(images_a)
    n_b, shape_b = _count_and_shape(images_b)
    if shape_a != shape_b:
        raise ValueError(f"the two image sets differ in shape (C, H, W): {shape_a} vs {shape_b}")
    n = min(n_a, n_b) if n is None else int(n)
    if n < 2 or n > min(n_a, n_b):
        raise ValueError(f"need 2 ≤ n ≤ the smaller set's size; got n = {n} with sets of {n_a} and {n_b} images")
    levels = levels or pyramid_levels(shape_a[-1])
    g = torch.Generator().manual_seed(seed)
    desc_a = _descriptors(images_a, n, levels, patches_per_image, g, batch_size)
    desc_b = _descriptors(images_b, n, levels, patches_per_image, g, batch_size)
    per_level = tuple(1e3 * sliced_wasserstein(a, b, g, dir_repeats, dirs_per_repeat) for a, b in zip(desc_a, desc_b))
    resolutions = tuple(shape_a[-1] // 2 ** k for k in range(levels))
    return SWDResult(per_level=per_level, resolutions=resolutions, mean=float(np.mean(per_level)), n=n, seed=seed)


@dataclass(frozen=True)
class SWDReport:
    """SWD of samples against held-out real images, beside the real-vs-real value at the same n."""

    samples: SWDResult
    real_vs_real: SWDResult
    reference: str          # what the held-out set is
    comparison: str         # what the second real set is

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready fields."""
        return {"samples_vs_heldout": self.samples.as_dict(), "real_vs_real": self.real_vs_real.as_dict(),
                "reference": self.reference, "comparison": self.comparison}

    def __str__(self) -> str:
        return (f"SWD×1e3 samples vs held-out real: {self.samples.mean:.2f} "
                f"(per level: {self.samples.levels_text()})\n"
                f"SWD×1e3 real vs real (same n):    {self.real_vs_real.mean:.2f} "
                f"(per level: {self.real_vs_real.levels_text()})\n"
                f"  n = {self.samples.n:,} images per set; held-out: {self.reference}; second real set: "
                f"{self.comparison}. Lower is better; the real-vs-real value is the floor at this n.")

    def caption(self) -> str:
        """One sentence for a figure caption."""
        return (f"SWD×10³ (Karras et al. 2018, Laplacian levels {'/'.join(map(str, self.samples.resolutions))} px) "
                f"of {self.samples.n:,} samples against {self.samples.n:,} held-out real images: "
                f"{self.samples.mean:.2f}; two disjoint real sets of the same size: {self.real_vs_real.mean:.2f}")


def swd_report(samples, heldout, other_real, reference: str = "held-out real images",
               comparison: str = "other real images", seed: int = 0, n: Optional[int] = None, **kw) -> SWDReport:
    """SWD(samples, held-out) and SWD(other real, held-out) with the same n, seed and held-out images.

    other_real must not overlap heldout (e.g. the first n training images): their distance is what a
    generator that drew perfect new faces would score at this n. kw: passed to swd (patches, directions).
    """
    n = n or min(_count_and_shape(x)[0] for x in (samples, heldout, other_real))
    return SWDReport(samples=swd(samples, heldout, seed=seed, n=n, **kw),
                     real_vs_real=swd(other_real, heldout, seed=seed, n=n, **kw),
                     reference=reference, comparison=comparison)


# ---------------------------------------------------------------------------------------------
# Held-out real images of a run
# ---------------------------------------------------------------------------------------------
def offline_heldout(data_cfg, identity: Optional[Dict[str, Any]]) -> Tuple[np.ndarray, str]:
    """The offline LFW faces a run on them never trained on (data.OFFLINE_HELDOUT), at the run's size and channels.

    identity: the checkpoint's data_identity; a run made before the faces were split (it records no "heldout")
    trained on all 100, and errors.ConfigError says so.
    """
    if not (identity or {}).get("heldout"):
        raise ConfigError("the run trained on all 100 offline LFW faces (made before some were held out): no "
                          "held-out images to compare with; train a new run to get them")
    faces = offline_faces(data_cfg.image_size, data_cfg.channels, part="heldout")
    return faces, (f"the {OFFLINE_HELDOUT} held-out offline LFW faces (never trained on), {data_cfg.image_size} px, "
                   f"{data_cfg.channels} channel{'s' if data_cfg.channels > 1 else ''}")


def heldout_images(data_cfg, kaggle_input="/kaggle/input", progress: bool = False,
                   identity: Optional[Dict[str, Any]] = None) -> Tuple[np.ndarray, str]:
    """Real images a run with DataConfig data_cfg never trained on: uint8 (N, H, W, C) and a description.

    identity: the checkpoint's data_identity; a run on the offline faces gets their held-out part
    (offline_heldout). Else the valid split when a partition file gives one; else, for a run limited to the first
    max_images images of its split, the images of the split after them. Raises data.DataNotFoundError when CelebA
    is not found, and errors.ConfigError when the run used every image (nothing is held out).
    """
    if (identity or {}).get("kind") == "offline":
        return offline_heldout(data_cfg, identity)
    location = find_celeba(data_cfg.root, kaggle_input)
    split, paths, what = data_cfg.split, [], ""
    if location.partition_file is not None and data_cfg.split == "train":
        paths, split = list_images(location, "valid"), "valid"
        what = f"CelebA valid split ({len(paths):,} images)"
    if not paths and data_cfg.max_images is not None:
        split = data_cfg.split
        paths = list_images(location, split)[data_cfg.max_images:]
        what = (f"CelebA {split} images {data_cfg.max_images + 1:,}–{data_cfg.max_images + len(paths):,} "
                f"(the run trained on the first {data_cfg.max_images:,})")
    if not paths:
        raise ConfigError(f"the run trained on every image of {location.image_dir} (split {data_cfg.split!r}, no "
                         "max_images) and no valid split exists: no held-out images to compare with")
    tag = f"{split}_heldout_after{data_cfg.max_images}" if split == data_cfg.split else split
    name = cache_name(tag, data_cfg.crop, data_cfg.image_size, data_cfg.channels, len(paths))
    cache_dir = usable_cache_dir(data_cfg.cache_dir, name)          # never a folder under the read-only Kaggle inputs
    path = build_cache(paths, cache_dir / name, data_cfg.crop, data_cfg.image_size, data_cfg.channels,
                       source=str(location.image_dir), split=split, progress=progress)
    images, _ = load_cache(path)
    return images, f"{what} from {location.image_dir}, {data_cfg.crop} → {data_cfg.image_size} px"


# ---------------------------------------------------------------------------------------------
# For `evaluate`: a folder of samples against its run's held-out images
# ---------------------------------------------------------------------------------------------
def _run_data_config(meta: Dict[str, Any], root: Optional[str]):
    """(the training DataConfig, the data identity) of the checkpoint samples.json names (root replaced when
    given), else (None, None)."""
    path = meta.get("checkpoint")
    if not path or not Path(path).is_file():
        return None, None
    try:
        ckpt = load_checkpoint(path)
        cfg = config_from_dict(ckpt["config"]).data
    except (CheckpointError, OSError, KeyError) as e:
        logger.warning("cannot read the training data settings from %s: %s", path, e)
        return None, None
    return dataclasses.replace(cfg, root=root or cfg.root, offline_fallback=False), ckpt.get("data_identity")


def _first_training_images(run_cfg, identity: Optional[Dict[str, Any]], m: int) -> np.ndarray:
    """The run's first m training images (the offline faces' train part for an offline run)."""
    if (identity or {}).get("kind") == "offline":
        return offline_faces(run_cfg.image_size, run_cfg.channels, part="train")[:m]
    train, _ = prepare_images(dataclasses.replace(run_cfg, max_images=m), progress=False)
    return train


def swd_of_sample_folder(samples, meta: Dict[str, Any], reference_cfg, root: Optional[str] = None,
                         n: Optional[int] = None, seed: int = 0) -> SWDReport:
    """SWD of a `sample --out-dir` folder, beside real-vs-real at the same n.

    When samples.json names a checkpoint that is here, against that run's held-out images (heldout_images: for a
    run on the offline faces, their held-out 20), with its first training images as the second real set.
    Otherwise against the reference DataConfig's images (evaluate's --split/--n-real): its first n, and its next
    n as the second real set (labelled: these may be training images). n: default the number of samples up to
    DEFAULT_N, capped by the real images available.
    """
    n_fake = as_image_source(samples).n
    run_cfg, identity = _run_data_config(meta, root)
    why = "samples.json names no checkpoint here"
    if run_cfg is not None:
        try:
            heldout, held_desc = heldout_images(run_cfg, identity=identity)
        except ConfigError as e:                    # the run trained on every image: use the reference set
            why = str(e)
        else:
            m = min(n or DEFAULT_N, n_fake, len(heldout))
            train = _first_training_images(run_cfg, identity, m)
            m = min(m, len(train))
            return swd_report(samples, heldout, train, reference=held_desc,
                              comparison=f"the run's first {m:,} training images", seed=seed, n=m)
    real, desc = prepare_images(reference_cfg, progress=False)
    m = min(n or DEFAULT_N, n_fake, len(real) // 2)
    if m < 2:
        raise ConfigError(f"SWD needs at least 4 reference images (two sets of 2), got {len(real)}")
    return swd_report(samples, real[:m], real[m:2 * m], reference=f"images 1–{m:,} of {desc} (not known to be held "
                      f"out: {why})", comparison=f"images {m + 1:,}–{2 * m:,} of the same set", seed=seed, n=m)
