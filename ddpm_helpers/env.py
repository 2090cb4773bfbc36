"""Where the code runs: Kaggle, Colab or CI, and Kaggle's input and working folders.

Foundation layer: imports nothing of the package. Kaggle is recognised by its own environment variable
``KAGGLE_KERNEL_RUN_TYPE`` (``Batch`` for a saved version, ``Interactive`` in the editor), never by the mere
existence of a ``/kaggle`` folder. ``$DDPM_KAGGLE_ROOT`` moves ``/kaggle`` (the Kaggle stand-in in tests/ points
it at a temporary tree); ``$DDPM_KAGGLE_INPUT`` moves only the input.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional

KAGGLE_ROOT = Path("/kaggle")  # overridden by $DDPM_KAGGLE_ROOT (the stand-in points it at a temporary tree)
FALSE_WORDS = ("", "0", "false", "no", "off")


def kaggle_root(environ: Optional[Mapping[str, str]] = None) -> Path:
    """/kaggle, or $DDPM_KAGGLE_ROOT when set."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("DDPM_KAGGLE_ROOT") or KAGGLE_ROOT)


def kaggle_input_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """<kaggle root>/input, or $DDPM_KAGGLE_INPUT when set."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("DDPM_KAGGLE_INPUT") or kaggle_root(environ) / "input")


def kaggle_working_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """<kaggle root>/working: the folder Kaggle saves as a version's output."""
    return kaggle_root(environ) / "working"


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() not in FALSE_WORDS


def is_small_forced(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True in CI (env CI set to anything but 0/false/no/off) or when DDPM_SMALL=1."""
    environ = os.environ if environ is None else environ
    return _flag(environ, "CI") or _flag(environ, "DDPM_SMALL")


def is_kaggle(environ: Optional[Mapping[str, str]] = None) -> bool:
    """A Kaggle notebook: Kaggle's own KAGGLE_KERNEL_RUN_TYPE is set (Batch or Interactive).

    A /kaggle/working folder alone proves nothing (a CI machine may have one).
    """
    environ = os.environ if environ is None else environ
    return bool(environ.get("KAGGLE_KERNEL_RUN_TYPE", "").strip())


def is_colab(environ: Optional[Mapping[str, str]] = None) -> bool:
    """A Google Colab runtime: google.colab is imported or COLAB_RELEASE_TAG is set."""
    environ = os.environ if environ is None else environ
    return "google.colab" in sys.modules or bool(environ.get("COLAB_RELEASE_TAG"))
