"""FID and KID of generated images against the real images, through torchmetrics.

Features are extracted once per image set by one extractor (Inception-v3 by default, whose weights
torch-fidelity downloads on first use; or any ``nn.Module`` mapping uint8 (B, 3, H, W) to (B, d), such as
the offline stand-in :class:`SimpleFeatures`). The feature matrices then go through torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance`` (fed with an identity "extractor"), so the
math is the maintained library's, and the real features can be cached: they are computed once per
(reference set, image size, count, extractor) and read back on the next call.

Inputs: uint8 arrays or tensors (N, H, W, C) or (N, C, H, W) — e.g. ``data.prepare_images``'s memmap —,
float tensors in [−1, 1] (N, C, H, W) as ``generate`` returns them, or a folder of PNGs as
``generate.write_samples`` writes it. Gray images are repeated to 3 channels before extraction.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._types import PathLike
from .cache import default_cache_dir
from .config import DataConfig
from .data import prepare_images
from .errors import ConfigError, DDPMError
from .files import atomic_save
from .generate import read_samples_json, sample_files
from .images import DamagedImageError, from_model_range, read_png, to_model_range
from .runtime import default_device

Images = Union[np.ndarray, torch.Tensor, str, os.PathLike]

REFERENCE_FORMAT = "ddpm_helpers/reference/1"
INCEPTION_DIMS = 2048
DOWNLOAD_HELP = ("the Inception weights could not be downloaded (no internet?) — on Kaggle enable Internet in the "
                 "notebook settings; offline, pass a feature extractor (feature=SimpleFeatures() in Python, "
                 "--feature simple on the command line: numbers comparable only among themselves), or the weights "
                 "file (--inception-weights PATH, torch-fidelity's weights-inception-2015-12-05-6726825d.pth)")


# torch-fidelity's weights-inception-2015-12-05-6726825d.pth: torch-fidelity (and torch.hub) open it with a full
# unpickle, so a file passed as --inception-weights (or found in torch.hub's cache) is opened only when it is this one.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359


class MetricsUnavailable(DDPMError, RuntimeError):
    """The metrics cannot run here: the Inception weights (or torch-fidelity) are missing. The message says what to
    do."""


# ---------------------------------------------------------------------------------------------
# Feature extractors
# ---------------------------------------------------------------------------------------------
class SimpleFeatures(nn.Module):
    """A fixed, randomly initialised two-layer conv net with global average pooling: an offline stand-in for Inception.

    Deterministic for a given seed (weights drawn from its own generator, He-scaled). Its numbers are
    comparable only with each other, never with published FIDs. uint8 (B, 3, H, W) → (B, num_features) float32.
    """

    def __init__(self, num_features: int = 64, seed: int = 0, width: int = 32):
        super().__init__()
        self.num_features, self.seed = num_features, seed
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, num_features, 3, stride=2, padding=1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        self.requires_grad_(False)
        self.eval()

    @property
    def name(self) -> str:
        """The name under which reference features are cached."""
        return f"simple-{self.num_features}-seed{self.seed}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = to_model_range(x)                                # uint8 → [−1, 1], (B, 3, H, W)
        h = F.leaky_relu(self.conv1(h), 0.2)                 # (B, width, H/2, W/2)
        h = F.leaky_relu(self.conv2(h), 0.2)                 # (B, d, H/4, W/4)
        return h.mean(dim=(2, 3))                            # (B, d)


class InceptionFeatures(nn.Module):
    """The FID Inception-v3 (torchmetrics' NoTrainInceptionV3, TF-compatible weights via torch-fidelity), pool3
    features.

    uint8 (B, 3, H, W), any H and W (resized to 299 inside) → (B, 2048) float32.
    """

    def __init__(self, weights_path: Optional[PathLike] = None):
        super().__init__()
        self.num_features = INCEPTION_DIMS
        self.name = f"inception-v3-compat-{INCEPTION_DIMS}"
        self.net = _build_inception(weights_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _torchmetrics():
    """torchmetrics' FID and KID modules, or MetricsUnavailable saying how to install them."""
    try:
        from torchmetrics.image import fid, kid  # optional: torchmetrics, only for FID/KID
    except ImportError as e:
        raise MetricsUnavailable(f"torchmetrics is not installed ({e}): pip install torchmetrics torch-fidelity"
                                 ) from None
    return fid, kid


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def check_inception_weights(path: PathLike) -> Path:
    """Accept an Inception weights file only when it is torch-fidelity's (size, then SHA-256), before anything opens
    it: torch-fidelity unpickles it fully, and a file made by someone else could run code. MetricsUnavailable (one
    line naming the file) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MetricsUnavailable(f"no Inception weights file at {path}")
    size = path.stat().st_size
    if size != INCEPTION_BYTES or sha256_of(path) != INCEPTION_SHA256:
        raise MetricsUnavailable(f"--inception-weights {path} is not torch-fidelity's Inception weights "
                                 f"({INCEPTION_FILE}: its SHA-256 differs; {size:,} bytes): not opened, since "
                                 "torch-fidelity unpickles it and a foreign file could run code; download the "
                                 "original, or use --feature simple")
    return path


def _build_inception(weights_path: Optional[PathLike]) -> nn.Module:
    """torchmetrics' NoTrainInceptionV3, with every way it can fail to appear turned into MetricsUnavailable.

    A weights file given, or already in torch.hub's cache, is checked against INCEPTION_SHA256 first."""
    if weights_path is not None:
        check_inception_weights(weights_path)
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if cached.is_file():
            try:
                check_inception_weights(cached)
            except MetricsUnavailable:
                raise MetricsUnavailable(f"{cached} (torch.hub's cache) is not torch-fidelity's Inception weights "
                                         "(its SHA-256 differs): it is not opened; delete it and run again to "
                                         "download the original") from None
    tm_fid, _ = _torchmetrics()
    try:
        return tm_fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_DIMS)],
                                         feature_extractor_weights_path=(None if weights_path is None
                                                                         else str(weights_path)))
    except ImportError as e:   # ModuleNotFoundError: torch-fidelity missing
        raise MetricsUnavailable(f"torch-fidelity is not installed ({e}): pip install torch-fidelity") from None
    except Exception as e:
        if weights_path is not None:   # a given file that is not the weights: unpickling errors, missing keys, ...
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise MetricsUnavailable(f"{weights_path} is not torch-fidelity's Inception weights ({type(e).__name__}: "
                                     f"{first_line[:200]}); pass weights-inception-2015-12-05-6726825d.pth, or use "
                                     "--feature simple offline") from None
        if isinstance(e, (OSError, RuntimeError)):
            raise _download_failure(e) from None
        raise


def _download_failure(e: Exception) -> MetricsUnavailable:
    """What to do when the Inception weights could not be fetched (OSError) or read (RuntimeError)."""
    if isinstance(e, OSError):       # URLError, HTTPError, ConnectionError, socket timeouts
        return MetricsUnavailable(f"{DOWNLOAD_HELP}. Cause: {type(e).__name__}: {e}")
    return MetricsUnavailable(f"the Inception weights could not be read ({e}); delete the partial file under "   # a
                              f"{Path(torch.hub.get_dir()) / 'checkpoints'} and try again")   # truncated download


def build_extractor(feature: Union[str, nn.Module] = "inception",
                    inception_weights: Optional[PathLike] = None) -> nn.Module:
    """"inception" (downloads weights; MetricsUnavailable when it cannot), "simple" (SimpleFeatures()) or a module
    as is."""
    if isinstance(feature, nn.Module):
        return feature
    if feature == "inception":
        return InceptionFeatures(inception_weights)
    if feature == "simple":
        return SimpleFeatures()
    raise ValueError(f"unknown feature extractor {feature!r}; use 'inception', 'simple' or an nn.Module")


def extractor_name(extractor: nn.Module) -> str:
    """The extractor's ``name`` attribute, else its class name (give custom extractors a distinctive name)."""
    name = getattr(extractor, "name", None)
    return name if isinstance(name, str) and name else type(extractor).__name__


class PrecomputedFeatures(nn.Module):
    """An identity "extractor" that lets torchmetrics' FID/KID take feature matrices (N, d) → (N, d)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


# ---------------------------------------------------------------------------------------------
# Image sources: arrays, tensors, folders of PNGs → uint8 (B, C, H, W) batches
# ---------------------------------------------------------------------------------------------
class ImageSource:
    """N images readable in batches as uint8 (B, C, H, W), from an array/tensor or a folder of PNGs."""

    def __init__(self, images: Images, limit: Optional[int] = None):
        self.files, self.array, self.channels_last, self.float_range = None, None, False, False
        if isinstance(images, (str, os.PathLike)):
            self._init_folder(Path(images))
        else:
            self._init_array(images)
        total = len(self.files) if self.files is not None else int(self.array.shape[0])
        self.n = total if limit is None else min(int(limit), total)
        self.shape = tuple(int(s) for s in self.take([0]).shape[1:]) if self.n else (0, 0, 0)   # (C, H, W)

    def _init_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"no image folder at {folder}")
        pngs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
        self.files = sample_files(folder) or pngs       # write_samples' numbered PNGs, else any PNGs
        if not self.files:
            raise FileNotFoundError(f"no PNG images in {folder}")

    def _init_array(self, images) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be 4-D (N, C, H, W) or (N, H, W, C), got shape {tuple(images.shape)}")
        c_first, c_last = images.shape[1] in (1, 3), images.shape[-1] in (1, 3)
        if not (c_first or c_last):
            raise ValueError(f"cannot find a channel axis of size 1 or 3 in shape {tuple(images.shape)}")
        self.channels_last = c_last                           # (N, H, W, C) unless only axis 1 fits
        is_uint8 = images.dtype in (np.uint8, torch.uint8)
        if not is_uint8:
            lo, hi = float(images.min()), float(images.max())
            if lo < -1.001 or hi > 1.001:
                raise ValueError(f"float images must be in the model range [-1, 1], got [{lo:.3g}, {hi:.3g}]")
            self.float_range = True
        self.array = images

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """The images at ``indices`` as uint8 (B, C, H, W) on the CPU (alpha channels dropped)."""
        if self.files is not None:
            batch = torch.stack([self._read(self.files[i]) for i in indices])
        else:
            rows = self.array[list(indices)] if isinstance(self.array, torch.Tensor) else \
                np.take(self.array, list(indices), axis=0)
            batch = torch.as_tensor(np.asarray(rows)) if not isinstance(rows, torch.Tensor) else rows.detach().cpu()
            if self.channels_last:
                batch = batch.permute(0, 3, 1, 2)              # (B, H, W, C) → (B, C, H, W)
            if self.float_range:
                batch = from_model_range(batch)                # [−1, 1] → uint8
        return batch[:, :3].contiguous()

    def _read(self, path: Path) -> torch.Tensor:
        """One file as uint8 (C, H, W); DamagedImageError naming it when it cannot be decoded or has another
        size than the set's first image."""
        image = read_png(path)
        shape = getattr(self, "shape", None)
        if shape is not None and tuple(image.shape) != tuple(shape):
            raise DamagedImageError(f"{path} is {_shape_text(image.shape)} but the first image of {path.parent} is "
                                    f"{_shape_text(shape)}: remove it, or run the same `sample` command again "
                                    "(damaged files are redone)")
        return image

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive uint8 batches (B, C, H, W) covering images 0 … n−1."""
        for lo in range(0, self.n, batch_size):
            yield self.take(range(lo, min(lo + batch_size, self.n)))

    def fingerprint(self, probes: int = 16) -> str:
        """SHA-256 (shortened) of the count, shape and ``probes`` evenly spaced images: tells image sets apart
        cheaply."""
        h = hashlib.sha256(f"{self.n}:{self.shape}".encode())
        idx = sorted(set(np.linspace(0, self.n - 1, min(probes, self.n)).round().astype(int).tolist()))
        h.update(self.take(idx).numpy().tobytes())
        return h.hexdigest()[:16]


def as_image_source(images: Union[Images, ImageSource], limit: Optional[int] = None) -> ImageSource:
    """Wrap an array, tensor or folder (or pass an ImageSource through)."""
    return images if isinstance(images, ImageSource) else ImageSource(images, limit)


@torch.no_grad()
def extract_features(images: Union[Images, ImageSource], extractor: nn.Module, batch_size: int = 64, device=None,
                     progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Run the extractor over every image (gray repeated to RGB). Returns (N, d) float32 on the CPU."""
    source = as_image_source(images)
    device = torch.device(device) if device is not None else torch.device("cpu")
    extractor = extractor.to(device).eval()
    out = []
    for batch in tqdm(source.batches(batch_size), total=math.ceil(source.n / batch_size), desc=desc,
                      disable=not progress, leave=False):
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)                 # gray → (B, 3, H, W)
        out.append(extractor(batch.to(device)).float().reshape(batch.shape[0], -1).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Reference features, computed once and cached
# ---------------------------------------------------------------------------------------------
def reference_key(source: ImageSource, extractor: nn.Module, reference: str = "") -> Dict[str, Any]:
    """What identifies a set of reference features: the description (data set, crop), size, count, extractor,
    content."""
    return {"reference": reference, "shape": list(source.shape), "n": source.n,
            "extractor": extractor_name(extractor), "fingerprint": source.fingerprint()}


def reference_cache_path(cache: PathLike, key: Dict[str, Any]) -> Path:
    """A ``.pt`` path is used as is; any other path is a folder, holding one file per key."""
    cache = Path(cache)
    if cache.suffix == ".pt":
        return cache
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key["extractor"])
    return cache / f"reference_{safe}_{key['shape'][-1]}px_n{key['n']}_{digest}.pt"


def reference_features(real: Union[Images, ImageSource], extractor: nn.Module, cache: Optional[PathLike] = None,
                       reference: str = "", batch_size: int = 64, device=None, progress: bool = False) -> torch.Tensor:
    """The real images' features (N, d) float32, read from ``cache`` when it holds this key, else computed and
    cached."""
    source = as_image_source(real)
    if cache is None:
        return extract_features(source, extractor, batch_size, device, progress, desc="reference features")
    key = reference_key(source, extractor, reference)
    path = reference_cache_path(cache, key)
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or foreign file: recompute
            stored = {"error": f"{type(e).__name__}: {e}"}
        if isinstance(stored, dict) and stored.get("format") == REFERENCE_FORMAT and stored.get("key") == key:
            return stored["features"]
        warnings.warn(f"{path} holds reference features for other settings (or is unreadable); recomputing and "
                      "overwriting it", stacklevel=2)
    features = extract_features(source, extractor, batch_size, device, progress, desc="reference features")
    atomic_save({"format": REFERENCE_FORMAT, "key": key, "features": features}, path)
    return features


# ---------------------------------------------------------------------------------------------
# The two metrics, through torchmetrics
# ---------------------------------------------------------------------------------------------
def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID (Heusel et al. 2017) by torchmetrics' FrechetInceptionDistance, on float64 features.

    FID = ‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^{1/2}).  real_features: (N_r, d); fake_features: (N_f, d).
    """
    metric = _torchmetrics()[0].FrechetInceptionDistance(feature=PrecomputedFeatures(real_features.shape[1]))
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.double(), real=False)
    return float(metric.compute())


def kernel_distance(real_features: torch.Tensor, fake_features: torch.Tensor, subset_size: int = 1000,
                    subsets: int = 100, seed: int = 0) -> Tuple[float, float]:
    """KID (Bińkowski et al. 2018) by torchmetrics' KernelInceptionDistance: mean and std over random subsets.

    KID = unbiased MMD² with k(x, y) = (xᵀy / d + 1)³, on ``subsets`` draws of ``subset_size`` features of
    each set (seeded). real_features: (N_r, d); fake_features: (N_f, d).
    """
    if subset_size < 2:      # the unbiased MMD² divides by m(m − 1): one image per subset gives NaN
        raise ConfigError(f"--kid-subset-size {subset_size}: KID's unbiased estimate needs subsets of at least 2 "
                          "images (default 1000; it is capped by the number of images)")
    KernelInceptionDistance = _torchmetrics()[1].KernelInceptionDistance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(real_features.shape[1]), subsets=subsets,
                                         subset_size=subset_size)
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@dataclass
class MetricResult:
    """FID and KID with everything needed to read them: sample counts, sampler, steps, reference set, extractor."""

    fid: float
    kid_mean: float
    kid_std: float
    n_fake: int
    n_real: int
    extractor: str
    sampler: str = ""
    steps: Optional[int] = None
    reference: str = ""
    kid_subset_size: int = 0
    kid_subsets: int = 0

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def _context(self) -> str:
        sampler = self.sampler or "sampler not given"
        steps = f"{self.steps} steps" if self.steps is not None else "steps not given"
        ref = self.reference or "reference set not described"
        return (f"{self.n_fake:,} samples ({sampler}, {steps}) vs {self.n_real:,} real images ({ref}); "
                f"features {self.extractor}")

    def __str__(self) -> str:
        ctx = self._context()
        return (f"FID {self.fid:.3f} — {ctx}\n"
                f"KID {self.kid_mean:.5f} ± {self.kid_std:.5f} — {ctx}; "
                f"{self.kid_subsets} subsets of {self.kid_subset_size:,}")


def compute_metrics(fake: Union[Images, ImageSource], real: Union[Images, ImageSource],
                    feature: Union[str, nn.Module] = "inception", kid_subset_size: int = 1000, kid_subsets: int = 100,
                    batch_size: int = 64, device=None, reference_cache: Optional[PathLike] = None,
                    reference: str = "", sampler: str = "", steps: Optional[int] = None, seed: int = 0,
                    inception_weights: Optional[PathLike] = None, progress: bool = False) -> MetricResult:
    """FID and KID of ``fake`` against ``real`` (same image size and channels), via torchmetrics.

    fake, real: uint8 (N, H, W, C) / (N, C, H, W), float (N, C, H, W) in [−1, 1], or a folder of PNGs.
    feature: "inception" (2048-d pool3; MetricsUnavailable where the weights cannot be fetched), "simple",
    or an nn.Module uint8 (B, 3, H, W) → (B, d). reference_cache: a .pt file or a folder; the real
    features are read from it when cached for this key. kid_subset_size is capped at the smaller set.
    reference / sampler / steps only label the result.
    """
    fake_src, real_src = as_image_source(fake), as_image_source(real)
    if tuple(fake_src.shape) != tuple(real_src.shape):                  # (C, H, W) of each set
        raise ConfigError(f"generated images are {_shape_text(fake_src.shape)} but the reference images are "
                          f"{_shape_text(real_src.shape)}: prepare the reference with the training crop, size and "
                          "channels (--crop, --image-size, --channels, or leave them to samples.json)")
    if min(fake_src.n, real_src.n) < 2:
        raise ConfigError(f"need at least 2 images on each side, got {fake_src.n} generated and {real_src.n} real "
                          "(--n-fake, --n-real)")
    extractor = build_extractor(feature, inception_weights)
    real_f = reference_features(real_src, extractor, reference_cache, reference, batch_size, device, progress)
    fake_f = extract_features(fake_src, extractor, batch_size, device, progress, desc="sample features")
    if min(fake_src.n, real_src.n) < real_f.shape[1]:
        warnings.warn(f"FID from {min(fake_src.n, real_src.n):,} images with {real_f.shape[1]}-d features is strongly "
                      "biased upwards (singular covariance); use at least 10,000 for numbers to compare with papers",
                      stacklevel=2)
    subset = min(kid_subset_size, fake_src.n, real_src.n)
    if kid_subset_size >= 2 > subset:
        raise ConfigError(f"KID needs at least 2 images in each set ({fake_src.n} samples, {real_src.n} real "
                          "images here): write more samples (sample --n) or use more real images (--n-real)")
    kid_mean, kid_std = kernel_distance(real_f, fake_f, subset, kid_subsets, seed)
    return MetricResult(fid=frechet_distance(real_f, fake_f), kid_mean=kid_mean, kid_std=kid_std, n_fake=fake_src.n,
                        n_real=real_src.n, extractor=extractor_name(extractor), sampler=sampler, steps=steps,
                        reference=reference, kid_subset_size=subset, kid_subsets=kid_subsets)


def _shape_text(shape: Sequence[int]) -> str:
    """(C, H, W) → '64×64 px, 3 channels'."""
    return f"{shape[2]}×{shape[1]} px, {shape[0]} channel{'s' if shape[0] != 1 else ''}"


# ---------------------------------------------------------------------------------------------
# A sample folder against its training data (the command line's `evaluate` is cli.run_evaluate)
# ---------------------------------------------------------------------------------------------
def reference_config(meta: Dict[str, Any], root: Optional[str] = None, split: str = "train",
                     crop: Optional[str] = None, image_size: Optional[int] = None, channels: Optional[int] = None,
                     n_real: int = 10_000, cache_dir: Optional[str] = None):
    """A DataConfig for the reference set: the arguments first, then the samples' training data settings
    (samples.json's ``meta``), then the defaults. Never the offline LFW faces: CelebA samples are scored against
    CelebA."""
    data = meta.get("data") or {}
    default = DataConfig()
    return DataConfig(root=root, split=split, crop=crop or data.get("crop") or default.crop,
                      image_size=image_size or meta.get("image_size") or default.image_size,
                      channels=channels or meta.get("channels") or default.channels,
                      cache_dir=cache_dir, max_images=n_real, offline_fallback=False)


def evaluate_sample_folder(samples: PathLike, reference, n_fake: Optional[int] = None, device=None,
                           **metric_kwargs) -> MetricResult:
    """FID and KID of a `sample --out-dir` folder against the reference DataConfig (see reference_config).

    The real images come from data.prepare_images (cached); their features are cached under the data cache
    (``reference_features/``). A folder holding fewer samples than its samples.json asks for is scored with a
    warning. metric_kwargs go to compute_metrics (feature, kid_subset_size, kid_subsets, batch_size, seed,
    inception_weights, progress).
    """
    meta = read_samples_json(samples) or {}
    fake = as_image_source(samples, limit=n_fake)
    if meta.get("n") and fake.n < min(meta["n"], n_fake or meta["n"]):
        warnings.warn(f"{samples} holds {fake.n} of the {meta['n']} samples its samples.json asks for (an "
                      "interrupted run? `sample` again with the same flags resumes it)", stacklevel=2)
    real, description = prepare_images(reference)
    device = default_device(device)
    cache = Path(reference.cache_dir).expanduser() if reference.cache_dir else default_cache_dir()
    return compute_metrics(fake, real, device=device, reference_cache=cache / "reference_features",
                           reference=description, sampler=_sampler_label(meta), steps=meta.get("steps"),
                           **metric_kwargs)


def _sampler_label(meta: Dict[str, Any]) -> str:
    """'DDIM η=0' / 'DDPM σ²=beta' / 'DPM-Solver++(2M) logsnr grid' from samples.json, '' when unknown."""
    sampler = meta.get("sampler")
    if sampler == "ddim":
        return f"DDIM η={meta.get('eta', 0):g}"
    if sampler == "ddpm":
        return f"DDPM σ²={meta.get('variance')}"
    if sampler in ("dpm++2m", "dpm++3m"):
        return f"DPM-Solver++({sampler[5:].upper()}) {meta.get('spacing')} grid"
    return ""
