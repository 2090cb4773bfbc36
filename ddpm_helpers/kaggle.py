"""Run the notebooks on Kaggle: kernel folders, the package as a private dataset, and the `kaggle` CLI calls.

``python -m ddpm_helpers.kaggle --user NAME`` (or the ``kaggle`` subcommand of ``python -m ddpm_helpers``) writes

    build/kaggle/ddpm-helpers-code/         ddpm_helpers/ + dataset-metadata.json   (kaggle datasets create/version)
    build/kaggle/kernels/<slug>/            <notebook>.ipynb + kernel-metadata.json  (kaggle kernels push)

and prints the commands to upload them; ``--push`` runs them. Kernels get GPU T4×2 (``machine_shape``
NvidiaTeslaT4), internet off, CelebA (jessicali9530/celeba-dataset) and the package dataset attached. In the
notebook, the first cell finds the package under /kaggle/input in either mount scheme.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

CELEBA_DATASET = "jessicali9530/celeba-dataset"
PACKAGE_DATASET_SLUG = "ddpm-helpers-code"
MACHINE_SHAPE = "NvidiaTeslaT4"  # GPU T4 ×2 (kaggle-cli PR #1198); enable_gpu alone may give a retired P100
TRAINING_NOTEBOOK = re.compile(r"^04_|train", re.IGNORECASE)  # these chain runs: each version resumes from the last


def kernel_slug(notebook_path: PathLike) -> str:
    """The kernel slug of a notebook: ``notebooks/01_forward_noising.ipynb`` → ``ddpm-01-forward-noising``."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(notebook_path).stem.lower()).strip("-")
    return f"ddpm-{stem}"


def kernel_metadata(notebook_path: PathLike, username: str, slug: Optional[str] = None,
                    dataset_sources: Optional[Sequence[str]] = None, kernel_sources: Sequence[str] = (),
                    gpu: bool = True) -> dict:
    """The kernel-metadata.json of one notebook, as a dict (kaggle-cli docs/kernels_metadata.md).

    dataset_sources defaults to CelebA and f"{username}/ddpm-helpers-code". The title is the slug with spaces,
    so that Kaggle derives the same slug from it. code_file is the notebook's file name (the JSON sits beside it).
    """
    slug = slug or kernel_slug(notebook_path)
    if dataset_sources is None:
        dataset_sources = (CELEBA_DATASET, f"{username}/{PACKAGE_DATASET_SLUG}")
    meta = {"id": f"{username}/{slug}", "title": slug.replace("-", " "), "code_file": Path(notebook_path).name,
            "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": bool(gpu),
            "enable_internet": False, **({"machine_shape": MACHINE_SHAPE} if gpu else {}),
            "dataset_sources": list(dataset_sources), "kernel_sources": list(kernel_sources),
            "competition_sources": [], "model_sources": []}
    return meta


def write_kernel_dirs(notebooks_dir: PathLike, out_dir: PathLike, username: str) -> list[Path]:
    """One folder per notebook under out_dir: a copy of the notebook and its kernel-metadata.json.

    Training notebooks (04_*, or 'train' in the name) list their own kernel in kernel_sources, so a new version
    sees the previous version's /kaggle/working output under /kaggle/input and can resume from it.
    Returns the folders, sorted.
    """
    notebooks = sorted(Path(notebooks_dir).glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {notebooks_dir}")
    folders = []
    for nb in notebooks:
        slug = kernel_slug(nb)
        chain = (f"{username}/{slug}",) if TRAINING_NOTEBOOK.search(nb.stem) else ()
        folder = Path(out_dir) / slug
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(nb, folder / nb.name)
        _write_json(folder / "kernel-metadata.json", kernel_metadata(nb, username, slug, kernel_sources=chain))
        folders.append(folder)
    return folders


def write_package_dataset(repo_root: PathLike, out_dir: PathLike, username: str) -> Path:
    """A folder out_dir/ddpm-helpers-code with a copy of ddpm_helpers/ (no caches) and dataset-metadata.json.

    Upload it with ``kaggle datasets create -p FOLDER --dir-mode tar`` (tar keeps the ddpm_helpers/ folder).
    """
    source = Path(repo_root) / "ddpm_helpers"
    if not (source / "__init__.py").is_file():
        raise FileNotFoundError(f"{source} is not the ddpm_helpers package (no __init__.py)")
    folder = Path(out_dir) / PACKAGE_DATASET_SLUG
    if (folder / "ddpm_helpers").exists():
        shutil.rmtree(folder / "ddpm_helpers")  # no stale modules from an earlier build
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, folder / "ddpm_helpers", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _write_json(folder / "dataset-metadata.json", {"title": PACKAGE_DATASET_SLUG,
                                                   "id": f"{username}/{PACKAGE_DATASET_SLUG}",
                                                   "licenses": [{"name": "MIT"}]})
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def kaggle_credentials_found(environ=None, home: Optional[PathLike] = None) -> bool:
    """Whether the kaggle CLI can authenticate: KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN, or a
    kaggle.json / access_token file in $KAGGLE_CONFIG_DIR or ~/.kaggle."""
    environ = os.environ if environ is None else environ
    if (environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY")) or environ.get("KAGGLE_API_TOKEN"):
        return True
    config = Path(environ.get("KAGGLE_CONFIG_DIR") or Path(home or Path.home()) / ".kaggle")
    return (config / "kaggle.json").is_file() or (config / "access_token").is_file()


def add_kaggle_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of the kaggle subcommand to parser (and return it)."""
    parser.add_argument("--user", default=os.environ.get("KAGGLE_USERNAME"), required="KAGGLE_USERNAME" not in os.environ,
                        help="your Kaggle user name (default: $KAGGLE_USERNAME)")
    parser.add_argument("--out", default="build/kaggle", help="where to write the folders (default: build/kaggle)")
    parser.add_argument("--notebooks", default="notebooks", help="folder of the notebooks (default: notebooks)")
    parser.add_argument("--repo-root", default=".", help="repository root holding ddpm_helpers/ (default: .)")
    parser.add_argument("--push", action="store_true",
                        help="run the kaggle CLI: create or version the package dataset, then push every kernel")
    parser.add_argument("--message", default="update ddpm_helpers", help="version note for `kaggle datasets version`")
    return parser


def run_kaggle(args: argparse.Namespace) -> int:
    """Write the dataset and kernel folders; print the kaggle commands, or with --push run them. Returns an exit code."""
    out = Path(args.out)
    dataset = write_package_dataset(args.repo_root, out, args.user)
    kernels = write_kernel_dirs(args.notebooks, out / "kernels", args.user)
    print(f"wrote {dataset} and {len(kernels)} kernel folders under {out / 'kernels'}")
    dataset_id = f"{args.user}/{PACKAGE_DATASET_SLUG}"
    create = ["kaggle", "datasets", "create", "-p", str(dataset), "--dir-mode", "tar"]
    version = ["kaggle", "datasets", "version", "-p", str(dataset), "--dir-mode", "tar", "-m", args.message]
    pushes = [["kaggle", "kernels", "push", "-p", str(k)] for k in kernels]
    if not args.push:
        print("\nTo upload (add --push to run these):")
        print(f"  {shlex.join(create)}    # the first time; later: {shlex.join(version)}")
        for cmd in pushes:
            print(f"  {shlex.join(cmd)}")
        return 0
    if shutil.which("kaggle") is None:
        print("The kaggle CLI is not installed: pip install kaggle (then put your API token in ~/.kaggle/kaggle.json).")
        return 2
    if not kaggle_credentials_found():
        print("No Kaggle credentials: download an API token (kaggle.com → Settings → API → Create New Token) to "
              "~/.kaggle/kaggle.json and chmod 600 it, or set KAGGLE_USERNAME and KAGGLE_KEY.")
        return 2
    exists = subprocess.run(["kaggle", "datasets", "status", dataset_id], capture_output=True).returncode == 0
    for cmd in [version if exists else create, *pushes]:
        print("$", shlex.join(cmd), flush=True)
        result = subprocess.run(cmd)
        if result.returncode:
            print(f"failed with exit code {result.returncode}: {shlex.join(cmd)}")
            return result.returncode
    print(f"\nFollow a run with: kaggle kernels status {args.user}/<slug>; fetch its output with "
          f"kaggle kernels output {args.user}/<slug> -p out/")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = add_kaggle_arguments(argparse.ArgumentParser(prog="python -m ddpm_helpers.kaggle", description=__doc__.split("\n")[0]))
    return run_kaggle(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
