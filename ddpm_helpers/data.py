"""Finding CelebA, preprocessing it, caching it as a uint8 array, and batching it.

Data flows one way: JPEG files → ``find_celeba`` / ``list_images`` → ``load_image`` (crop + antialiased
resize, uint8) → ``build_cache`` (one memory-mapped ``.npy`` of shape (N, H, W, C), decoded once) →
``BatchIterator`` (deterministic, resumable uint8 batches (B, C, H, W), random horizontal flips) →
``to_model_range`` (float32 in [-1, 1] on the training device).

``prepare_images(cfg)`` is the one-call entry point. When CelebA is absent it falls back to
``offline_faces()``: 100 real LFW faces shipped inside scikit-image, so the project trains with no download.

Crops are defined in the coordinates of a full-size aligned CelebA image (178 wide × 218 high) and
scaled in proportion for other sizes, e.g. the 89×109 half-size copy. ``ddim_128`` follows
ermongroup/ddim (rows 57–184, cols 25–152); ``center_140`` follows NCSN / score-SDE.
torchvision's ``CelebA(download=True)`` is never called: its Google Drive download fails often.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

try:
    import fcntl  # POSIX file locks, so concurrent builders (DDP ranks) of one cache take turns
except ImportError:  # Windows: no lock; let one process build first
    fcntl = None

import numpy as np
import torch
from PIL import Image

from .config import DataConfig
from .errors import DDPMError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = {"train": 0, "valid": 1, "test": 2, "all": None}
PARTITION_NAMES = ("list_eval_partition.csv", "list_eval_partition.txt")
FIRST_IMAGE = "000001.jpg"
KAGGLE_DATASET = "jessicali9530/celeba-dataset"
CACHE_FORMAT_VERSION = 1
MIN_IMAGE_SIZE = 8

# Reference frame of an aligned CelebA image, and the crop boxes in it: (left, top, width, height).
FULL_WIDTH, FULL_HEIGHT = 178, 218
CROPS = {
    "ddim_128": (25, 57, 128, 128),     # rows 57–184, cols 25–152 (ermongroup/ddim)
    "center_140": (19, 39, 140, 140),   # rows 39–178, cols 19–158 (NCSN, NCSNv2, score-SDE)
    "center_178": (0, 20, 178, 178),    # rows 20–197, the full width
}

HOW_TO_GET_CELEBA = (
    "How to get CelebA (aligned and cropped, 178×218 JPEGs):\n"
    f"  • In a Kaggle notebook: 'Add Input' → search '{KAGGLE_DATASET}' → Add; it is then found under "
    "/kaggle/input automatically.\n"
    f"  • Elsewhere: pip install kaggle, put your API token in ~/.kaggle/kaggle.json, then\n"
    f"      kaggle datasets download -d {KAGGLE_DATASET} -p data/ --unzip\n"
    "    (about 1.4 GB; ./data is searched by default).\n"
    "  • Or point to a copy you already have: set the environment variable CELEBA_DIR=/path/to/celeba or "
    "DataConfig(root=...). Accepted layouts: Kaggle (img_align_celeba/img_align_celeba/ + "
    "list_eval_partition.csv), torchvision (celeba/img_align_celeba/ + list_eval_partition.txt), "
    "or any folder of JPEG/PNG images."
)


class DataNotFoundError(DDPMError, FileNotFoundError):
    """CelebA (or another image folder) was not where we looked; the message lists the places and the fix."""


class CacheError(DDPMError, ValueError):
    """A cache file is missing its metadata, truncated, corrupt, built with other settings, or undecodable."""


@dataclass(frozen=True)
class CelebALocation:
    """Where the images are: the folder holding the JPEGs and, if any, the train/valid/test partition file."""

    image_dir: Path
    partition_file: Optional[Path]
    layout: str  # "kaggle" | "torchvision" | "folder"


# ---------------------------------------------------------------------------------------------
# Finding CelebA
# ---------------------------------------------------------------------------------------------
def _has_images(folder: Path) -> bool:
    """Whether a folder directly holds at least one JPEG/PNG file (stops at the first one)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file() for e in entries)
    except OSError:
        return False


def _find_partition_file(image_dir: Path, root: Path) -> Optional[Path]:
    """The list_eval_partition .csv/.txt next to the images: in root, root/celeba, or above img_align_celeba/."""
    places = [root, root / "celeba"]
    if image_dir.name == "img_align_celeba":
        places += [image_dir.parent, image_dir.parent.parent]
    for folder in dict.fromkeys(places):  # ordered, unique
        for name in PARTITION_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _layout_name(image_dir: Path, partition_file: Optional[Path]) -> str:
    """Name the layout: 'kaggle' (CSV, nested folder), 'torchvision' (.txt, celeba/ folder) or 'folder'."""
    if partition_file is not None:
        return "kaggle" if partition_file.suffix == ".csv" else "torchvision"
    if image_dir.name == "img_align_celeba" and image_dir.parent.name == "img_align_celeba":
        return "kaggle"
    if image_dir.name == "img_align_celeba" and image_dir.parent.name == "celeba":
        return "torchvision"
    return "folder"


def _locate_in(root: Path) -> tuple[Optional[CelebALocation], str]:
    """Look for CelebA inside one folder; return (location, "") or (None, why it is not there)."""
    if not root.exists():
        return None, "does not exist"
    if not root.is_dir():
        return None, "is not a folder"
    candidates = [root / "img_align_celeba" / "img_align_celeba",  # Kaggle
                  root / "celeba" / "img_align_celeba",            # torchvision
                  root / "img_align_celeba",                       # torchvision base folder, or unnested
                  root]                                            # any folder of images
    for image_dir in candidates:
        if image_dir.is_dir() and _has_images(image_dir):
            partition = _find_partition_file(image_dir, root)
            return CelebALocation(image_dir, partition, _layout_name(image_dir, partition)), ""
    zips = sorted(p.name for p in root.glob("*.zip"))
    hint = f" (found {', '.join(zips)}: unzip it first)" if zips else ""
    return None, ("exists but holds no JPEG/PNG images, nor an img_align_celeba/ or celeba/ folder with some"
                  + hint)


def _search_tree(top: Path, max_depth: int = 7) -> list[Path]:
    """Folders under top holding a partition file, then those holding 000001.jpg (shallowest first); a bounded rglob."""
    found: list[tuple[int, int, str]] = []
    top_depth = len(top.parts)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        depth = len(Path(dirpath).parts) - top_depth
        dirnames[:] = sorted(dirnames) if depth < max_depth else []
        names = set(filenames)
        if any(n in names for n in PARTITION_NAMES):
            found.append((0, depth, dirpath))  # a partition file beats a bare image folder
        if FIRST_IMAGE in names:
            found.append((1, depth, dirpath))
    return [Path(d) for _, _, d in sorted(found)]


def _search_kaggle_input(kaggle_input: Path) -> tuple[Optional[CelebALocation], str]:
    """Search a Kaggle input tree (both /kaggle/input/<slug>/ and /kaggle/input/datasets/<owner>/<slug>/)."""
    if not kaggle_input.is_dir():
        return None, "does not exist (not on Kaggle, or no dataset attached)"
    for folder in _search_tree(kaggle_input):
        location, _ = _locate_in(folder)  # an image folder itself finds its partition file two levels up
        if location is not None:
            return location, ""
    return None, f"searched recursively for {' / '.join(PARTITION_NAMES)} or a folder holding {FIRST_IMAGE}: none"


def _not_found(looked: list[str], headline: str = "CelebA images were not found.") -> DataNotFoundError:
    """Build the error that lists every place searched and how to get the data."""
    places = "\n".join(f"  - {entry}" for entry in looked)
    return DataNotFoundError(f"{headline}\nPlaces searched, in order:\n{places}\n{HOW_TO_GET_CELEBA}")


def _explicit_root(root: Optional[PathLike]) -> tuple[Optional[Path], str]:
    """The path the user asked for, from the argument or else $CELEBA_DIR, with a label saying which."""
    if root is not None and str(root) != "":
        return Path(root).expanduser(), "argument root"
    env = os.environ.get("CELEBA_DIR", "")
    if env:
        return Path(env).expanduser(), "$CELEBA_DIR"
    return None, ""


def find_celeba(root: Optional[PathLike] = None, kaggle_input: PathLike = "/kaggle/input") -> CelebALocation:
    """Find CelebA: the explicit root (or $CELEBA_DIR), else a search of kaggle_input, else ./data/celeba, ./data.

    An explicit path is final: if it holds no images, the search stops there with a DataNotFoundError.
    Accepts the Kaggle, torchvision and plain-folder layouts. Never downloads anything.
    """
    explicit, label = _explicit_root(root)
    if explicit is not None:
        location, why = _locate_in(explicit)
        if location is None:
            raise _not_found([f"{explicit} ({label}): {why}"])
        return location
    looked = ["argument root: not given", "$CELEBA_DIR: not set"]
    location, why = _search_kaggle_input(Path(kaggle_input))
    if location is not None:
        return location
    looked.append(f"{kaggle_input} (Kaggle inputs): {why}")
    for relative in ("data/celeba", "data"):
        folder = Path.cwd() / relative
        location, why = _locate_in(folder)
        if location is not None:
            return location
        looked.append(f"./{relative} = {folder}: {why}")
    raise _not_found(looked)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def _check_split(split: str) -> Optional[int]:
    """Partition code of a split name: train → 0, valid → 1, test → 2, all → None."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    return SPLITS[split]


def read_partition(partition_file: PathLike) -> dict[str, int]:
    """Read list_eval_partition (.csv 'image_id,partition' or .txt '000001.jpg 0') into {image_id: 0|1|2}."""
    partition: dict[str, int] = {}
    with open(partition_file, encoding="utf-8-sig") as f:
        for line in f:
            parts = re.split(r"[,\s]+", line.strip())
            if len(parts) >= 2 and parts[1].lstrip("-").isdigit():  # skips the header and blank lines
                partition[parts[0]] = int(parts[1])
    return partition


def _image_names(folder: Path) -> list[str]:
    """Sorted names of the JPEG/PNG files directly inside a folder."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())


def list_images(location: CelebALocation, split: str = "train") -> list[Path]:
    """List the images of a split, sorted by file name.

    Uses the partition file when there is one; without it, every image is used (a warning is logged
    if a split other than 'all' was asked for). Ids in the partition file with no image file are skipped
    with a warning.
    """
    code = _check_split(split)
    names = _image_names(location.image_dir)
    if code is None:
        return [location.image_dir / n for n in names]
    if location.partition_file is None:
        logger.warning("no list_eval_partition file next to %s: using all %d images for split %r",
                       location.image_dir, len(names), split)
        return [location.image_dir / n for n in names]
    partition = read_partition(location.partition_file)
    wanted = sorted(name for name, c in partition.items() if c == code)
    present = set(names)
    missing = [n for n in wanted if n not in present]
    if missing:
        logger.warning("%d of the %d %s images listed in %s are missing from %s (e.g. %s)", len(missing),
                       len(wanted), split, location.partition_file, location.image_dir, missing[0])
    return [location.image_dir / n for n in wanted if n in present]


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------
def _check_settings(crop: str, image_size: int, channels: int) -> None:
    """Raise ValueError for an unknown crop, an image size below 8 or a channel count other than 1 or 3."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose from {sorted(CROPS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE} (e.g. 16, 32, 64, 128), "
                         f"got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")


def crop_box(crop: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop box (left, top, right, bottom) for an image of this size; PIL convention, right/bottom exclusive.

    Boxes are defined on a 178×218 image. For another size the 178×218 frame is scaled by
    s = min(width / 178, height / 218) and centred, so a square box stays square; for CelebA's aspect
    ratio this is plain proportional scaling (89×109 → ddim_128 box (12, 28, 76, 92)).
    """
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose from {sorted(CROPS)}")
    left, top, box_w, box_h = CROPS[crop]
    s = min(width / FULL_WIDTH, height / FULL_HEIGHT)
    offset_x, offset_y = (width - FULL_WIDTH * s) / 2, (height - FULL_HEIGHT * s) / 2
    w, h = min(width, max(1, round(box_w * s))), min(height, max(1, round(box_h * s)))
    x0 = min(max(0, math.floor(offset_x + left * s + 1e-6)), width - w)
    y0 = min(max(0, math.floor(offset_y + top * s + 1e-6)), height - h)
    return x0, y0, x0 + w, y0 + h


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (L, LA, RGBA, CMYK, P, I;16, ...) to 'RGB' (channels=3) or 'L' (channels=1)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = Image.fromarray(_scale_to_uint8(np.asarray(img)))
    return img.convert("L" if channels == 1 else "RGB")


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Map a 16-bit / 32-bit / float image onto 0..255 (uint8) by its dtype range."""
    top = 65535.0 if a.max(initial=0) > 255 else 255.0
    return np.clip(np.round(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def load_image(path: PathLike, crop: str = "ddim_128", image_size: int = 64, channels: int = 3) -> np.ndarray:
    """Decode one image, crop it by name, resize it (antialiased bilinear) and return uint8.

    Returns (image_size, image_size, channels) uint8. Raises (OSError, SyntaxError, ValueError, ...)
    on a corrupt or truncated file; the cache builder catches and counts those.
    """
    _check_settings(crop, image_size, channels)
    with Image.open(path) as img:
        img.load()  # decode fully now: a truncated file raises here, not later
        img = img.crop(crop_box(crop, *img.size))
    img = _to_mode(img, channels)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
    array = np.array(img, dtype=np.uint8)  # a writable copy
    return array[:, :, None] if array.ndim == 2 else array


# ---------------------------------------------------------------------------------------------
# The cache: one uint8 .npy (N, H, W, C), memory-mapped, with a JSON record written last
# ---------------------------------------------------------------------------------------------
def _cache_files(cache_path: Path) -> dict[str, Path]:
    """The files of a cache: the array, its metadata, their temporary twins, and the compaction scratch file."""
    stem = cache_path.name[: -len(".npy")]
    return {"npy": cache_path, "json": cache_path.with_name(stem + ".json"),
            "tmp_npy": cache_path.with_name(stem + ".tmp.npy"), "tmp_json": cache_path.with_name(stem + ".tmp.json"),
            "tmp2_npy": cache_path.with_name(stem + ".tmp2.npy"), "lock": cache_path.with_name(stem + ".lock")}


def _normalise_cache_path(cache_path: PathLike) -> Path:
    """The cache path with a '.npy' suffix."""
    path = Path(cache_path).expanduser()
    return path if path.name.endswith(".npy") else path.with_name(path.name + ".npy")


def files_fingerprint(paths: Sequence[PathLike]) -> str:
    """SHA-1 of the ordered absolute paths: tells whether a cache was built from this exact list."""
    digest = hashlib.sha1()
    for p in paths:
        digest.update(os.path.abspath(os.fspath(p)).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def _decode_chunk(job: tuple[list[str], str, int, int]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode a chunk of paths (runs in a worker); return the good images (k, H, W, C) and the failures."""
    paths, crop, image_size, channels = job
    good, failed = [], []
    for p in paths:
        try:
            good.append(load_image(p, crop, image_size, channels))
        except Exception as exc:  # corrupt / truncated / unreadable: counted, never fatal
            failed.append((p, f"{type(exc).__name__}: {exc}"))
    shape = (len(good), image_size, image_size, channels)
    return (np.stack(good) if good else np.empty(shape, np.uint8)), failed


def _fsync(path: Path) -> None:
    """Flush a file (and best effort, its folder) to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not supported on this platform / file system


def _remove(*paths: Path) -> None:
    """Delete files that may not exist."""
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _decode_all(paths: list[str], out: np.ndarray, crop: str, image_size: int, channels: int,
                workers: int, progress: bool, desc: str) -> tuple[int, list[tuple[str, str]]]:
    """Decode paths into out (N, H, W, C) in order, packing good images at the front; return (count, failures)."""
    from tqdm.auto import tqdm

    chunk = max(1, min(256, math.ceil(len(paths) / (workers * 4))))
    jobs = [(paths[i:i + chunk], crop, image_size, channels) for i in range(0, len(paths), chunk)]
    written, failures = 0, []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        if workers <= 1 or len(jobs) == 1:
            results = map(_decode_chunk, jobs)
            executor = None
        else:
            context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
            executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
            results = executor.map(_decode_chunk, jobs)
        try:
            for images, failed in results:
                out[written:written + len(images)] = images
                written += len(images)
                failures += failed
                bar.update(len(images) + len(failed))
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
    return written, failures


def _compact(tmp_npy: Path, packed_path: Path, count: int) -> None:
    """Shrink a .npy to its first count rows (when some images were skipped), by copying through packed_path."""
    full = np.load(tmp_npy, mmap_mode="r")
    packed = np.lib.format.open_memmap(packed_path, mode="w+", dtype=np.uint8, shape=(count,) + full.shape[1:])
    for i in range(0, count, 4096):
        packed[i:i + 4096] = full[i:min(count, i + 4096)]
    packed.flush()
    del packed, full
    os.replace(packed_path, tmp_npy)


def _write_json(path: Path, record: dict) -> None:
    """Write a JSON file and flush it to disk."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    _fsync(path)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on lock_path (blocking) while the body runs; a no-op where fcntl is missing."""
    if fcntl is None:
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _reusable(files: dict[str, Path], wanted: dict) -> tuple[bool, str]:
    """Whether an existing cache is valid and was built with the wanted settings; else why not."""
    if not files["npy"].exists() and not files["json"].exists():
        return False, ""
    try:
        load_cache(files["npy"], expect=wanted)
        return True, ""
    except CacheError as exc:
        return False, str(exc)


def build_cache(paths: Sequence[PathLike], cache_path: PathLike, crop: str, image_size: int, channels: int = 3,
                source: str = "", split: str = "", workers: Optional[int] = None, progress: bool = True,
                *, rebuild: bool = True) -> Path:
    """Decode, crop and resize every image once into a memory-mapped uint8 .npy (N, H, W, C); return its path.

    Reuses a valid cache built with the same settings and files. A truncated or corrupt cache, or one
    built with other settings, is rebuilt with a warning (rebuild=True) or refused with CacheError.
    Undecodable images are skipped, logged and listed in the metadata; if none decodes, CacheError.
    Crash-safe: the array is written to name.tmp.npy and renamed, and the JSON metadata, written last,
    is the commit marker. Concurrent builders of one cache (e.g. DDP ranks) take turns on a lock file
    (name.lock, POSIX only): the first builds, the others wait and then reuse its result.
    """
    _check_settings(crop, image_size, channels)
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataNotFoundError(f"no images to cache into {cache_path}")
    files = _cache_files(_normalise_cache_path(cache_path))
    wanted = {"crop": crop, "image_size": int(image_size), "channels": int(channels),
              "files_sha1": files_fingerprint(paths)}
    if _reusable(files, wanted)[0]:  # the common case, without touching the lock
        logger.info("reusing cache %s", files["npy"])
        return files["npy"]
    files["npy"].parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(files["lock"]):
        ok, why = _reusable(files, wanted)  # again: another process may have built it while we waited
        if ok:
            logger.info("reusing cache %s", files["npy"])
            return files["npy"]
        if why:
            if not rebuild:
                raise CacheError(f"{why}\nRebuild it with build_cache(..., rebuild=True) or delete {files['npy']}.")
            logger.warning("rebuilding cache: %s", why)
        failures = _write_cache(paths, files, wanted, source, split, workers, progress)
    if failures:
        logger.warning("skipped %d of %d images that could not be decoded (listed in %s), e.g. %s: %s",
                       len(failures), len(paths), files["json"], *failures[0])
    return files["npy"]


def _write_cache(paths: list[str], files: dict[str, Path], wanted: dict, source: str, split: str,
                 workers: Optional[int], progress: bool) -> list[tuple[str, str]]:
    """Decode everything into name.tmp.npy, rename it into place, then commit the metadata; return the failures."""
    crop, image_size, channels = wanted["crop"], wanted["image_size"], wanted["channels"]
    _remove(files["tmp_npy"], files["tmp_json"], files["tmp2_npy"])  # leftovers of a killed build are never trusted
    start = time.perf_counter()
    shape = (len(paths), image_size, image_size, channels)
    out = np.lib.format.open_memmap(files["tmp_npy"], mode="w+", dtype=np.uint8, shape=shape)
    try:
        count, failures = _decode_all(paths, out, crop, image_size, channels, workers or os.cpu_count() or 1,
                                      progress, desc=f"caching {files['npy'].name}")
        out.flush()
        del out
        if count == 0:
            examples = "\n".join(f"  {p}: {e}" for p, e in failures[:5])
            raise CacheError(f"none of the {len(paths)} images could be decoded, e.g.\n{examples}")
        if count < len(paths):
            _compact(files["tmp_npy"], files["tmp2_npy"], count)
        _fsync(files["tmp_npy"])
        _remove(files["json"])                       # un-commit any old cache before its array is replaced
        os.replace(files["tmp_npy"], files["npy"])
        record = {"format_version": CACHE_FORMAT_VERSION, "source": str(source), "split": str(split), **wanted,
                  "count": count, "requested": len(paths), "shape": [count, *shape[1:]], "dtype": "uint8",
                  "npy_bytes": files["npy"].stat().st_size,
                  "skipped": [{"path": p, "error": e} for p, e in failures],
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "build_seconds": round(time.perf_counter() - start, 2)}
        _write_json(files["tmp_json"], record)
        os.replace(files["tmp_json"], files["json"])  # the commit
    finally:
        _remove(files["tmp_npy"], files["tmp_json"], files["tmp2_npy"])
    return failures


def load_cache(cache_path: PathLike, expect: Optional[dict] = None) -> tuple[np.ndarray, dict]:
    """Open a committed cache read-only as a memmap uint8 (N, H, W, C) and return it with its metadata.

    Raises CacheError if the metadata is missing (e.g. a killed build), the file is truncated or its
    shape disagrees with the metadata, or a key of expect differs from the metadata.
    """
    files = _cache_files(_normalise_cache_path(cache_path))
    if not files["json"].is_file():
        extra = " (a temporary file from an interrupted build is present)" if files["tmp_npy"].exists() else ""
        raise CacheError(f"cache {files['npy']} has no metadata file {files['json'].name}: not committed{extra}")
    try:
        meta = json.loads(files["json"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheError(f"cache metadata {files['json']} is unreadable: {exc}") from exc
    problems = _cache_problems(files["npy"], meta)
    if not problems and expect:
        problems = [f"{k} is {meta.get(k)!r}, expected {v!r}" for k, v in expect.items() if meta.get(k) != v]
        problems = [f"cache {files['npy']} was built with other settings: " + "; ".join(problems)] if problems else []
    if problems:
        raise CacheError(problems[0])
    return np.load(files["npy"], mmap_mode="r"), meta


def _cache_problems(npy: Path, meta: dict) -> list[str]:
    """Reasons (possibly none) why an array file does not match its metadata record."""
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        return [f"cache {npy} has format version {meta.get('format_version')!r}, expected {CACHE_FORMAT_VERSION}"]
    if not npy.is_file():
        return [f"cache {npy} is missing (its metadata exists)"]
    size = npy.stat().st_size
    if size != meta.get("npy_bytes"):
        return [f"cache {npy} is truncated or corrupt: {size:,} bytes, metadata says {meta.get('npy_bytes'):,}"]
    try:
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return [f"cache {npy} is corrupt: {exc}"]
    expected = (meta.get("count"), meta.get("image_size"), meta.get("image_size"), meta.get("channels"))
    if array.shape != expected or array.dtype != np.uint8:
        return [f"cache {npy} holds {array.dtype} {array.shape}, metadata says uint8 {expected}"]
    return []


# ---------------------------------------------------------------------------------------------
# The offline default and the one-call entry point
# ---------------------------------------------------------------------------------------------
def offline_faces(image_size: int = 32, channels: int = 1) -> np.ndarray:
    """The 100 LFW faces bundled with scikit-image (no download), resized to image_size.

    Returns uint8 (100, image_size, image_size, channels); channels=3 replicates the gray channel.
    """
    _check_settings("ddim_128", image_size, channels)
    try:
        from skimage.data import lfw_subset
    except ImportError as exc:
        raise ImportError("offline_faces needs scikit-image: pip install scikit-image "
                          "(or this package's 'offline' extra)") from exc

    faces = np.round(lfw_subset()[:100] * 255.0).astype(np.uint8)  # (100, 25, 25), float in [0, 1] → uint8
    resized = np.stack([np.asarray(Image.fromarray(f).resize((image_size, image_size), Image.Resampling.BILINEAR))
                        for f in faces])  # (100, S, S)
    return np.repeat(resized[..., None], channels, axis=-1)


def default_cache_dir() -> Path:
    """Where caches go when DataConfig.cache_dir is None: /kaggle/working/cache on Kaggle, else ./cache."""
    on_kaggle = bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or Path("/kaggle/working").is_dir()
    return Path("/kaggle/working/cache") if on_kaggle else Path.cwd() / "cache"


def cache_name(split: str, crop: str, image_size: int, channels: int, count: Optional[int] = None) -> str:
    """The cache file name, which spells out the settings so caches of different settings coexist."""
    suffix = f"_n{count}" if count is not None else ""
    return f"celeba_{split}_{crop}_{image_size}px_c{channels}{suffix}.npy"


def prepare_images(cfg: DataConfig, kaggle_input: PathLike = "/kaggle/input",
                   progress: bool = True) -> tuple[np.ndarray, str]:
    """Find CelebA, build or reuse its cache, and return (uint8 (N, H, W, C) memmap, a one-line description).

    Without CelebA and with cfg.offline_fallback, returns offline_faces(cfg.image_size, cfg.channels)
    (100 images) instead. An explicit cfg.root or $CELEBA_DIR that holds no images always raises
    DataNotFoundError, so a typo never silently trains on the offline set.
    """
    _check_settings(cfg.crop, cfg.image_size, cfg.channels)
    _check_split(cfg.split)
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {cfg.max_images}")
    explicit, _ = _explicit_root(cfg.root)
    try:
        location = find_celeba(cfg.root, kaggle_input)
    except DataNotFoundError as exc:
        if explicit is not None or not cfg.offline_fallback:
            raise
        logger.warning("CelebA not found; training on the 100 offline LFW faces instead.\n%s", exc)
        faces = offline_faces(cfg.image_size, cfg.channels)
        return faces, (f"offline LFW faces (skimage.data.lfw_subset, 25×25 grayscale → {cfg.image_size} px, "
                       f"{cfg.channels} channel{'s' if cfg.channels > 1 else ''}), {len(faces)} images: a tiny "
                       "stand-in because CelebA was not found")
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
                             split=cfg.split, progress=progress)
    images, meta = load_cache(cache_path)
    skipped = f" ({len(meta['skipped'])} unreadable files skipped)" if meta["skipped"] else ""
    return images, (f"CelebA {cfg.split} ({cfg.crop} → {cfg.image_size} px), {len(images):,} images "
                    f"from {location.image_dir}{skipped}")


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
class BatchIterator:
    """Deterministic, resumable batches from a uint8 array, no JPEG decoding.

    Epoch e uses the permutation torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1_000_003 + e));
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
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
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


def to_model_range(batch_uint8: torch.Tensor, device: Optional[Union[str, torch.device]] = None,
                   channels_last: bool = False) -> torch.Tensor:
    """Move a uint8 batch to the device (non_blocking) and map it to float32 in [-1, 1]: x / 127.5 − 1.

    (B, C, H, W) uint8 → (B, C, H, W) float32; 0 → −1 and 255 → 1 exactly.
    """
    if batch_uint8.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch, got {batch_uint8.dtype}")
    x = batch_uint8.to(device, non_blocking=True) if device is not None else batch_uint8
    x = x.float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """Map model-range images back to uint8: clamp to [-1, 1], then round((x + 1) · 127.5). Shape unchanged."""
    return ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)
