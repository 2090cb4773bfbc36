"""One training per run folder: a lock file in --out naming its holder, taken over when its holder is dead.

``train.lock`` holds the holder's pid, host and start time (JSON). A second training on the folder
refuses with a message naming the holder; a lock whose process no longer exists on this host (a run
killed with SIGKILL, a crashed notebook kernel) is taken over with a message. A lock held from another
host cannot be checked and is never taken over: the message says how to remove it. Under torchrun only
rank 0 takes the lock. The lock is released on every exit path that runs Python code: normal end,
exception, Ctrl-C, SIGTERM (see runtime.sigterm_exits).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ._types import PathLike
from .runtime import TrainingError

LOCK_NAME = "train.lock"


class RunFolderBusyError(TrainingError):
    """Another training holds the run folder's lock."""


class RunFolderNotWritableError(TrainingError):
    """The run folder cannot be created or written (permission, read-only file system, no space)."""


def not_writable(folder: Path, exc: OSError) -> RunFolderNotWritableError:
    """The error for an OS error while creating or writing the run folder, saying what to do."""
    return RunFolderNotWritableError(
        f"cannot write to the run folder {folder}: {exc.strerror or exc}. Choose a writable --out "
        f"(for example under your home folder, or /kaggle/working on Kaggle), or free some space.")


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def read_lock(path: PathLike) -> Optional[Dict[str, Any]]:
    """The lock's record {pid, host, started}, or None when the file is missing or unreadable."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None
    except (OSError, ValueError):
        return None


class RunFolderLock:
    """Context manager owning ``folder`` for one training (see the module docstring). enabled=False: a no-op."""

    def __init__(self, folder: PathLike, enabled: bool = True, log: Callable[[str], None] = print):
        self.folder, self.enabled, self.log = Path(folder), enabled, log
        self.path = self.folder / LOCK_NAME
        self.held = False

    def __enter__(self) -> "RunFolderLock":
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise not_writable(self.folder, e) from e
        for _ in range(3):
            if self._create():
                self.held = True
                return
            holder = self._holder()
            if not self._is_stale(holder):
                raise RunFolderBusyError(self._busy_message(holder))
            self.log(f"[train] {self.path} was left by {self._describe(holder)}, which is no longer running: "
                     "taking it over")
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        raise RunFolderBusyError(self._busy_message(self._holder()))

    def release(self) -> None:
        """Delete the lock if this process holds it."""
        if self.held:
            holder = read_lock(self.path)
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def _create(self) -> bool:
        """Create the lock file exclusively with our record; False if it already exists."""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        except OSError as e:
            raise not_writable(self.folder, e) from e
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
        except OSError as e:
            self.path.unlink(missing_ok=True)
            raise not_writable(self.folder, e) from e
        return True

    def _holder(self) -> Optional[Dict[str, Any]]:
        """The current holder; a lock still empty (being written this instant) gets a moment to fill in."""
        holder = read_lock(self.path)
        if holder is None and self.path.exists():
            time.sleep(0.5)
            holder = read_lock(self.path)
        return holder

    @staticmethod
    def _is_stale(holder: Optional[Dict[str, Any]]) -> bool:
        """An unreadable lock, or one whose pid is dead on this host. Another host's lock is never stale."""
        if holder is None:
            return True
        if holder.get("host") != socket.gethostname():
            return False
        if holder["pid"] == os.getpid():   # our own pid: this process releases its lock on exit, so the lock
            return True                    # is a dead process's whose pid came back (containers reuse low pids)
        return not _pid_alive(int(holder["pid"]))

    @staticmethod
    def _describe(holder: Optional[Dict[str, Any]]) -> str:
        if holder is None:
            return "an unreadable lock"
        return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"

    def _busy_message(self, holder: Optional[Dict[str, Any]]) -> str:
        other_host = holder is not None and holder.get("host") != socket.gethostname()
        gone = (f"if that machine's run is gone, delete {self.path}" if other_host
                else f"if that process is gone, delete {self.path}")
        return (f"{self.folder} is in use by another training: {self._describe(holder)}, lock file {self.path}. "
                f"Wait for it to finish, or use another --out; {gone}.")
