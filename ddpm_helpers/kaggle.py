"""Run the notebooks on Kaggle: kernel folders, the package as a private dataset, and the `kaggle` CLI calls.

``python -m ddpm_helpers.kaggle --user NAME`` (or the ``kaggle`` subcommand of ``python -m ddpm_helpers``) writes

    build/kaggle/ddpm-helpers-code/         ddpm_helpers/ + dataset-metadata.json   (kaggle datasets create/version)
    build/kaggle/kernels/<slug>/            <notebook>.ipynb + kernel-metadata.json  (kaggle kernels push)

and prints the commands to upload them; ``--push`` uploads them through the kaggle package's Python API, in
order: the package dataset (waiting until Kaggle has processed it), notebooks 01–04, and 05 only after 04's
version has completed (``--wait``; without it, the command says how to push 05 later). Every server-side error
(an invalid source, a failed push, a failed dataset) stops the command with Kaggle's message.

Kernels: internet off, CelebA (jessicali9530/celeba-dataset) and the package dataset attached. Only the
notebooks that train or sample at scale (04, 05) ask for GPU T4×2 (``machine_shape`` NvidiaTeslaT4); 01–03 run on
a CPU and spend no GPU quota. 04 lists itself as a kernel source (each version resumes from the previous one's
output); 05 lists 04 (it samples 04's model). In the notebook, the first cell finds the package under
/kaggle/input in either mount scheme, unpacked or as the uploaded archive.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ._types import PathLike
from .errors import MissingDependencyError
from .files import write_json

CELEBA_DATASET = "jessicali9530/celeba-dataset"
PACKAGE_DATASET_SLUG = "ddpm-helpers-code"
MACHINE_SHAPE = "NvidiaTeslaT4"  # GPU T4 ×2 (kaggle-cli PR #1198); enable_gpu alone may give a retired P100
TRAINING_NOTEBOOK = re.compile(r"^04_|train", re.IGNORECASE)  # these chain runs: each version resumes from the last
SAMPLING_NOTEBOOK = re.compile(r"^05_|sampl", re.IGNORECASE)   # these read the training notebook's output
# Kaggle's dataset licence names (kaggle-cli docs/datasets_metadata.md) have no "MIT": "other" + the description.
PACKAGE_LICENSE = "other"
PACKAGE_DESCRIPTION = ("The ddpm_helpers Python package (DDPM on CelebA: schedule, U-Net, training, samplers) for the "
                       "notebook series. Code licence: MIT (see LICENSE in the repository). CelebA itself is not "
                       "included; it has its own non-commercial research licence.")


class KagglePushError(RuntimeError):
    """Kaggle refused an upload or a run failed; the message is Kaggle's own."""


def uses_gpu(notebook_path: PathLike) -> bool:
    """Whether a notebook needs a GPU on Kaggle: training (04) and sampling (05) do; 01–03 run on a CPU."""
    stem = Path(notebook_path).stem
    return bool(TRAINING_NOTEBOOK.search(stem) or SAMPLING_NOTEBOOK.search(stem))


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
    sees the previous version's /kaggle/working output under /kaggle/input and can resume from it; sampling
    notebooks (05_*) list the training kernels, so they sample the trained model. Only those two ask for a GPU.
    Returns the folders, sorted.
    """
    notebooks = sorted(Path(notebooks_dir).glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {notebooks_dir}")
    training = [f"{username}/{kernel_slug(nb)}" for nb in notebooks if TRAINING_NOTEBOOK.search(nb.stem)]
    folders = []
    for nb in notebooks:
        slug = kernel_slug(nb)
        if TRAINING_NOTEBOOK.search(nb.stem):
            sources = [f"{username}/{slug}"]          # its own previous version: resume
        elif SAMPLING_NOTEBOOK.search(nb.stem):
            sources = training                        # the training notebook's output: its checkpoints
        else:
            sources = []
        folder = Path(out_dir) / slug
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(nb, folder / nb.name)
        meta = kernel_metadata(nb, username, slug, kernel_sources=sources, gpu=uses_gpu(nb))
        write_json(folder / "kernel-metadata.json", meta)
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
    if (Path(repo_root) / "LICENSE").is_file():
        shutil.copyfile(Path(repo_root) / "LICENSE", folder / "LICENSE")
    write_json(folder / "dataset-metadata.json", {"title": PACKAGE_DATASET_SLUG,
                                                   "id": f"{username}/{PACKAGE_DATASET_SLUG}",
                                                   "licenses": [{"name": PACKAGE_LICENSE}],
                                                   "description": PACKAGE_DESCRIPTION})
    return folder


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


# ---------------------------------------------------------------------------------------------
# Pushing through the kaggle package's Python API
# ---------------------------------------------------------------------------------------------
def kaggle_api():
    """An authenticated kaggle.api.kaggle_api_extended.KaggleApi (``import kaggle`` would exit without credentials)."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # optional: the Kaggle API, only for --push
    except ImportError:
        raise MissingDependencyError("kaggle --push needs the kaggle package, which is not installed: "
                                     "pip install kaggle") from None
    api = KaggleApi()
    api.authenticate()
    return api


def _name(status) -> str:
    """A status as a lower-case word: enum members (KernelWorkerStatus.COMPLETE) and strings alike."""
    return str(getattr(status, "name", status)).split(".")[-1].lower()


def _is_not_found(exc: Exception) -> bool:
    return getattr(getattr(exc, "response", None), "status_code", None) == 404


def wait_for(read_status: Callable[[], tuple], what: str, done: Sequence[str], failed: Sequence[str],
             poll_s: float = 30.0, timeout_s: float = 3600.0, sleep=time.sleep, clock=time.monotonic) -> str:
    """Poll read_status() → (status, message) until it is in done (returned) or failed (KagglePushError)."""
    start, last = clock(), None
    while True:
        status, message = read_status()
        status = _name(status)
        if status != last:
            print(f"  {what}: {status}", flush=True)
            last = status
        if status in done:
            return status
        if status in failed:
            raise KagglePushError(f"{what} ended with status {status!r}" + (f": {message}" if message else ""))
        if clock() - start > timeout_s:
            raise KagglePushError(f"{what} still {status!r} after {timeout_s:.0f} s; check it on kaggle.com")
        sleep(poll_s)


def push_dataset(api, folder: PathLike, message: str, **wait) -> str:
    """Create or version the dataset in folder (directories uploaded as tar), then wait until Kaggle has it ready."""
    ref = json.loads((Path(folder) / "dataset-metadata.json").read_text())["id"]
    try:
        api.dataset_status(ref)
        exists = True
    except Exception as exc:  # noqa: BLE001 - the API raises requests' HTTPError; only 404 means "not there yet"
        if getattr(exc, "response", None) is None:
            raise KagglePushError(f"cannot reach Kaggle ({type(exc).__name__}: {exc}); check the connection") from exc
        if not _is_not_found(exc):
            raise KagglePushError(f"cannot read the status of dataset {ref}: {exc}") from exc
        exists = False
    print(f"$ kaggle datasets {'version' if exists else 'create'} -p {folder} --dir-mode tar", flush=True)
    if exists:
        response = api.dataset_create_version(str(folder), message, quiet=True, dir_mode="tar")
    else:
        response = api.dataset_create_new(str(folder), quiet=True, dir_mode="tar")
    error = getattr(response, "error", None)
    if response is None or error or _name(getattr(response, "status", "ok")) not in ("ok", ""):
        raise KagglePushError(f"dataset {ref}: {error or 'Kaggle returned no response'}")
    wait_for(lambda: (api.dataset_status(ref), ""), f"dataset {ref}", done=("ready",),
             failed=("failed", "deleted", "error"), **wait)
    return ref


def push_kernel(api, folder: PathLike) -> str:
    """Push one kernel folder; raise KagglePushError with Kaggle's message if the server refuses any part of it."""
    meta = json.loads((Path(folder) / "kernel-metadata.json").read_text())
    print(f"$ kaggle kernels push -p {folder}", flush=True)
    response = api.kernels_push(str(folder))
    if response is None:
        raise KagglePushError(f"Kernel push error for {meta['id']}: Kaggle returned no response")
    problems = [getattr(response, "error", None)]
    for field in ("dataset", "competition", "kernel", "model"):
        invalid = getattr(response, f"invalid_{field}_sources", None)
        if invalid:
            problems.append(f"invalid {field} sources {list(invalid)}")
    problems = [p for p in problems if p]
    if problems:
        raise KagglePushError(f"Kernel push error for {meta['id']}: " + "; ".join(problems))
    version = getattr(response, "version_number", None)
    print(f"  {meta['id']}: version {version} pushed, running: {getattr(response, 'url', '')}", flush=True)
    return meta["id"]


def wait_for_kernel(api, ref: str, **wait) -> str:
    """Wait until kernel ref's newest version has finished; KagglePushError if it failed or was cancelled."""
    def read():
        response = api.kernels_status(ref)
        return response.status, getattr(response, "failure_message", "")
    return wait_for(read, f"kernel {ref}", done=("complete",),
                    failed=("error", "cancel_requested", "cancel_acknowledged"), **wait)


def push_all(api, dataset: PathLike, kernels: Sequence[PathLike], message: str, wait: bool = False,
             **poll) -> list[str]:
    """Dataset first (ready before anything uses it), then every kernel; a sampling kernel only after the
    training kernels it reads have completed (wait=True), else it is left out and the command says how to push it.
    Returns the ids pushed."""
    pushed = [push_dataset(api, dataset, message, **poll)]
    later = [k for k in kernels if SAMPLING_NOTEBOOK.search(Path(k).name.replace("ddpm-", "", 1))]
    for folder in [k for k in kernels if k not in later]:
        pushed.append(push_kernel(api, folder))
    training = [ref for ref in pushed if TRAINING_NOTEBOOK.search(ref.split("/")[-1].replace("ddpm-", "", 1))]
    for folder in later:
        if not wait:
            print(f"\nNot pushed yet: {Path(folder).name}, which samples the model of {', '.join(training)}. "
                  f"Once that version has completed (kaggle kernels status {' '.join(training) or '<ref>'}), run:\n"
                  f"  kaggle kernels push -p {folder}\n(or rerun this command with --wait, which waits for it).")
            continue
        for ref in training:
            wait_for_kernel(api, ref, **poll)
        pushed.append(push_kernel(api, folder))
    return pushed


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
# The flags of `python -m ddpm_helpers kaggle` are declared in cli.py (add_kaggle_arguments), the one command-line
# module: add a new flag there and read it here from args.
def run_kaggle(args, api=None) -> int:
    """Write the dataset and kernel folders (args: the flags of cli.add_kaggle_arguments); print the kaggle
    commands, or with --push upload them through the kaggle package's API (api: a KaggleApi, or a stand-in in
    tests). Returns an exit code."""
    out = Path(args.out)
    dataset = write_package_dataset(args.repo_root, out, args.user)
    kernels = write_kernel_dirs(args.notebooks, out / "kernels", args.user)
    print(f"wrote {dataset} and {len(kernels)} kernel folders under {out / 'kernels'}")
    if not args.push:
        print("\nTo upload, in this order (add --push to do it; --push --wait also waits for 04 before 05):")
        print(f"  kaggle datasets create -p {dataset} --dir-mode tar    # the first time; later: "
              f"kaggle datasets version -p {dataset} --dir-mode tar -m {shlex.quote(args.message)}")
        print(f"  kaggle datasets status {args.user}/{PACKAGE_DATASET_SLUG}    # until it says ready")
        training = " ".join(f"{args.user}/{k.name}" for k in kernels if TRAINING_NOTEBOOK.search(k.name))
        for folder in kernels:
            if SAMPLING_NOTEBOOK.search(folder.name.replace("ddpm-", "", 1)):
                print(f"  # only once that version has completed (kaggle kernels status {training}):")
            print(f"  kaggle kernels push -p {folder}")
        return 0
    if api is None:
        if importlib.util.find_spec("kaggle") is None:
            print("The kaggle package is not installed: pip install kaggle (then put your API token in "
                  "~/.kaggle/kaggle.json).")
            return 2
        if not kaggle_credentials_found():
            print("No Kaggle credentials: download an API token (kaggle.com → Settings → API → Create New Token) to "
                  "~/.kaggle/kaggle.json and chmod 600 it, or set KAGGLE_USERNAME and KAGGLE_KEY.")
            return 2
        api = kaggle_api()
    try:
        push_all(api, dataset, kernels, args.message, wait=args.wait, poll_s=args.poll)
    except (KagglePushError, ValueError) as exc:    # ValueError: the kaggle package's own checks of a folder
        print(f"Upload stopped: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - an HTTP error from the server: show what the server said
        if getattr(exc, "response", None) is None:
            raise
        print(f"Upload stopped, Kaggle answered: {exc}\n{getattr(exc.response, 'text', '')}")
        return 1
    print(f"\nFollow a run with: kaggle kernels status {args.user}/<slug>; fetch its output with "
          f"kaggle kernels output {args.user}/<slug> -p out/")
    return 0


if __name__ == "__main__":
    # `python -m ddpm_helpers.kaggle ...` = `python -m ddpm_helpers kaggle ...`, run in a child process so that this
    # module, below the command line in the layer table, never imports it.
    raise SystemExit(subprocess.call([sys.executable, "-m", "ddpm_helpers", "kaggle", *sys.argv[1:]]))
