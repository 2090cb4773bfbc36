"""What the first cell of every notebook calls: where am I, what hardware and data do I have, how big a run?

The first code cell of each notebook (identical in all of them) makes ``ddpm_helpers`` importable and then
runs ``RUN = setup()``. ``setup`` detects the environment (a clone, Kaggle, Colab, CI), finds CelebA, picks
the full or the small configuration, prints one line that says which, and returns a frozen :class:`Run`.

The cell has to find the package before it can import it, so it carries a short copy of
:func:`find_package_source` (and unpacks the package when Kaggle kept the uploaded archive as a ``.tar``/``.zip``);
tests/test_kaggle.py runs both on the same fake ``/kaggle/input`` trees.

Kaggle is recognised by its own environment variable ``KAGGLE_KERNEL_RUN_TYPE`` (``Batch`` for a saved version,
``Interactive`` in the editor), never by the mere existence of a ``/kaggle`` folder. ``$DDPM_KAGGLE_ROOT`` moves
``/kaggle`` (the Kaggle stand-in in tests/ points it at a temporary tree); ``$DDPM_KAGGLE_INPUT`` moves only the input.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from . import env
from ._types import PathLike, moved_names
from .cache import cache_dir_for
from .celeba import DataNotFoundError, find_celeba
from .config import TRAIN_PRESETS, DataConfig, parse_duration, train_preset
from .env import is_colab, is_kaggle, is_small_forced, kaggle_input_dir, kaggle_working_dir

PACKAGE = "ddpm_helpers"
REFRESH_FIGURES_ENV = "DDPM_REFRESH_FIGURES"   # =1: a notebook in a clone rewrites the committed figures/
PACKAGE_SEARCH_DEPTH = 5  # look at depths 0–4: /kaggle/input/datasets/<owner>/<slug>/ddpm_helpers is at depth 3


@dataclass(frozen=True)
class Run:
    """Where a notebook runs and how big its run is.

    on_kaggle, on_colab: the hosting service. in_ci: env CI is set or DDPM_SMALL=1 (always the small run).
    device: "cuda" or "cpu"; n_gpus: visible CUDA devices. celeba: the CelebALocation found, or None
    (then the notebooks use the offline LFW faces). celeba_is_sample: celeba is the small test sample
    ($DDPM_SHARED_DATA/celeba_sample).
    full: True only on a GPU, with the real CelebA, outside CI. figures_dir: where figures go (runs/figures in a
    clone, its figures/ with DDPM_REFRESH_FIGURES=1, /kaggle/working/figures on Kaggle). out_dir: runs,
    checkpoints and samples (the repository's runs/ in a clone, /kaggle/working on Kaggle). repo_root: the
    clone's root, or None.
    model_figures_dir: where figures drawn from a trained model go (notebooks 04 and 05): figures_dir in the full
    run, on Kaggle or when $DDPM_FIGURES_DIR is set (CI); else out_dir/figures_small, so that a small model's
    figures never land over the committed ones in the repository's figures/.
    """

    on_kaggle: bool
    on_colab: bool
    in_ci: bool
    device: str
    n_gpus: int
    full: bool
    celeba: Optional[Any]
    celeba_is_sample: bool
    figures_dir: Path
    out_dir: Path
    repo_root: Optional[Path]
    started: float = 0.0   # time.time() when setup() ran: a Kaggle session's clock starts with the first cell
    model_figures_dir: Optional[Path] = None

    def elapsed(self) -> float:
        """Seconds since setup() ran."""
        return time.time() - self.started

    def pick(self, small, full):
        """The value for this run size: ``RUN.pick(small=32, full=64)``."""
        return full if self.full else small

    def describe(self) -> str:
        """The one-line announcement that setup() prints."""
        gpus = f"cuda ×{self.n_gpus}" if self.device == "cuda" else "CPU"
        if self.celeba is None:
            data = "no CelebA found → offline LFW faces"
        elif self.celeba_is_sample:
            data = f"CelebA test sample at {self.celeba.image_dir}"
        else:
            data = f"CelebA at {self.celeba.image_dir}"
        where = "Kaggle" if self.on_kaggle else "Colab" if self.on_colab else "CI" if self.in_ci else "local"
        size = "Full run" if self.full else "Small configuration"
        return f"{size} ({where}): {gpus}, {data}, figures to {self.figures_dir}, outputs to {self.out_dir}"

# Names that lived here before issue 19 (environment detection moved to env): see moved_names.
__getattr__ = moved_names(__name__, {n: env for n in ("kaggle_root", "KAGGLE_ROOT", "FALSE_WORDS")})


# ---------------------------------------------------------------------------------------------
# Finding the package (what the first cell does before it can import anything)
# ---------------------------------------------------------------------------------------------
def find_package_source(kaggle_input: Optional[PathLike] = None, cwd: Optional[PathLike] = None) -> Optional[Path]:
    """Where to import ddpm_helpers from when it is not installed: a folder to put on sys.path, or a wheel.

    Looks, in order, for ``ddpm_helpers/__init__.py`` in cwd's parent (a clone: notebooks/ is one level
    under the repository root), in cwd, in cwd's sub-folders (Colab after ``git clone``), then under
    kaggle_input at depths 0–4 for a ``ddpm_helpers`` folder, a ``ddpm_helpers*.whl``, or the uploaded
    ``ddpm_helpers.tar``/``.zip`` when Kaggle did not unpack it (both mount schemes:
    ``/kaggle/input/<slug>/`` and ``/kaggle/input/datasets/<owner>/<slug>/``). The depth bound keeps the
    search out of CelebA's 202,599 JPEGs. Returns the folder that holds ``ddpm_helpers/``, the wheel or archive, or
    None.
    """
    here = Path(cwd) if cwd is not None else Path.cwd()
    kaggle_input = Path(kaggle_input) if kaggle_input is not None else kaggle_input_dir()
    hits = [here.parent / PACKAGE, here / PACKAGE, *sorted(here.glob(f"*/{PACKAGE}"))]
    hits += [p for depth in range(PACKAGE_SEARCH_DEPTH)
             for p in sorted(kaggle_input.glob("*/" * depth + PACKAGE + "*"))]
    for p in hits:
        if p.suffix in (".whl", ".tar", ".zip") and p.is_file():   # an archive: the first cell unpacks it
            return p
        if (p / "__init__.py").is_file():
            return p.parent
    return None


# ---------------------------------------------------------------------------------------------
# Detecting the environment
# ---------------------------------------------------------------------------------------------
def cuda_devices() -> int:
    """Number of usable CUDA devices: 0 without CUDA, or when a first tiny op fails (e.g. a P100 without sm_60
    kernels)."""
    if not torch.cuda.is_available():
        return 0
    try:
        (torch.zeros(1, device="cuda") + 1).item()
    except Exception as exc:  # noqa: BLE001 - any CUDA failure means: run on the CPU
        print(f"CUDA is visible but unusable ({type(exc).__name__}: {exc}); using the CPU.")
        return 0
    return torch.cuda.device_count()


def repository_root() -> Optional[Path]:
    """The clone this package was imported from (the folder holding pyproject.toml and ddpm_helpers/), or None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def locate_celeba(kaggle_input: Optional[PathLike] = None, repo_root: Optional[PathLike] = None,
                  environ: Optional[Mapping[str, str]] = None):
    """Find CelebA for a notebook: returns (CelebALocation or None, whether it is the test sample).

    Order: $CELEBA_DIR (final: a wrong path raises DataNotFoundError), kaggle_input, ./data, <repo>/data,
    then the test sample $DDPM_SHARED_DATA/celeba_sample. Never downloads.
    """

    environ = os.environ if environ is None else environ
    kaggle_input = Path(kaggle_input) if kaggle_input is not None else kaggle_input_dir(environ)
    if environ.get("CELEBA_DIR"):
        return find_celeba(environ["CELEBA_DIR"]), False
    places = [None] + ([Path(repo_root) / "data"] if repo_root is not None else [])
    for root in places:
        if root is not None and not root.is_dir():
            continue
        try:
            return find_celeba(root, kaggle_input), False
        except DataNotFoundError:
            pass
    shared = environ.get("DDPM_SHARED_DATA")
    if shared and (Path(shared) / "celeba_sample").is_dir():
        try:
            return find_celeba(Path(shared) / "celeba_sample"), True
        except DataNotFoundError:
            pass
    return None, False


def setup(kaggle_input: Optional[PathLike] = None, kaggle_working: Optional[PathLike] = None,
          environ: Optional[Mapping[str, str]] = None, announce: bool = True) -> Run:
    """Detect the environment, find CelebA, choose the run size, make the output folders, print one line.

    kaggle_input defaults to /kaggle/input, kaggle_working to /kaggle/working (both under $DDPM_KAGGLE_ROOT,
    or $DDPM_KAGGLE_INPUT); environ to os.environ. Kaggle is recognised by KAGGLE_KERNEL_RUN_TYPE only.

    full = a usable GPU, the real CelebA (not the test sample) and not CI/DDPM_SMALL.
    Figures go to $DDPM_FIGURES_DIR if set, else <repo>/runs/figures in a clone (ignored by git: a notebook
    never rewrites the committed figures unless DDPM_REFRESH_FIGURES=1 asks, and the CelebA sample they were
    made from is found: then <repo>/figures), /kaggle/working/figures on Kaggle, ./figures elsewhere; outputs to
    <repo>/runs, /kaggle/working, or ./runs.
    """
    started = time.time()
    environ = os.environ if environ is None else environ
    kaggle_working = Path(kaggle_working) if kaggle_working is not None else kaggle_working_dir(environ)
    kaggle_input = Path(kaggle_input) if kaggle_input is not None else kaggle_input_dir(environ)
    on_kaggle, on_colab, in_ci = is_kaggle(environ), is_colab(environ), is_small_forced(environ)
    repo_root = None if on_kaggle else repository_root()
    n_gpus = cuda_devices()
    celeba, is_sample = locate_celeba(kaggle_input, repo_root, environ)
    refresh = environ.get(REFRESH_FIGURES_ENV, "") not in ("", "0")
    if on_kaggle:
        figures_dir, out_dir = Path(kaggle_working) / "figures", Path(kaggle_working)
    elif repo_root is not None:   # the committed figures/ only when asked, and only from the data they were made from
        if refresh and not is_sample:
            print(f"{REFRESH_FIGURES_ENV}=1 ignored: the committed figures were made from the 32-image CelebA "
                  "sample, which was not found; figures go to runs/figures")
        keep = refresh and is_sample
        figures_dir, out_dir = repo_root / ("figures" if keep else "runs/figures"), repo_root / "runs"
    else:
        figures_dir, out_dir = Path.cwd() / "figures", Path.cwd() / "runs"
    if environ.get("DDPM_FIGURES_DIR"):
        figures_dir = Path(environ["DDPM_FIGURES_DIR"])
    figures_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = bool(n_gpus and celeba is not None and not is_sample and not in_ci)
    keep_apart = not (full or on_kaggle or environ.get("DDPM_FIGURES_DIR"))
    model_figures_dir = out_dir / "figures_small" if keep_apart else figures_dir
    run = Run(on_kaggle=on_kaggle, on_colab=on_colab, in_ci=in_ci, device="cuda" if n_gpus else "cpu",
              n_gpus=n_gpus, full=full, celeba=celeba, celeba_is_sample=is_sample, figures_dir=figures_dir,
              out_dir=out_dir, repo_root=repo_root, started=started, model_figures_dir=model_figures_dir)
    if announce:
        print(run.describe())
    return run


def small_training_config(run: Run, out_name: str, environ: Optional[Mapping[str, str]] = None):
    """The training configuration notebooks 04 and 05 share in their small (CPU, CI) mode.

    Data: 500 of the 5,000 half-size CelebA images when $DDPM_SHARED_DATA holds them (CI), else CelebA
    itself when it was found (a machine without a GPU, or the Kaggle stand-in), else 80 of the offline LFW
    faces (grayscale; 20 held out); 16 px. Model and optimiser: the ``cpu`` preset's; 800 steps or 45 s, one CPU thread.
    $DDPM_SMALL_MAX_STEPS lowers the step count (the Kaggle stand-in's budget; announced when used). The
    two notebooks call this with different ``out_name`` and otherwise the same settings, so 05 can reuse 04's
    checkpoint. The image cache goes where cache.cache_dir_for says (reused from a previous Kaggle version).
    """
    env = os.environ if environ is None else environ
    shared = env.get("DDPM_SHARED_DATA")
    half_size = Path(shared) / "celeba_5k_half" if shared else None
    if half_size is not None and half_size.is_dir():
        source = half_size
    elif run.celeba is not None and not run.celeba_is_sample:
        source = Path(run.celeba.image_dir)
    else:
        source = None
    data = DataConfig(root=str(source) if source else None, max_images=500 if source else None, image_size=16,
                      channels=3 if source else 1)
    data = dataclasses.replace(data, cache_dir=str(cache_dir_for(run, data)))
    model = dataclasses.replace(TRAIN_PRESETS["cpu"].model, in_channels=data.channels, out_channels=data.channels)
    steps = int(env.get("DDPM_SMALL_MAX_STEPS") or 800)
    if steps != 800:
        print(f"small budget from $DDPM_SMALL_MAX_STEPS: {steps} steps instead of 800")
    return train_preset("cpu", model=model, data=data, out_dir=str(run.out_dir / out_name), batch_size=32,
                        warmup_steps=min(100, steps // 4), max_steps=steps, time_budget=45.0, sample_every=0,
                        sample_n=16, sample_steps=20, checkpoint_every=max(1, min(100, steps // 8)), log_every=10,
                        num_threads=1)


def full_training_config(run: Run, preset: str, time_budget):
    """The full run of notebook 04: preset on the CelebA found, in run.out_dir/preset, with a session's time budget.

    time_budget ("11h30m", seconds) is the whole session's, counted from the notebook's start by
    session.run_training; the cache is placed by cache.cache_dir_for (reused from a previous version).
    """
    data = dataclasses.replace(TRAIN_PRESETS[preset].data, root=str(run.celeba.image_dir))
    data = dataclasses.replace(data, cache_dir=str(cache_dir_for(run, data)))
    return train_preset(preset, data=data, out_dir=str(run.out_dir / preset), time_budget=parse_duration(time_budget))
