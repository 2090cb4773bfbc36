"""Images between the model and the disk: the [−1, 1] ↔ uint8 maps, PNG read/write, and the one grid writer.

Foundation layer. Training data are uint8; the model works in [−1, 1]: ``to_model_range`` (x / 127.5 − 1) and
``from_model_range`` (round((x + 1) · 127.5), clamped) are the package's one pair of maps, and
``to_unit_range`` gives [0, 1] for display.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ._types import PathLike
from .errors import DDPMError
from .files import atomic_open


class DamagedImageError(DDPMError, ValueError):
    """An image file that cannot be decoded (truncated, zero bytes, not a PNG) or has another size than its set."""


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


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] float (or uint8) → [0, 1] float for display."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def image_grid(x: torch.Tensor, nrow: Optional[int] = None, padding: int = 2) -> torch.Tensor:
    """Images (B, C, H, W) → one grid image (3, H', W') in [0, 1]: ``nrow`` per row (default ⌈√B⌉), white
    ``padding`` around each, gray replicated to RGB; one image comes back unpadded (torchvision's make_grid
    rules, without importing torchvision: 5 s on a busy CPU)."""
    x = to_unit_range(x.detach().cpu())
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)                                        # (B, 3, H, W)
    if x.shape[0] == 1:
        return x[0].clone()
    b, _, h, w = x.shape
    cols = min(nrow or max(1, int(math.ceil(math.sqrt(b)))), b)
    rows = int(math.ceil(b / cols))
    grid = torch.ones(3, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(b):
        top, left = (i // cols) * (h + padding) + padding, (i % cols) * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = x[i]
    return grid


def unit_to_uint8(grid: torch.Tensor) -> np.ndarray:
    """A picture (3, H, W) in [0, 1] → uint8 (H, W, 3) for PIL: round(x · 255)."""
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_grid(x: torch.Tensor, path: PathLike, nrow: Optional[int] = None, min_width: int = 0,
               dpi: Optional[int] = None) -> Tuple[Path, int]:
    """The package's one grid writer: images (B, C, H, W) in [−1, 1] (or uint8) as one PNG grid, enlarged by an
    integer factor (nearest neighbour) to at least ``min_width`` pixels, optionally tagged with a dpi; written
    atomically. Returns (path, factor)."""
    array = unit_to_uint8(image_grid(x, nrow=nrow))                              # (H', W', 3) uint8
    factor = max(1, math.ceil(min_width / array.shape[1]))
    picture = Image.fromarray(array)
    if factor > 1:
        picture = picture.resize((array.shape[1] * factor, array.shape[0] * factor), Image.NEAREST)
    with atomic_open(path) as f:
        picture.save(f, format="PNG", **({"dpi": (dpi, dpi)} if dpi else {}))
    return Path(path), factor


def save_image_grid(x: torch.Tensor, path: PathLike, nrow: Optional[int] = None) -> Path:
    """Write images (B, C, H, W) in [−1, 1] as one PNG grid at their own size (:func:`write_grid`); the path."""
    return write_grid(x, path, nrow=nrow)[0]


def write_png_atomic(image: torch.Tensor, path: PathLike) -> Path:
    """Write one image (C, H, W) in [−1, 1] as an 8-bit PNG: a temporary name in the same folder, then os.replace.

    The uint8 conversion is from_model_range's round((x + 1) · 127.5), the inverse of the training data's map.
    """
    path = Path(path)
    pixels = from_model_range(image.cpu()).permute(1, 2, 0).numpy()             # (H, W, C) uint8
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    with atomic_open(path) as f:
        picture.save(f, format="PNG")
    return path


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"        # the IEND chunk and its CRC: the last 8 bytes of every complete PNG


MAX_SAMPLE_PIXELS = 4096 * 4096   # a sample, a grid or a CelebA photo is far smaller; a bigger header is a bomb


def check_pixels(size: Sequence[int], path: PathLike, limit: int = MAX_SAMPLE_PIXELS) -> None:
    """DamagedImageError when an image's header claims more than ``limit`` pixels: read before anything is decoded,
    so a PNG of a few KB that would decompress to gigabytes is refused instead of filling the memory."""
    width, height = size
    if width * height > limit:
        raise DamagedImageError(f"{path} claims {width}×{height} pixels (over {limit:,}): not a sample or photo but "
                                "a decompression bomb or a foreign file; remove it")


def read_png(path: PathLike) -> torch.Tensor:
    """Decode an image file in full with PIL → uint8 (C, H, W), C = 1 (gray) or 3 (colour; alpha dropped).

    DamagedImageError naming the file when it cannot be decoded. (PIL, not torchvision.io: decode_png
    crashed the process on a PNG with one flipped byte, torchvision 0.29.)
    """
    try:
        with Image.open(path) as im:
            check_pixels(im.size, path)                   # before decoding: a small file can inflate to gigabytes
            im.load()
            im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:   # truncated / unidentified / ...
        raise DamagedImageError(f"cannot decode {path}: {e}. If it is a sample, run the same `sample` command "
                                "again: damaged files are redone.") from None
    a = np.array(im)                                          # (H, W) or (H, W, 3), a writable copy
    return torch.from_numpy(a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1)))


def png_problem(path: PathLike, shape: Sequence[int]) -> Optional[str]:
    """Why ``path`` is not a complete PNG of shape (C, H, W) — missing, cut short, undecodable, other size or
    mode — or None when it is. Reads and decodes the whole file (about 0.3 ms for 64 px: 3 s per 10,000)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not (data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)):
        return f"not a complete PNG ({len(data)} bytes)"
    want = (shape[2], shape[1]), "L" if shape[0] == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(data)) as im:
            size, mode = im.size, im.mode
            if (size, mode) != want:                      # checked before decoding: a bomb is never inflated
                return f"is {size[0]}×{size[1]} {mode}, expected {want[0][0]}×{want[0][1]} {want[1]}"
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"cannot be decoded ({e})"
    return None
