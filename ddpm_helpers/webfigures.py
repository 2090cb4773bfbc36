"""Figures in the page: screen-size copies of the committed figures, embedded in the notebooks as cell attachments.

    python -m ddpm_helpers.webfigures           # (re)make figures/web/ from figures/, re-embed every notebook
    python -m ddpm_helpers.webfigures --check   # change nothing; exit 1 when a copy or an embedding is stale

Any markdown cell of a notebook that contains ``![alt](attachment:NAME)`` gets its ``attachments`` entry filled
with the bytes of ``figures/web/NAME``, the screen copy of ``figures/NAME``. Attachments show on GitHub, in
Jupyter after a clone and on Colab or Kaggle when the notebook is opened alone (a relative link breaks there).
The print files are too heavy to embed, so a screen copy is made from each: a PNG is reduced by a whole factor
(box average over f × f blocks, so an image grid enlarged by whole pixels stays sharp) until its long side is at
most WEB_MAX_SIDE, then stored as a 256-colour PNG when that is smaller; a GIF keeps every GIF_FRAME_STEP-th
frame (and the last one, with its duration). Everything is deterministic: a second run rewrites the same bytes.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import re
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WEB_MAX_SIDE = 800                      # pixels, long side of a screen copy
NOTEBOOK_MAX_BYTES = 2_000_000          # a notebook with its attachments stays below this
GIF_FRAME_STEP = 3                      # a GIF's screen copy keeps every third frame (and the last)
ATTACHMENT = re.compile(r"!\[[^\]]*\]\(attachment:([^)\s]+)\)")
MIME = {".png": "image/png", ".gif": "image/gif"}


def reduction_factor(size: tuple, max_side: int = WEB_MAX_SIDE) -> int:
    """The smallest whole f with ⌈max(size) / f⌉ ≤ max_side: f = ⌈max(W, H) / max_side⌉ (1 when it already fits)."""
    return max(1, math.ceil(max(size) / max_side))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def web_png(data: bytes, max_side: int = WEB_MAX_SIDE) -> bytes:
    """A print PNG's bytes → its screen copy's bytes: reduced by reduction_factor (Image.reduce, box average),
    then the smaller of full colour and a 256-colour palette (median cut, no dithering)."""
    image = Image.open(io.BytesIO(data))
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, "white")
        background.paste(image, mask=image.getchannel("A"))
        image = background
    f = reduction_factor(image.size, max_side)
    if f > 1:
        image = image.reduce(f)
    full = _png_bytes(image)
    palette = _png_bytes(image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    return palette if len(palette) < len(full) else full


def web_gif(data: bytes, max_side: int = WEB_MAX_SIDE) -> bytes:
    """A GIF's bytes → its screen copy: every GIF_FRAME_STEP-th frame and the last one (durations summed over
    dropped frames, so it plays as long), reduced by a whole factor if wider than max_side."""
    gif = Image.open(io.BytesIO(data))
    frames, durations = [], []
    for i in range(gif.n_frames):
        gif.seek(i)
        duration = gif.info.get("duration", 100)
        if i % GIF_FRAME_STEP == 0 or i == gif.n_frames - 1:
            frames.append(gif.convert("RGB"))
            durations.append(duration)
        else:
            durations[-1] += duration
    f = reduction_factor(frames[0].size, max_side)
    frames = [fr.reduce(f) if f > 1 else fr for fr in frames]
    frames = [fr.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for fr in frames]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                   loop=gif.info.get("loop", 0), optimize=True)
    return buf.getvalue()


def web_copy(source: Path, max_side: int = WEB_MAX_SIDE) -> bytes:
    """The bytes of the screen copy of one print file (PNG or GIF)."""
    data = source.read_bytes()
    return web_gif(data, max_side) if source.suffix.lower() == ".gif" else web_png(data, max_side)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_text(entries: dict) -> str:
    """figures/web/SOURCES.json: for each web copy, the sha256 of the print file it was made from and of the copy,
    so that a test sees a stale copy (its print file redrawn since) without remaking every copy."""
    return json.dumps({"made_by": "python -m ddpm_helpers.webfigures", "max_side": WEB_MAX_SIDE, "files": entries},
                      indent=1, sort_keys=True) + "\n"


def notebooks(root: Path = ROOT) -> list:
    """The lesson notebooks, in order."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def attachment_names(nb: dict) -> list:
    """Every NAME of ``![..](attachment:NAME)`` in the notebook's markdown cells, in order, without repeats."""
    names = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for name in ATTACHMENT.findall("".join(cell["source"])):
                if name not in names:
                    names.append(name)
    return names


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def notebook_text(nb: dict) -> str:
    """The notebook as nbformat writes it (indent 1, UTF-8, final newline), so a rewrite changes no other byte."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def embed(nb: dict, web_dir: Path) -> dict:
    """Fill each markdown cell's ``attachments`` with exactly the figures it links (base64 of web_dir/NAME);
    a cell that links none loses a stale ``attachments`` entry. Returns nb (changed in place)."""
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        names = ATTACHMENT.findall("".join(cell["source"]))
        if not names:
            cell.pop("attachments", None)
            continue
        cell["attachments"] = {name: {MIME[Path(name).suffix.lower()]:
                                      base64.b64encode((web_dir / name).read_bytes()).decode("ascii")}
                               for name in dict.fromkeys(names)}
    return nb


def embedded_bytes(nb: dict) -> dict:
    """{NAME: decoded bytes} of every attachment of the notebook's markdown cells."""
    out = {}
    for cell in nb["cells"]:
        for name, bundle in cell.get("attachments", {}).items():
            out[name] = base64.b64decode(next(iter(bundle.values())))
    return out


def update(root: Path = ROOT, check: bool = False) -> list:
    """Make figures/web/NAME for every NAME a notebook links, then re-embed every notebook.

    check=True writes nothing. Returns the paths that were (or, with check, would be) rewritten.
    """
    figures, web = root / "figures", root / "figures" / "web"
    changed = []
    books = {path: read_notebook(path) for path in notebooks(root)}
    names = sorted({name for nb in books.values() for name in attachment_names(nb)})
    missing = [name for name in names if not (figures / name).is_file()]
    if missing:
        raise FileNotFoundError(f"notebooks link figures that are not in figures/: {', '.join(missing)}")
    if not check:
        web.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name in names:
        data, target = web_copy(figures / name), web / name
        entries[name] = {"source_sha256": sha256(figures / name), "web_sha256": hashlib.sha256(data).hexdigest()}
        if not target.is_file() or target.read_bytes() != data:
            changed.append(target)
            if not check:
                target.write_bytes(data)
    manifest, text = web / "SOURCES.json", manifest_text(entries)
    if not manifest.is_file() or manifest.read_text(encoding="utf-8") != text:
        changed.append(manifest)
        if not check:
            manifest.write_text(text, encoding="utf-8")
    for path, nb in books.items():
        before = path.read_text(encoding="utf-8")
        if check and any(not (web / n).is_file() for n in attachment_names(nb)):
            changed.append(path)
            continue
        after = notebook_text(embed(nb, web))
        if after != before:
            changed.append(path)
            if not check:
                path.write_text(after, encoding="utf-8")
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm_helpers.webfigures", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when something is stale")
    p.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this clone)")
    args = p.parse_args(argv)
    changed = update(args.root, check=args.check)
    for path in changed:
        print(("stale: " if args.check else "wrote: ") + str(path.relative_to(args.root)))
    if not changed:
        print("figures/web and the notebooks' attachments are up to date")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
