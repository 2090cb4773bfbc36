"""Data tests: finding CelebA in every layout, exact crop pixels, the crash-safe cache, batches, errors.

Everything runs on tiny generated images in tmp_path. Tests marked "real data" use the CelebA samples
under $DDPM_SHARED_DATA (set by .ci/run) and are skipped, with the reason, when it is absent.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_helpers import cache, celeba, data
from ddpm_helpers.cache import CacheError, build_cache, load_cache
from ddpm_helpers.celeba import CelebALocation, DataNotFoundError, crop_box, find_celeba, list_images, load_image
from ddpm_helpers.config import CROP_NAMES, CROPS, DataConfig
from ddpm_helpers.data import BatchIterator, offline_faces, prepare_images
from ddpm_helpers.images import from_model_range, to_model_range

PARTITIONS = [0, 0, 0, 1, 1, 2]  # ids 000001–000003 train, 000004–000005 valid, 000006 test
NAMES = [f"{i:06d}.jpg" for i in range(1, len(PARTITIONS) + 1)]


# ---------------------------------------------------------------------------------------------
# Fixtures: fake CelebA trees made of small generated JPEGs
# ---------------------------------------------------------------------------------------------
def _fake_face(seed: int, size: tuple[int, int] = (178, 218)) -> Image.Image:
    """A smooth, seeded RGB image (width, height) = size that compresses like a photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))


def _write_images(folder: Path, names=NAMES, size=(178, 218)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        _fake_face(i, size).save(folder / name, quality=90)
    return [folder / n for n in names]


def _kaggle_tree(root: Path) -> Path:
    """root/img_align_celeba/img_align_celeba/*.jpg + root/list_eval_partition.csv (Kaggle's layout)."""
    _write_images(root / "img_align_celeba" / "img_align_celeba")
    rows = "".join(f"{n},{p}\n" for n, p in zip(NAMES, PARTITIONS))
    (root / "list_eval_partition.csv").write_text("image_id,partition\n" + rows)
    return root


def _torchvision_tree(root: Path) -> Path:
    """root/celeba/img_align_celeba/*.jpg + root/celeba/list_eval_partition.txt (torchvision's layout)."""
    _write_images(root / "celeba" / "img_align_celeba")
    (root / "celeba" / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(NAMES, PARTITIONS)))
    return root


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $CELEBA_DIR and an empty working directory, so nothing outside tmp_path is found."""
    monkeypatch.delenv("CELEBA_DIR", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


@pytest.fixture(scope="module")
def six_images(tmp_path_factory) -> list[Path]:
    return _write_images(tmp_path_factory.mktemp("six"), size=(178, 218))


def _ids(paths) -> list[str]:
    return [p.name for p in paths]


# ---------------------------------------------------------------------------------------------
# Finding CelebA and its splits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, layout, image_dir", [
    (_kaggle_tree, "kaggle", "img_align_celeba/img_align_celeba"),
    (_torchvision_tree, "torchvision", "celeba/img_align_celeba"),
])
def test_layouts_are_found_and_splits_select_the_right_ids(isolated, make, layout, image_dir):
    root = make(isolated / "celeba_root")
    loc = find_celeba(root)
    assert loc.layout == layout and loc.image_dir == root / image_dir
    assert _ids(list_images(loc, "train")) == NAMES[:3]
    assert _ids(list_images(loc, "valid")) == NAMES[3:5]
    assert _ids(list_images(loc, "test")) == NAMES[5:]
    assert _ids(list_images(loc, "all")) == NAMES


def test_image_folder_itself_finds_the_partition_file_two_levels_up(isolated):
    root = _kaggle_tree(isolated / "k")
    loc = find_celeba(root / "img_align_celeba" / "img_align_celeba")
    assert loc.partition_file == root / "list_eval_partition.csv"
    assert _ids(list_images(loc, "test")) == ["000006.jpg"]


@pytest.mark.parametrize("mount", ["celeba-dataset", "datasets/jessicali9530/celeba-dataset"])
def test_kaggle_input_is_searched_in_both_mount_schemes(isolated, mount):
    kaggle_input = isolated / "input"
    (kaggle_input / "other-dataset").mkdir(parents=True)  # an unrelated attached input
    root = _kaggle_tree(kaggle_input / mount)
    loc = find_celeba(kaggle_input=kaggle_input)
    assert loc == CelebALocation(root / "img_align_celeba" / "img_align_celeba", root / "list_eval_partition.csv",
                                 "kaggle")


def test_kaggle_input_without_csv_finds_the_folder_holding_000001(isolated):
    folder = isolated / "input" / "datasets" / "someone" / "faces" / "imgs"
    _write_images(folder, names=NAMES[:2])
    loc = find_celeba(kaggle_input=isolated / "input")
    assert loc.image_dir == folder and loc.partition_file is None and loc.layout == "folder"


def test_env_var_then_cwd_data_are_searched(isolated, monkeypatch):
    root = _torchvision_tree(isolated / "tv")
    monkeypatch.setenv("CELEBA_DIR", str(root))
    assert find_celeba(kaggle_input=isolated / "nope").layout == "torchvision"
    monkeypatch.delenv("CELEBA_DIR")
    _kaggle_tree(Path.cwd() / "data")  # what `kaggle datasets download ... -p data/ --unzip` leaves
    loc = find_celeba(kaggle_input=isolated / "nope")
    assert loc.image_dir == Path.cwd() / "data" / "img_align_celeba" / "img_align_celeba"


def test_plain_folder_uses_all_images_and_warns_for_a_split(isolated, caplog):
    paths = _write_images(isolated / "faces", names=["b.png", "a.jpg", "c.JPEG"])
    (isolated / "faces" / "notes.txt").write_text("not an image")
    loc = find_celeba(isolated / "faces")
    assert loc.layout == "folder" and loc.partition_file is None
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        assert list_images(loc, "train") == sorted(paths)
    assert "using all 3 images" in caplog.text


def test_partition_ids_without_files_are_skipped(isolated, caplog):
    root = _kaggle_tree(isolated / "k")
    (root / "img_align_celeba" / "img_align_celeba" / "000002.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        assert _ids(list_images(find_celeba(root), "train")) == ["000001.jpg", "000003.jpg"]
    assert "1 of the 3 train images" in caplog.text


def _assert_helpful(message: str, *must_contain: str) -> None:
    for text in ("kaggle datasets download", "jessicali9530/celeba-dataset", "CELEBA_DIR", "Add Input", *must_contain):
        assert text in message, f"{text!r} missing from:\n{message}"


def test_missing_path_raises_with_the_path_and_how_to_get_the_data(isolated):
    missing = isolated / "no" / "such" / "dir"
    with pytest.raises(DataNotFoundError) as err:
        find_celeba(missing)
    assert isinstance(err.value, FileNotFoundError)
    _assert_helpful(str(err.value), str(missing), "does not exist")


def test_empty_folder_raises_with_the_path(isolated, monkeypatch):
    empty = isolated / "empty"
    empty.mkdir()
    monkeypatch.setenv("CELEBA_DIR", str(empty))
    with pytest.raises(DataNotFoundError) as err:
        find_celeba(kaggle_input=isolated / "input")
    _assert_helpful(str(err.value), str(empty), "$CELEBA_DIR", "holds no JPEG/PNG")


def test_nothing_anywhere_lists_every_place_searched(isolated):
    with pytest.raises(DataNotFoundError) as err:
        find_celeba(kaggle_input=isolated / "input")
    _assert_helpful(str(err.value), str(isolated / "input"), str(Path.cwd() / "data" / "celeba"),
                    str(Path.cwd() / "data"), "$CELEBA_DIR: not set")


def test_bad_settings_raise_value_error(isolated, six_images):
    loc = CelebALocation(six_images[0].parent, None, "folder")
    for bad_size in (0, 4, 7, -64, 64.0, True):
        with pytest.raises(ValueError, match="image_size"):
            load_image(six_images[0], image_size=bad_size)
    with pytest.raises(ValueError, match="crop"):
        load_image(six_images[0], crop="center_999")
    with pytest.raises(ValueError, match="channels"):
        load_image(six_images[0], channels=2)
    with pytest.raises(ValueError, match="split"):
        list_images(loc, "validation")
    with pytest.raises(ValueError, match="image_size"):
        prepare_images(DataConfig(image_size=4), kaggle_input=isolated / "input")


# ---------------------------------------------------------------------------------------------
# Crops land on the right pixels
# ---------------------------------------------------------------------------------------------
def _marked_png(path: Path, size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int], inside: int) -> Path:
    """A lossless grayscale-in-RGB PNG: value `inside` in rows/cols (inclusive), 255 - inside elsewhere."""
    w, h = size
    a = np.full((h, w, 3), 255 - inside, np.uint8)
    a[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = inside
    Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("crop, size, rows, cols, out", [
    ("ddim_128", (178, 218), (57, 184), (25, 152), 128),
    ("center_140", (178, 218), (39, 178), (19, 158), 140),
    ("center_178", (178, 218), (20, 197), (0, 177), 178),
    ("ddim_128", (89, 109), (28, 91), (12, 75), 64),  # the half-size copy: the box in proportion
])
def test_crop_takes_exactly_the_marked_box(tmp_path, crop, size, rows, cols, out):
    """White inside/black outside gives all white, and the reverse all black: the box is exact to the pixel."""
    assert crop_box(crop, *size) == (cols[0], rows[0], cols[1] + 1, rows[1] + 1)
    white_in = load_image(_marked_png(tmp_path / "a.png", size, rows, cols, 255), crop, image_size=out)
    black_in = load_image(_marked_png(tmp_path / "b.png", size, rows, cols, 0), crop, image_size=out)
    assert white_in.shape == (out, out, 3) and white_in.dtype == np.uint8
    assert (white_in == 255).all() and (black_in == 0).all()


def test_crop_box_keeps_squares_square_for_other_aspect_ratios():
    left, top, right, bottom = crop_box("ddim_128", 256, 256)
    assert right - left == bottom - top == round(128 * 256 / 218)
    assert 0 <= left and right <= 256 and 0 <= top and bottom <= 256


def test_resize_is_antialiased(tmp_path):
    """A 1-pixel checkerboard shrunk 8× must average to grey, not alias to black/white."""
    board = ((np.indices((218, 178)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(board).save(tmp_path / "board.png")
    small = load_image(tmp_path / "board.png", "ddim_128", image_size=16, channels=1)
    assert small.shape == (16, 16, 1)
    assert np.abs(small.astype(float) - 127.5).max() < 10


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_any_mode_becomes_rgb_or_gray(tmp_path, mode):
    img = _fake_face(0).convert("L") if mode == "I;16" else _fake_face(0).convert(mode)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img).astype(np.uint16) * 257))
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    rgb, gray = load_image(path, image_size=16, channels=3), load_image(path, image_size=16, channels=1)
    assert rgb.shape == (16, 16, 3) and gray.shape == (16, 16, 1)
    assert rgb.dtype == gray.dtype == np.uint8 and gray.std() > 5


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_cache_round_trips_exactly(tmp_path, six_images, workers):
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, 3, source="src", split="train",
                       workers=workers, progress=False)
    images, meta = load_cache(path)
    expected = np.stack([load_image(p, "ddim_128", 16, 3) for p in six_images])
    assert isinstance(images, np.memmap) and images.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(images, expected)
    assert meta["count"] == 6 and meta["skipped"] == [] and meta["crop"] == "ddim_128"
    assert meta["source"] == "src" and meta["split"] == "train" and meta["channels"] == 3
    assert not list(tmp_path.glob("*.tmp*"))


def test_cache_is_reused_without_decoding(tmp_path, six_images, monkeypatch):
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    mtime = path.stat().st_mtime_ns

    def must_not_decode(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache, "load_image", must_not_decode)   # the name the cache builder calls
    assert build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1) == path
    assert path.stat().st_mtime_ns == mtime


def test_truncated_cache_is_detected_then_refused_or_rebuilt(tmp_path, six_images, caplog):
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    good = np.array(load_cache(path)[0])
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(CacheError, match=r"c\.npy is truncated or corrupt: \d"):
        load_cache(path)
    with pytest.raises(CacheError, match=r"c\.npy is truncated or corrupt: \d"):
        build_cache(six_images, path, "ddim_128", 16, progress=False, workers=1, rebuild=False)
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        build_cache(six_images, path, "ddim_128", 16, progress=False, workers=1)
    assert "rebuilding cache" in caplog.text
    np.testing.assert_array_equal(load_cache(path)[0], good)


def test_shape_disagreeing_with_metadata_is_detected(tmp_path, six_images):
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    np.save(path, np.zeros((3, 16, 32, 3), np.uint8))  # same byte count, other shape
    with pytest.raises(CacheError, match="metadata says"):
        load_cache(path)


def test_metadata_mismatch_is_detected(tmp_path, six_images):
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    with pytest.raises(CacheError, match="image_size is 16, expected 32"):
        load_cache(path, expect={"image_size": 32})
    with pytest.raises(CacheError, match="other settings"):
        build_cache(six_images, path, "center_140", 16, progress=False, workers=1, rebuild=False)
    with pytest.raises(CacheError, match="files_sha1"):  # other input files, same name
        build_cache(six_images[:5], path, "ddim_128", 16, progress=False, workers=1, rebuild=False)


def test_killed_build_is_never_trusted(tmp_path, six_images):
    path = tmp_path / "c.npy"
    np.lib.format.open_memmap(tmp_path / "c.tmp.npy", mode="w+", dtype=np.uint8, shape=(6, 16, 16, 3))
    with pytest.raises(CacheError, match="not committed"):
        load_cache(path)
    np.save(path, np.zeros((6, 16, 16, 3), np.uint8))  # killed after the rename, before the metadata
    with pytest.raises(CacheError, match="no metadata"):
        load_cache(path)
    build_cache(six_images, path, "ddim_128", 16, progress=False, workers=1)
    assert load_cache(path)[0].any() and not (tmp_path / "c.tmp.npy").exists()


def test_build_killed_before_its_metadata_leaves_no_trusted_cache(tmp_path, six_images, monkeypatch):
    """Rebuilding with other settings un-commits the old metadata before the array is replaced."""
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        build_cache(six_images, path, "center_140", 16, progress=False, workers=1)  # same shape, other pixels
    with pytest.raises(CacheError, match="no metadata"):
        load_cache(path)


def _build_in_child(args) -> str:
    paths, cache = args
    return str(build_cache(paths, cache, "ddim_128", 16, workers=1, progress=False))


def test_concurrent_builders_take_turns(tmp_path, six_images):
    """DDP ranks all call prepare_images: one builds, the others wait on the lock and reuse the result."""
    import multiprocessing

    cache = tmp_path / "shared.npy"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_build_in_child, [(six_images, cache)] * 3)
    assert results == [str(cache)] * 3
    images, meta = load_cache(cache)
    np.testing.assert_array_equal(images[5], load_image(six_images[5], "ddim_128", 16))
    assert not list(tmp_path.glob("*.tmp*"))


def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path, six_images, caplog):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 50)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(six_images[0].read_bytes()[:1500])
    for bad in (garbage, truncated):
        with pytest.raises(OSError):
            load_image(bad)
    paths = [six_images[0], garbage, six_images[1], truncated, six_images[2]]
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        path = build_cache(paths, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    images, meta = load_cache(path)
    assert images.shape == (3, 16, 16, 3) and meta["count"] == 3 and meta["requested"] == 5
    assert [s["path"] for s in meta["skipped"]] == [str(garbage), str(truncated)]
    np.testing.assert_array_equal(images[2], load_image(six_images[2], "ddim_128", 16))
    assert "skipped 2 of 5 images" in caplog.text
    with pytest.raises(CacheError, match="none of the 2 images"):
        build_cache([garbage, truncated], tmp_path / "bad.npy", "ddim_128", 16, progress=False, workers=1)
    assert [p.name for p in tmp_path.glob("bad*")] == ["bad.lock"]  # no array, no metadata


def _copies(paths, folder: Path) -> list[Path]:
    """Copies of the images in a fresh folder, so a test may change them."""
    folder.mkdir()
    out = []
    for p in paths:
        (folder / p.name).write_bytes(p.read_bytes())
        out.append(folder / p.name)
    return out


def test_a_cache_damaged_without_changing_size_is_rebuilt(tmp_path, six_images, caplog):
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    good = np.array(load_cache(path)[0])
    size = path.stat().st_size
    with open(path, "r+b") as f:           # flip bytes inside the pixels; size, header and shape stay valid
        f.seek(size - 500)
        f.write(bytes(255 - b for b in f.read(10))[:10])
    assert path.stat().st_size == size and load_cache(path)[0].shape == good.shape
    with pytest.raises(CacheError, match=r"c\.npy is damaged: bytes 0 to [\d,]+ differ from the checksum"):
        build_cache(six_images, path, "ddim_128", 16, progress=False, workers=1, rebuild=False)
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        build_cache(six_images, path, "ddim_128", 16, progress=False, workers=1)
    assert "rebuilding cache" in caplog.text and "damaged" in caplog.text
    np.testing.assert_array_equal(load_cache(path)[0], good)


def test_a_large_cache_checks_a_sample_of_chunks_and_all_with_verify_full(tmp_path, six_images, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_BYTES", 512)              # 6 images of 16 px: 4,736 bytes, 10 chunks
    monkeypatch.setattr(cache, "FULL_VERIFY_BYTES", 1024)       # "large": only first, last and 4 random chunks
    monkeypatch.setattr(cache, "SAMPLED_CHUNKS", 0)
    path = build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    assert len(load_cache(path)[1]["chunk_sha1"]) == 10
    with open(path, "r+b") as f:                                # damage chunk 4 only
        f.seek(4 * 512 + 7)
        f.write(b"\x00\x01\x02")
    mtime = path.stat().st_mtime_ns
    build_cache(six_images, path, "ddim_128", 16, progress=False, workers=1)   # the sample misses it: reused
    assert path.stat().st_mtime_ns == mtime
    with pytest.raises(CacheError, match="damaged: bytes 2,048 to 2,560"):
        build_cache(six_images, path, "ddim_128", 16, progress=False, workers=1, rebuild=False, verify="full")


def test_replaced_source_images_make_the_cache_stale(tmp_path, six_images, caplog):
    paths = _copies(six_images, tmp_path / "src")
    path = build_cache(paths, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    _fake_face(99).save(paths[2], quality=90)                    # another picture under the same name
    with pytest.raises(CacheError, match="stale: its source images changed"):
        build_cache(paths, path, "ddim_128", 16, progress=False, workers=1, rebuild=False)
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        build_cache(paths, path, "ddim_128", 16, progress=False, workers=1)
    assert "stale" in caplog.text
    np.testing.assert_array_equal(load_cache(path)[0][2], load_image(paths[2], "ddim_128", 16))
    os.utime(paths[0], ns=(0, 10 ** 18))                        # same bytes, new modification time: stale too
    with pytest.raises(CacheError, match="stale"):
        build_cache(paths, path, "ddim_128", 16, progress=False, workers=1, rebuild=False)


def test_images_smaller_than_the_crop_are_skipped_and_reported(tmp_path, six_images, caplog):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)
    small = tmp_path / "small.png"
    _fake_face(3, (40, 49)).save(small)                            # its ddim_128 box is 29×29 < 32
    with pytest.raises(celeba.ImageTooSmallError, match="1×1 image: its ddim_128 crop is 1×1 pixels, smaller than 16"):
        load_image(tiny, "ddim_128", 16)
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        path = build_cache([six_images[0], tiny, small, six_images[1]], tmp_path / "c.npy", "ddim_128", 32,
                           progress=False, workers=1)
    images, meta = load_cache(path)
    assert images.shape == (2, 32, 32, 3) and [s["path"] for s in meta["skipped"]] == [str(tiny), str(small)]
    assert "skipped 2 of 4 images" in caplog.text and "too small" in caplog.text
    with pytest.raises(CacheError, match="none of the 2 images could be used"):
        build_cache([tiny, small], tmp_path / "bad.npy", "ddim_128", 32, progress=False, workers=1)


def test_a_full_disk_while_caching_is_a_clear_error_and_leaves_nothing(tmp_path, six_images, monkeypatch):
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "_decode_all", full_disk)
    with pytest.raises(CacheError, match=r"could not write the cache .*c\.npy: No space left on device \([\d.]+ GiB "
                                         r"free on .*\)\. Free some space or choose another cache folder"):
        build_cache(six_images, tmp_path / "c.npy", "ddim_128", 16, progress=False, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.lock"]


def test_symlink_loops_among_the_images_are_skipped_with_a_warning(isolated, caplog):
    folder = isolated / "imgs"
    _write_images(folder, names=["a.jpg", "b.jpg"])
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "x.jpg").symlink_to("y.jpg")
    (folder / "y.jpg").symlink_to("x.jpg")
    with caplog.at_level(logging.WARNING, logger="ddpm_helpers"):
        paths = list_images(find_celeba(folder), "all")
    assert _ids(paths) == ["a.jpg", "b.jpg"]
    assert "skipped 3 entries" in caplog.text and "Too many levels of symbolic links" in caplog.text
    (isolated / "self").symlink_to("self")
    with pytest.raises(DataNotFoundError, match="self"):
        list_images(CelebALocation(isolated / "self", None, "folder"), "all")


def test_the_data_identity_names_the_data_and_survives_a_move(isolated):
    a = _kaggle_tree(isolated / "a")
    cfg = DataConfig(root=str(a), split="train", image_size=16, cache_dir=str(isolated / "cache"))
    first = data.prepare_training_data(cfg, progress=False)
    assert {k: first.identity[k] for k in ("kind", "split", "count", "crop", "image_size", "channels")} == {
        "kind": "celeba", "split": "train", "count": 3, "crop": "ddim_128", "image_size": 16, "channels": 3}
    b = isolated / "b"
    os.rename(a, b)                                              # a remount elsewhere (a later Kaggle session)
    moved = data.prepare_training_data(dataclasses.replace(cfg, root=str(b)), progress=False)
    assert moved.identity["fingerprint"] == first.identity["fingerprint"]
    assert moved.identity["source"] != first.identity["source"]
    _fake_face(42).save(b / "img_align_celeba" / "img_align_celeba" / NAMES[1], quality=60)
    changed = data.prepare_training_data(dataclasses.replace(cfg, root=str(b)), progress=False)
    assert changed.identity["fingerprint"] != first.identity["fingerprint"]


# ---------------------------------------------------------------------------------------------
# prepare_images: the one-call entry point, and the offline default
# ---------------------------------------------------------------------------------------------
def test_prepare_images_caches_celeba_under_a_settings_name(isolated):
    root = _kaggle_tree(isolated / "k")
    cfg = DataConfig(root=str(root), split="all", image_size=16, cache_dir=str(isolated / "cache"), max_images=5)
    images, description = prepare_images(cfg, progress=False)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert "CelebA all (ddim_128 → 16 px), 5 images from" in description
    other, _ = prepare_images(DataConfig(root=str(root), split="valid", image_size=8, channels=1,
                                         cache_dir=str(isolated / "cache")), progress=False)
    assert other.shape == (2, 8, 8, 1)
    assert sorted(p.name for p in (isolated / "cache").iterdir() if p.suffix != ".lock") == [
        "celeba_all_ddim_128_16px_c3_n5.json", "celeba_all_ddim_128_16px_c3_n5.npy",
        "celeba_valid_ddim_128_8px_c1.json", "celeba_valid_ddim_128_8px_c1.npy"]


def test_prepare_images_falls_back_to_offline_faces(isolated):
    cfg = DataConfig(image_size=16, channels=3, cache_dir=str(isolated / "cache"))
    images, description = prepare_images(cfg, kaggle_input=isolated / "input", progress=False)
    assert images.shape == (80, 16, 16, 3) and "offline LFW" in description and "other 20 held out" in description
    with pytest.raises(DataNotFoundError):
        prepare_images(DataConfig(offline_fallback=False), kaggle_input=isolated / "input")
    with pytest.raises(DataNotFoundError, match="typo"):  # an explicit wrong path is never silently replaced
        prepare_images(DataConfig(root=str(isolated / "typo")), kaggle_input=isolated / "input")


def test_offline_faces_are_real_uint8_faces():
    gray, rgb = offline_faces(), offline_faces(image_size=24, channels=3)
    assert gray.shape == (100, 32, 32, 1) and gray.dtype == np.uint8
    assert rgb.shape == (100, 24, 24, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert gray.std() > 20 and len({img.tobytes() for img in gray}) == 100


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_array() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(37, 4, 6, 3), dtype=np.uint8)


def _epoch(images, epoch=0, **kwargs) -> list[torch.Tensor]:
    return list(BatchIterator(images, 8, **kwargs).epoch(epoch))


def test_batches_are_deterministic_for_a_seed(tiny_array):
    a, b, c = _epoch(tiny_array, seed=1), _epoch(tiny_array, seed=1), _epoch(tiny_array, seed=2)
    assert len(a) == 4 and all(x.shape == (8, 3, 4, 6) and x.dtype == torch.uint8 and x.is_contiguous() for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], _epoch(tiny_array, epoch=1, seed=1)[0])


def test_batches_hold_the_permuted_images_flipped_where_drawn(tiny_array):
    it = BatchIterator(tiny_array, 8, seed=3, drop_last=False)
    order, flips = it.epoch_order(5)
    generator = torch.Generator().manual_seed(3 * 1_000_003 + 5)
    assert torch.equal(order, torch.randperm(37, generator=generator))
    batches = list(it.epoch(5))
    assert [len(x) for x in batches] == [8, 8, 8, 8, 5] == [8] * (it.batches_per_epoch() - 1) + [5]
    expected = torch.from_numpy(tiny_array).permute(0, 3, 1, 2)[order]
    expected[flips[order]] = expected[flips[order]].flip(-1)
    assert torch.equal(torch.cat(batches), expected) and 0 < int(flips.sum()) < 37
    unflipped = torch.cat(list(BatchIterator(tiny_array, 8, seed=3, hflip=False, drop_last=False).epoch(5)))
    assert torch.equal(unflipped, torch.from_numpy(tiny_array).permute(0, 3, 1, 2)[order])


def test_resume_gives_exactly_the_tail_of_the_epoch(tiny_array):
    it = BatchIterator(tiny_array, 8, seed=4)
    full, tail = list(it.epoch(2)), list(it.epoch(2, start_batch=3))
    assert len(tail) == 1 and torch.equal(tail[0], full[3])
    assert list(it.epoch(2, start_batch=4)) == []
    with pytest.raises(ValueError, match="start_batch"):
        it.epoch(2, start_batch=5)


def test_two_ranks_partition_the_epoch_without_overlap(tiny_array):
    ranks = [BatchIterator(tiny_array, 4, seed=0, rank=r, world_size=2, drop_last=False) for r in range(2)]
    orders = [r.epoch_order(0)[0] for r in ranks]
    assert len(orders[0]) == len(orders[1]) == 18  # 37 truncated to 36, half each
    assert not set(orders[0].tolist()) & set(orders[1].tolist())
    assert ranks[0].batches_per_epoch() == ranks[1].batches_per_epoch() == 5
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(0))[:36]
    assert torch.equal(orders[0], perm[0::2]) and torch.equal(orders[1], perm[1::2])
    batches = [torch.cat(list(r.epoch(0))) for r in ranks]
    assert batches[0].shape == batches[1].shape == (18, 3, 4, 6)
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(tiny_array, 4, rank=2, world_size=2)


def test_model_range_mapping_is_exact():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model_range(levels, device="cpu")
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, -1, -1] == 1.0
    assert torch.equal(from_model_range(x), levels)
    assert torch.equal(from_model_range(torch.tensor([-3.0, 0.0, 7.0])), torch.tensor([0, 128, 255], dtype=torch.uint8))
    assert to_model_range(levels.expand(2, 3, 16, 16), channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# Real CelebA images (shared/data), skipped when $DDPM_SHARED_DATA is not set
# ---------------------------------------------------------------------------------------------
def _shared(name: str) -> Path:
    base = os.environ.get("DDPM_SHARED_DATA")
    if not base:
        pytest.skip("needs real CelebA test images, which a clone does not include")
    folder = Path(base) / name
    if not folder.is_dir():
        pytest.skip(f"needs real CelebA test images: {folder.name} is absent")
    return folder


def test_real_sample_in_the_kaggle_layout_is_found(isolated):
    sample = _shared("celeba_sample")
    root = isolated / "input" / "datasets" / "jessicali9530" / "celeba-dataset"
    images = root / "img_align_celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    for jpg in sorted(sample.glob("*.jpg")):
        (images / jpg.name).symlink_to(jpg)
    for csv in sample.glob("*.csv"):
        (root / csv.name).symlink_to(csv)
    loc = find_celeba(kaggle_input=isolated / "input")
    assert loc.image_dir == images and loc.layout == "kaggle"
    train = list_images(loc, "train")  # the sample's CSV marks all 32 as train
    assert _ids(train) == [f"{i:06d}.jpg" for i in range(1, 33)] and list_images(loc, "test") == []
    face = load_image(train[0], "ddim_128", 64)
    assert face.shape == (64, 64, 3) and 40 < face.mean() < 220


def test_real_half_size_faces_cache(tmp_path):
    half = _shared("celeba_5k_half")
    paths = sorted(half.glob("*.jpg"))[:300]
    assert Image.open(paths[0]).size == (89, 109)
    cache = build_cache(paths, tmp_path / "half.npy", "ddim_128", 32, workers=2, progress=False)
    faces, meta = load_cache(cache, expect={"crop": "ddim_128", "image_size": 32, "count": 300})
    assert faces.shape == (300, 32, 32, 3) and meta["skipped"] == []
    assert 70 < faces.mean() < 180 and faces.std() > 30  # ordinary photographs, not blank or saturated
    # faces are roughly left-right symmetric: the mean face is closer to its mirror than to its flip upside-down
    mean_face = faces.mean(0)
    assert np.abs(mean_face - mean_face[:, ::-1]).mean() < np.abs(mean_face - mean_face[::-1]).mean()
    np.testing.assert_array_equal(faces[123], load_image(paths[123], "ddim_128", 32))


def test_a_cache_folder_under_the_kaggle_inputs_is_used_only_when_it_holds_the_cache(tmp_path, monkeypatch):
    """Inputs are read-only on Kaggle: a cache recorded there is reused when present, never built there."""
    from ddpm_helpers.cache import usable_cache_dir
    monkeypatch.setenv("DDPM_KAGGLE_INPUT", str(tmp_path / "input"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(tmp_path)
    recorded = tmp_path / "input" / "ddpm-04-training" / "cache"
    recorded.mkdir(parents=True)
    assert usable_cache_dir(recorded, "c.npy") == tmp_path / "cache"            # absent: the default folder
    (recorded / "c.npy").write_bytes(b"")
    assert usable_cache_dir(recorded, "c.npy") == recorded                      # present: reused in place
    assert usable_cache_dir(tmp_path / "elsewhere", "c.npy") == tmp_path / "elsewhere"
    assert usable_cache_dir(None, "c.npy") == tmp_path / "cache"


def test_names_that_moved_still_import_from_their_old_module_with_a_warning():
    """Pushed Kaggle kernels and older notebooks import these from data; they resolve to the one definition."""
    with pytest.warns(DeprecationWarning, match="data.load_image moved to ddpm_helpers.celeba.load_image"):
        assert data.load_image is load_image
    with pytest.warns(DeprecationWarning):
        assert data.to_model_range is to_model_range
    with pytest.raises(AttributeError):
        _ = data.no_such_name
    assert CROP_NAMES == tuple(CROPS)   # the flags' names are the crop table's keys


def test_a_missing_optional_package_is_one_line_saying_what_to_install(monkeypatch, tmp_path, capsys):
    """Without scikit-image the offline faces, and so the default job, end in one 'pip install' line (exit 2), never
    in 'this is a bug'."""
    import sys

    from ddpm_helpers.cli import main
    from ddpm_helpers.errors import MissingDependencyError
    monkeypatch.setitem(sys.modules, "skimage.data", None)                  # import skimage.data now fails
    with pytest.raises(MissingDependencyError, match="pip install scikit-image"):
        offline_faces(16, 1)
    monkeypatch.delenv("CELEBA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "smoke", "--out", "run", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the offline faces need scikit-image, which is not installed: pip install scikit-image"]
