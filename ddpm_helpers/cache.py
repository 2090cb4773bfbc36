"""The cache: every image decoded, cropped and resized once into one memory-mapped uint8 .npy (N, H, W, C).

A JSON record written last (the commit marker) holds the settings, the source fingerprint (the names,
sizes and modification times of the image files) and SHA-1 checksums of the array's 16 MiB chunks;
``build_cache`` reuses a cache only when all of them still hold, and rebuilds it otherwise, with a message.
Crash-safe (temporary files renamed into place) and safe for concurrent builders
(DDP ranks take turns on a lock file). Images are decoded by celeba.load_image.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

try:
    import fcntl  # POSIX file locks, so concurrent builders (DDP ranks) of one cache take turns
except ImportError:  # Windows: no lock; let one process build first
    fcntl = None

import numpy as np
from tqdm.auto import tqdm

from ._types import PathLike
from .celeba import DataNotFoundError, check_settings, find_celeba, list_images, load_image
from .env import is_kaggle, kaggle_input_dir, kaggle_working_dir
from .errors import DDPMError
from .files import free_space, write_json

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2          # 2: source fingerprint with sizes and mtimes, chunk checksums
CHUNK_BYTES = 16 * 2 ** 20        # the array's bytes are checksummed in chunks of 16 MiB
# Reusing a cache re-hashes all its chunks when it is at most this big (every CPU / test cache, the 5,000-image
# CI cache: well under a second). A larger one (CelebA train at 64 px is 2 GB: 5-20 s to hash at each start,
# more from a cold disk) gets its first and last chunks (header, tail) and SAMPLED_CHUNKS random others checked
# at each start, so that damage is caught with growing probability over restarts at ~100 MB of reading;
# build_cache(..., verify="full") (the `prepare` command) checks every chunk.
FULL_VERIFY_BYTES = 256 * 2 ** 20
SAMPLED_CHUNKS = 4


class CacheError(DDPMError, ValueError):
    """A cache file is missing its metadata, truncated, corrupt, built with other settings, or undecodable."""


# ---------------------------------------------------------------------------------------------
# The cache: one uint8 .npy (N, H, W, C), memory-mapped, with a JSON record written last
# ---------------------------------------------------------------------------------------------
def _cache_files(cache_path: Path) -> dict[str, Path]:
    """The files of a cache: the array, its metadata, the array's temporary twin, the compaction scratch file."""
    stem = cache_path.name[: -len(".npy")]
    return {"npy": cache_path, "json": cache_path.with_name(stem + ".json"),
            "tmp_npy": cache_path.with_name(stem + ".tmp.npy"),
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


def source_stats(paths: Sequence[PathLike]) -> list[tuple[str, int, int]]:
    """(file name, size in bytes, mtime in ns) of each path, one stat call each; (name, -1, -1) if unreadable."""
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append((os.path.basename(p), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((os.path.basename(p), -1, -1))
    return stats


def stats_fingerprint(stats: Sequence[tuple[str, int, int]], mtimes: bool = True) -> str:
    """SHA-1 of the names and sizes (and mtimes) of the source files: changes when an image is replaced, even
    under the same name. Without mtimes it survives a copy or a remount (a Kaggle dataset in a later session)."""
    digest = hashlib.sha1()
    for name, size, mtime in stats:
        digest.update(f"{name}\t{size}\t{mtime if mtimes else ''}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def chunk_checksums(path: PathLike) -> list[str]:
    """SHA-1 of each CHUNK_BYTES block of a file, in order."""
    with open(path, "rb") as f:
        return [hashlib.sha1(block).hexdigest() for block in iter(lambda: f.read(CHUNK_BYTES), b"")]


def _damage(npy: Path, meta: dict, full: bool) -> str:
    """'' when the chunks checked match the checksums written at build (all, or a sample: FULL_VERIFY_BYTES);
    else what is wrong."""
    sums, size = meta.get("chunk_sha1") or [], meta.get("npy_bytes", 0)
    if len(sums) != -(-size // CHUNK_BYTES):
        return f"cache {npy} has no usable checksums in its metadata"
    chunks = range(len(sums))
    if not full and size > FULL_VERIFY_BYTES:   # random.Random(): own generator, the training RNG stays untouched
        chunks = sorted({0, len(sums) - 1, *random.Random().sample(chunks, min(SAMPLED_CHUNKS, len(sums)))})
    with open(npy, "rb") as f:
        for i in chunks:
            f.seek(i * CHUNK_BYTES)
            if hashlib.sha1(f.read(CHUNK_BYTES)).hexdigest() != sums[i]:
                return (f"cache {npy} is damaged: bytes {i * CHUNK_BYTES:,} to {min(size, (i + 1) * CHUNK_BYTES):,} "
                        "differ from the checksum written when it was built")
    return ""


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


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C back while the decoding workers are forked: it is recorded (in the main thread, whichever thread
    the signal reached) and raised as one KeyboardInterrupt here once they exist, where the pool is stopped and the
    temporary files removed, instead of a traceback from every half-started worker and a broken pool. The workers
    inherit the recording handler at fork, then ignore SIGINT (_worker_ignores_sigint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _worker_ignores_sigint() -> None:
    """A decoding worker leaves Ctrl-C to its parent, which stops the pool and removes the temporary files."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_all(paths: list[str], out: np.ndarray, crop: str, image_size: int, channels: int,
                workers: int, progress: bool, desc: str) -> tuple[int, list[tuple[str, str]]]:
    """Decode paths into out (N, H, W, C) in order, packing good images at the front; return (count, failures)."""

    chunk = max(1, min(256, math.ceil(len(paths) / (workers * 4))))
    jobs = [(paths[i:i + chunk], crop, image_size, channels) for i in range(0, len(paths), chunk)]
    written, failures = 0, []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        executor, stopped = None, []
        try:
            if workers <= 1 or len(jobs) == 1:
                results = map(_decode_chunk, jobs)
            else:
                context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
                with _sigint_held():   # a Ctrl-C while the workers start reaches this process only, once they run
                    executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                                      initializer=_worker_ignores_sigint)
                    results = executor.map(_decode_chunk, jobs)
            for images, failed in results:
                out[written:written + len(images)] = images
                written += len(images)
                failures += failed
                bar.update(len(images) + len(failed))
        except BaseException:      # Ctrl-C, an error: stop the workers now (a shutdown alone can hang after Ctrl-C)
            stopped = list((getattr(executor, "_processes", None) or {}).values())  # private: no public stop
            for process in stopped:
                process.terminate()
            raise
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            for process in stopped:          # none may outlive this process
                process.join(2)
                if process.is_alive():
                    process.kill()
    return written, failures


def reserve_blocks(path: Path) -> None:
    """Allocate a new memmap file's disk blocks now. open_memmap makes a sparse file, and a write into it on a
    full disk kills the process with SIGBUS (its decoding workers then hang); posix_fallocate fails cleanly
    with ENOSPC instead. File systems without fallocate keep the sparse file."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _compact(tmp_npy: Path, packed_path: Path, count: int) -> None:
    """Shrink a .npy to its first count rows (when some images were skipped), by copying through packed_path."""
    full = np.load(tmp_npy, mmap_mode="r")
    packed = np.lib.format.open_memmap(packed_path, mode="w+", dtype=np.uint8, shape=(count,) + full.shape[1:])
    reserve_blocks(packed_path)
    for i in range(0, count, 4096):
        packed[i:i + 4096] = full[i:min(count, i + 4096)]
    packed.flush()
    del packed, full
    os.replace(packed_path, tmp_npy)


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


def _reusable(files: dict[str, Path], wanted: dict, full: bool) -> tuple[bool, str]:
    """Whether an existing cache is intact, was built from the same unchanged files with the wanted settings,
    and its bytes match their checksums (all chunks, or a sample: see FULL_VERIFY_BYTES); else why not."""
    if not files["npy"].exists() and not files["json"].exists():
        return False, ""
    try:
        _, meta = load_cache(files["npy"], expect=wanted)
        why = _damage(files["npy"], meta, full)
        return not why, why
    except CacheError as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"cache {files['npy']} is unreadable: {exc}"


def build_cache(paths: Sequence[PathLike], cache_path: PathLike, crop: str, image_size: int, channels: int = 3,
                source: str = "", split: str = "", workers: Optional[int] = None, progress: bool = True,
                *, rebuild: bool = True, verify: str = "auto") -> Path:
    """Decode, crop and resize every image once into a memory-mapped uint8 .npy (N, H, W, C); return its path.

    Reuses a valid cache built with the same settings from the same, unchanged files (names, sizes and
    mtimes) whose bytes match their checksums (verify="auto": every chunk of a cache up to
    FULL_VERIFY_BYTES, a sample of a larger one; verify="full": every chunk). A truncated, damaged or
    stale cache, or one built with other settings, is rebuilt with a warning (rebuild=True) or refused
    with CacheError. Images that cannot be decoded or are smaller than the crop at image_size are skipped,
    logged and listed in the metadata; if none is usable, CacheError.
    Crash-safe: the array is written to name.tmp.npy and renamed, and the JSON metadata, written last,
    is the commit marker. Concurrent builders of one cache (e.g. DDP ranks) take turns on a lock file
    (name.lock, POSIX only): the first builds, the others wait and then reuse its result.
    """
    check_settings(crop, image_size, channels)
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataNotFoundError(f"no images to cache into {cache_path}")
    if verify not in ("auto", "full"):
        raise ValueError(f"verify must be 'auto' or 'full', got {verify!r}")
    files = _cache_files(_normalise_cache_path(cache_path))
    stats = source_stats(paths)
    wanted = {"crop": crop, "image_size": int(image_size), "channels": int(channels),
              "files_sha1": files_fingerprint(paths), "source_sha1": stats_fingerprint(stats)}
    if _reusable(files, wanted, verify == "full")[0]:  # the common case, without touching the lock
        logger.info("reusing cache %s", files["npy"])
        return files["npy"]
    try:
        files["npy"].parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the cache folder {files['npy'].parent}: {exc.strerror or exc}; "
                         "set another cache folder (DataConfig.cache_dir, --cache-dir)") from exc
    with _exclusive(files["lock"]):
        ok, why = _reusable(files, wanted, verify == "full")  # again: another process may have built it meanwhile
        if ok:
            logger.info("reusing cache %s", files["npy"])
            return files["npy"]
        if why:
            if not rebuild:
                raise CacheError(f"{why}\nRebuild it with build_cache(..., rebuild=True) or delete {files['npy']}.")
            logger.warning("rebuilding cache: %s", why)
        try:
            failures = _write_cache(paths, files, wanted, stats, source, split, workers, progress)
        except OSError as exc:    # no space, permission, read-only: nothing half-written is left (see _write_cache)
            raise CacheError(f"could not write the cache {files['npy']}: {exc.strerror or exc} "
                             f"({free_space(files['npy'].parent)}). Free some space or choose another cache "
                             "folder (DataConfig.cache_dir, --cache-dir).") from exc
    if failures:
        logger.warning("skipped %d of %d images that could not be decoded or are too small (listed in %s), "
                       "e.g. %s: %s", len(failures), len(paths), files["json"], *failures[0])
    return files["npy"]


def _write_cache(paths: list[str], files: dict[str, Path], wanted: dict, stats: list[tuple[str, int, int]],
                 source: str, split: str, workers: Optional[int], progress: bool) -> list[tuple[str, str]]:
    """Decode everything into name.tmp.npy, rename it into place, then commit the metadata; return the failures."""
    crop, image_size, channels = wanted["crop"], wanted["image_size"], wanted["channels"]
    _remove(files["tmp_npy"], files["tmp2_npy"])  # leftovers of a killed build are never trusted
    start = time.perf_counter()
    shape = (len(paths), image_size, image_size, channels)
    out = np.lib.format.open_memmap(files["tmp_npy"], mode="w+", dtype=np.uint8, shape=shape)
    try:
        reserve_blocks(files["tmp_npy"])
        count, failures = _decode_all(paths, out, crop, image_size, channels, workers or os.cpu_count() or 1,
                                      progress, desc=f"caching {files['npy'].name}")
        out.flush()
        del out
        if count == 0:
            examples = "\n".join(f"  {p}: {e}" for p, e in failures[:5])
            raise CacheError(f"none of the {len(paths)} images could be used (undecodable, or smaller than the "
                             f"crop at {image_size} px), e.g.\n{examples}")
        if count < len(paths):
            _compact(files["tmp_npy"], files["tmp2_npy"], count)
        _fsync(files["tmp_npy"])
        _remove(files["json"])                       # un-commit any old cache before its array is replaced
        os.replace(files["tmp_npy"], files["npy"])
        record = {"format_version": CACHE_FORMAT_VERSION, "source": str(source), "split": str(split), **wanted,
                  "names_sizes_sha1": stats_fingerprint(stats, mtimes=False),
                  "count": count, "requested": len(paths), "shape": [count, *shape[1:]], "dtype": "uint8",
                  "npy_bytes": files["npy"].stat().st_size, "chunk_bytes": CHUNK_BYTES,
                  "chunk_sha1": chunk_checksums(files["npy"]),
                  "skipped": [{"path": p, "error": e} for p, e in failures],
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "build_seconds": round(time.perf_counter() - start, 2)}
        write_json(files["json"], record, indent=1)             # the commit (atomic)
    finally:
        _remove(files["tmp_npy"], files["tmp2_npy"])
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
        differ = [k for k, v in expect.items() if meta.get(k) != v]
        if differ == ["source_sha1"]:
            problems = [f"cache {files['npy']} is stale: its source images changed since it was built "
                        "(a file's size or modification time differs)"]
        elif differ:
            problems = [f"cache {files['npy']} was built with other settings: "
                        + "; ".join(f"{k} is {meta.get(k)!r}, expected {expect[k]!r}" for k in differ)]
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




def default_cache_dir() -> Path:
    """Where caches go when DataConfig.cache_dir is None: /kaggle/working/cache on Kaggle, else ./cache."""
    return kaggle_working_dir() / "cache" if is_kaggle() else Path.cwd() / "cache"


def usable_cache_dir(folder: Optional[PathLike], name: Optional[str]) -> Path:
    """Where to read or build the cache file ``name``: folder (default_cache_dir() when None), unless folder lies
    under the read-only Kaggle inputs and does not already hold ``name`` — building there would write into
    /kaggle/input (notebook 05 reads 04's config, whose cache folder may be an input 05 lacks): then the default."""
    if folder is None:
        return default_cache_dir()
    folder = Path(folder).expanduser()
    try:
        under_input = folder.resolve().is_relative_to(kaggle_input_dir().resolve())
    except OSError:
        under_input = True
    if under_input and not (name and (folder / name).is_file()):
        return default_cache_dir()
    return folder


def cache_name(split: str, crop: str, image_size: int, channels: int, count: Optional[int] = None) -> str:
    """The cache file name, which spells out the settings so caches of different settings coexist."""
    suffix = f"_n{count}" if count is not None else ""
    return f"celeba_{split}_{crop}_{image_size}px_c{channels}{suffix}.npy"


def cache_file_name(data_cfg, kaggle_input: Optional[PathLike] = None) -> Optional[str]:
    """The file name prepare_images gives data_cfg's cache, or None when CelebA is not found (no cache then)."""
    try:
        location = find_celeba(data_cfg.root, kaggle_input if kaggle_input is not None else kaggle_input_dir())
        count = len(list_images(location, data_cfg.split)[:data_cfg.max_images]) if data_cfg.max_images else None
    except (DataNotFoundError, OSError, ValueError):
        return None
    return cache_name(data_cfg.split, data_cfg.crop, data_cfg.image_size, data_cfg.channels, count)


def cache_dir_for(run, data_cfg, kaggle_input: Optional[PathLike] = None, max_depth: int = 5) -> Path:
    """Where data_cfg's uint8 image cache is read from or built.

    Outside Kaggle: run.out_dir/cache. On Kaggle: the folder under kaggle_input that already holds a committed
    copy (the previous version's output, or a dataset made from one), used in place, read-only, never copied;
    otherwise /kaggle/working/cache, so that the next version finds it in this version's output. (A version
    that reused its input's cache does not save one, so the version after it builds again; a dataset made from
    the cache folder, attached as an input, avoids even that.)
    """
    own = Path(run.out_dir) / "cache"
    if not run.on_kaggle:
        return own
    root = Path(kaggle_input) if kaggle_input is not None else kaggle_input_dir()
    name = cache_file_name(data_cfg, root)
    if name is None:
        return own
    stem = name[: -len(".npy")]
    for depth in range(max_depth):
        for meta in sorted(root.glob("*/" * depth + f"{stem}.json")):
            if meta.with_name(name).is_file():
                return meta.parent
    return own
