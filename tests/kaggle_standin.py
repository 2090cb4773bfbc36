"""A Kaggle stand-in: runs notebooks the way a Kaggle "Save Version" does, in a temporary tree, for CI.

Each :meth:`KaggleStandIn.run` is one version of one kernel (a folder with kernel-metadata.json, as
``python -m ddpm_helpers kaggle`` writes it):

* ``<root>/kaggle`` stands in for ``/kaggle`` (the notebooks find it through ``$DDPM_KAGGLE_ROOT``; the real
  ``/kaggle`` is never touched). It is rebuilt empty for every version: ``input/``, ``working/`` (the kernel's
  cwd), ``temp/``.
* ``dataset_sources`` are copied in from the folders given to the stand-in, ``kernel_sources`` from the saved
  output of the newest version of each source kernel: ``input/datasets/<owner>/<slug>`` and
  ``input/notebooks/<owner>/<slug>`` (mount scheme "current"), or ``input/<slug>`` for both ("legacy").
* Inputs are read-only (chmod a-w). CI runs as root, where chmod stops nothing, so every input file's content
  hash is also compared after the version: a write fails the run (InputsModified).
* The kernel gets Kaggle's own environment variables (KAGGLE_KERNEL_RUN_TYPE=Batch, KAGGLE_URL_BASE,
  KAGGLE_DATA_PROXY_*, ...) and none of this machine's data shortcuts (DDPM_SHARED_DATA, CELEBA_DIR, ...).
* A session time limit ends the kernel as Kaggle does: SIGTERM, a short grace, then SIGKILL; the cells after it
  never run. ``cut_when(working)`` ends it the same way at a chosen moment (tests use it to cut a run right
  after its first checkpoint, which a wall-clock limit on a busy machine cannot promise).
* Whatever is in ``working/`` at the end, finished or cut off, is saved as the version's output
  (``<root>/versions/<owner>/<slug>/<N>/output``), next to the executed notebook.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

# What a Kaggle kernel sees (a saved version's environment, as printed from os.environ on Kaggle).
KAGGLE_ENV = {
    "KAGGLE_KERNEL_RUN_TYPE": "Batch",
    "KAGGLE_URL_BASE": "https://www.kaggle.com",
    "KAGGLE_DATA_PROXY_URL": "https://dp.kaggle.net",
    "KAGGLE_DATA_PROXY_PROJECT": "kaggle-161607",
    "KAGGLE_DATA_PROXY_TOKEN": "stand-in",
    "KAGGLE_USER_SECRETS_TOKEN": "stand-in",
    "KAGGLE_KERNEL_INTEGRATIONS": "",
    "MPLBACKEND": "agg",
}
# This machine's shortcuts that a Kaggle kernel would not have.
NOT_ON_KAGGLE = ("DDPM_SHARED_DATA", "CELEBA_DIR", "DDPM_FIGURES_DIR", "DDPM_KAGGLE_INPUT", "PYTHONPATH", "CI",
                 "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR")


class InputsModified(AssertionError):
    """A kernel wrote under /kaggle/input, which is read-only on Kaggle."""


@dataclass(frozen=True)
class Version:
    """One finished version: how it ended, its saved output and the executed notebook."""

    kernel: str            # owner/slug
    number: int
    status: str            # "complete", "time limit" or "error"
    output: Path           # the saved /kaggle/working
    notebook: Path         # the executed notebook, with its outputs
    seconds: float
    error: str = ""

    def text(self) -> str:
        """Everything the notebook printed (stream outputs and text results), in order."""
        nb = nbformat.read(self.notebook, as_version=4)
        parts = []
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
        return "".join(parts)


def _make_read_only(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)


def _make_writable(root: Path) -> None:
    if not root.exists():
        return
    root.chmod(0o755)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def tree_digest(root: Path) -> dict:
    """{relative path: sha1 of the content} for every file under root (what 'nothing changed' is checked with)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class KaggleStandIn:
    """Kaggle, as far as a notebook can tell, in root (a temporary folder)."""

    def __init__(self, root, datasets: Mapping[str, Path], scheme: str = "current", grace_s: float = 2.0,
                 extra_env: Optional[Mapping[str, str]] = None, cell_timeout_s: int = 600):
        if scheme not in ("current", "legacy"):
            raise ValueError(f"scheme must be 'current' or 'legacy', not {scheme!r}")
        self.root, self.datasets, self.scheme = Path(root), dict(datasets), scheme
        self.grace_s, self.extra_env, self.cell_timeout_s = grace_s, dict(extra_env or {}), cell_timeout_s
        self.kaggle = self.root / "kaggle"
        self.versions: dict[str, list[Version]] = {}

    # -- the /kaggle tree ---------------------------------------------------------------------------
    def _mount_point(self, kind: str, ref: str) -> Path:
        owner, slug = ref.split("/")
        if self.scheme == "legacy":
            return self.kaggle / "input" / slug
        return self.kaggle / "input" / kind / owner / slug

    def _fresh_tree(self, meta: dict) -> None:
        _make_writable(self.kaggle)
        shutil.rmtree(self.kaggle, ignore_errors=True)
        for name in ("input", "working", "temp"):
            (self.kaggle / name).mkdir(parents=True)
        for ref in meta.get("dataset_sources", []):
            if ref not in self.datasets:
                raise KeyError(f"dataset source {ref} is not one of the stand-in's datasets {sorted(self.datasets)}")
            shutil.copytree(self.datasets[ref], self._mount_point("datasets", ref))
        for ref in meta.get("kernel_sources", []):
            done = self.versions.get(ref)
            if done:                                   # Kaggle mounts the newest version's output
                shutil.copytree(done[-1].output, self._mount_point("notebooks", ref))
        _make_read_only(self.kaggle / "input")

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in NOT_ON_KAGGLE}
        env.update(KAGGLE_ENV, DDPM_KAGGLE_ROOT=str(self.kaggle), PWD=str(self.kaggle / "working"), **self.extra_env)
        return env

    # -- one version ----------------------------------------------------------------------------------
    def run(self, kernel_dir, time_limit_s: Optional[float] = None,
            cut_when: Optional[Callable[[Path], bool]] = None) -> Version:
        """Run kernel_dir's notebook as its next version; return how it ended (never raises for the notebook's
        errors)."""
        kernel_dir = Path(kernel_dir)
        meta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
        ref, number = meta["id"], len(self.versions.get(meta["id"], [])) + 1
        self._fresh_tree(meta)
        before = tree_digest(self.kaggle / "input")
        working = self.kaggle / "working"
        nb = nbformat.read(kernel_dir / meta["code_file"], as_version=4)
        client = NotebookClient(nb, timeout=self.cell_timeout_s, kernel_name="python3",
                                resources={"metadata": {"path": str(working)}})
        cut = threading.Event()
        stop_watch = threading.Event()
        start = time.monotonic()
        watchdog = threading.Thread(target=self._watch, args=(client, start, time_limit_s, cut_when, working, cut,
                                                              stop_watch), daemon=True)
        watchdog.start()
        status, error = "complete", ""
        try:
            client.execute(env=self.environment(), cwd=str(working))
        except (DeadKernelError, CellExecutionError, RuntimeError) as exc:
            status, error = ("time limit", "") if cut.is_set() else ("error", str(exc)[-3000:])
        finally:
            stop_watch.set()
            watchdog.join()
        seconds = time.monotonic() - start
        changed = tree_digest(self.kaggle / "input") != before
        saved = self.root / "versions" / ref / str(number)
        shutil.copytree(working, saved / "output", symlinks=True)
        nbformat.write(nb, saved / meta["code_file"])
        version = Version(ref, number, status, saved / "output", saved / meta["code_file"], seconds, error)
        self.versions.setdefault(ref, []).append(version)
        if changed:
            raise InputsModified(f"{ref} version {number} changed files under /kaggle/input (read-only on Kaggle)")
        return version

    def _watch(self, client, start, limit, cut_when, working, cut, stop) -> None:
        """End the kernel (SIGTERM, grace, SIGKILL) at the time limit or when cut_when(working) turns true."""
        while not stop.wait(0.2):
            over = limit is not None and time.monotonic() - start > limit
            if not (over or (cut_when is not None and cut_when(working))):
                continue
            process = getattr(getattr(getattr(client, "km", None), "provisioner", None), "process", None)
            if process is None:
                continue
            cut.set()
            process.send_signal(signal.SIGTERM)
            if stop.wait(self.grace_s) or process.poll() is not None:
                return
            process.kill()
            return
