"""Finding CelebA on disk (Kaggle, torchvision or a plain folder layout) and listing the images of a split.

``find_celeba`` looks at an explicit root (or $CELEBA_DIR), then searches /kaggle/input, then ./data/celeba
and ./data; ``list_images`` applies the train/valid/test partition file. Nothing is ever downloaded:
torchvision's ``CelebA(download=True)`` is never called (its Google Drive download fails often).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ._types import PathLike
from .config import CROPS, FULL_HEIGHT, FULL_WIDTH, MIN_IMAGE_SIZE, SPLITS
from .errors import DDPMError
from .files import decode_text
from .images import check_pixels

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PARTITION_NAMES = ("list_eval_partition.csv", "list_eval_partition.txt")
FIRST_IMAGE = "000001.jpg"
KAGGLE_DATASET = "jessicali9530/celeba-dataset"

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



@dataclass(frozen=True)
class CelebALocation:
    """Where the images are: the folder holding the JPEGs and, if any, the train/valid/test partition file."""

    image_dir: Path
    partition_file: Optional[Path]
    layout: str  # "kaggle" | "torchvision" | "folder"



# ---------------------------------------------------------------------------------------------
# Finding CelebA
# ---------------------------------------------------------------------------------------------
def _is_image_file(entry: os.DirEntry, unreadable: Optional[list] = None) -> bool:
    """Whether a folder entry is a JPEG/PNG file; an entry that cannot be checked (a symlink loop: ELOOP, a
    dangling or forbidden link) is not, and is noted in unreadable as (name, reason)."""
    if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
        return False
    try:
        return entry.is_file()
    except OSError as exc:
        if unreadable is not None:
            unreadable.append((entry.name, exc.strerror or str(exc)))
        return False


def _has_images(folder: Path) -> bool:
    """Whether a folder directly holds at least one JPEG/PNG file (stops at the first one)."""
    try:
        with os.scandir(folder) as entries:
            return any(_is_image_file(e) for e in entries)
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
    for line in decode_text(Path(partition_file).read_bytes()).splitlines():   # UTF-16, Latin-1 bytes, NULs: no error
        parts = re.split(r"[,\s]+", line.strip())
        if len(parts) >= 2 and parts[1].lstrip("-").isdigit():  # skips the header and blank lines
            partition[parts[0]] = int(parts[1])
    return partition


def _image_names(folder: Path) -> list[str]:
    """Sorted names of the JPEG/PNG files directly inside a folder; entries that cannot be read (symlink
    loops, dangling links) are skipped with a warning. A folder that cannot be listed: DataNotFoundError."""
    unreadable: list[tuple[str, str]] = []
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if _is_image_file(e, unreadable))
    except OSError as exc:
        raise DataNotFoundError(f"cannot list the image folder {folder}: {exc.strerror or exc}") from exc
    if unreadable:
        logger.warning("skipped %d entries of %s that cannot be read, e.g. %s: %s", len(unreadable), folder,
                       *unreadable[0])
    return names


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
# Decoding and cropping one image (the cache decodes every image with load_image)
# ---------------------------------------------------------------------------------------------
def check_settings(crop: str, image_size: int, channels: int) -> None:
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


class ImageTooSmallError(DDPMError, ValueError):
    """An image whose crop is smaller than the requested size: it would be upscaled into the training data."""


MAX_PHOTO_PIXELS = 8192 * 8192   # a training photo above this (64 M pixels) is skipped undecoded, like a broken one


def load_image(path: PathLike, crop: str = "ddim_128", image_size: int = 64, channels: int = 3) -> np.ndarray:
    """Decode one image, crop it by name, resize it (antialiased bilinear) and return uint8.

    Returns (image_size, image_size, channels) uint8. Raises (OSError, SyntaxError, ValueError, ...)
    on a corrupt or truncated file, and ImageTooSmallError when the crop box is smaller than image_size
    (a 1-pixel image would otherwise be upscaled into a flat square); the cache builder skips and lists those.
    """
    check_settings(crop, image_size, channels)
    with Image.open(path) as img:
        check_pixels(img.size, path, limit=MAX_PHOTO_PIXELS)   # a decompression bomb is refused before decoding
        img.load()  # decode fully now: a truncated file raises here, not later
        left, top, right, bottom = box = crop_box(crop, *img.size)
        if min(right - left, bottom - top) < image_size:
            raise ImageTooSmallError(f"{img.size[0]}×{img.size[1]} image: its {crop} crop is {right - left}×"
                                     f"{bottom - top} pixels, smaller than {image_size}; it would be upscaled")
        img = img.crop(box)
    img = _to_mode(img, channels)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
    array = np.array(img, dtype=np.uint8)  # a writable copy
    return array[:, :, None] if array.ndim == 2 else array
