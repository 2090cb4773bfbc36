"""File helpers every layer may use: atomic writes (a file is complete or absent), JSON records, free space.

Foundation layer: imports nothing of the package but ``_types``. ``atomic_open`` is the one way the package
writes a file it must not leave half-written (checkpoints, caches, sample PNGs, JSON records).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from ._types import PathLike


def _umask() -> int:
    """The process's umask (Python has no getter: set it and put it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb"):
    """Write through a temporary file beside ``path``; on success fsync and os.replace it onto ``path``.

    A crash or an exception leaves the old file (or none) and never a half-written one. The file gets
    the mode any new file would get (0o666 minus the umask), not mkstemp's private 0o600. The temporary
    name is ".<name>.<8 random characters>.tmp" (checkpoint.leftover_temp_files finds killed ones).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: PathLike) -> Path:
    """torch.save through :func:`atomic_open`: a checkpoint file is either complete or absent.

    torch's zip writer reports a failed write (a full disk) as a RuntimeError ("PytorchStreamWriter failed
    writing file", "[enforce fail at inline_container.cc] unexpected pos"): it is raised as the OSError it is.
    """
    path = Path(path)
    with atomic_open(path) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            if "PytorchStreamWriter" not in str(e) and "inline_container" not in str(e):
                raise
            full = shutil.disk_usage(path.parent).free < 16 * 2 ** 20   # the partial file is still there
            code = errno.ENOSPC if full else errno.EIO
            raise OSError(code, os.strerror(code), str(path)) from e
    return path


def write_json(path: PathLike, record: Any, indent: int = 2, sort_keys: bool = False) -> Path:
    """The package's one JSON writer: UTF-8, a final newline, written through :func:`atomic_open`."""
    path = Path(path)
    with atomic_open(path, "w") as f:
        f.write(json.dumps(record, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")
    return path


def free_space(folder: PathLike) -> str:
    """'12.34 GiB free on <folder>', for the messages of failed writes."""
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 30:.2f} GiB free on {folder}"
    except OSError:
        return f"free space on {folder} unknown"


def decode_text(data: bytes) -> str:
    """Bytes of a text file as str, whatever a user's editor saved: UTF-16 with its BOM, UTF-8 (with or without a
    BOM); bytes that are not UTF-8 (Latin-1, a damaged tail) become U+FFFD instead of an exception; lines holding
    NUL (the zero-filled tail a power loss leaves after an append, or a row cut by it) are dropped."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        text = data.decode("utf-8-sig", errors="replace")
    if "\0" not in text:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if "\0" not in line)


def read_csv_rows(path: PathLike) -> Tuple[List[Dict[str, str]], int]:
    """The rows of a CSV with a header line (csv.DictReader) read leniently (decode_text), and how many NUL bytes
    were dropped."""
    data = Path(path).read_bytes()
    rows = list(csv.DictReader(io.StringIO(decode_text(data), newline="")))
    return rows, data.count(b"\0")
