"""The process a training run lives in: the device, mixed precision, torchrun's ranks, and stop signals.

One device choice for the whole package (:func:`default_device`), the autocast dtype
(:func:`resolve_amp`), the distributed setup read from torchrun's environment (:class:`DistInfo`) and
the SIGTERM / SIGINT flag the loop polls (:class:`StopFlag`).
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Optional, Union

import torch
import torch.distributed as dist

from .errors import DDPMError


class TrainingError(DDPMError, RuntimeError):
    """Training cannot go on (for example, too many non-finite losses in a row, or a run folder in use)."""


class DistInfo:
    """World size and ranks from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); 1 process without it."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started_here = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    def init(self, device_type: str) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
            self.started_here = True

    def close(self) -> None:
        if self.started_here and dist.is_initialized():
            dist.destroy_process_group()


def default_device(requested: Union[str, torch.device, None] = None,
                   dinfo: Optional[DistInfo] = None) -> torch.device:
    """The requested device, else CUDA when available, else the CPU; under torchrun, this rank's GPU."""
    if requested:
        dev = torch.device(requested)
    else:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dinfo is not None and dinfo.enabled:
        dev = torch.device("cuda", dinfo.local_rank)
        torch.cuda.set_device(dev)
    return dev


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """'auto' → bf16 on GPUs that support it, fp16 on others (T4, P100), off on CPU."""
    if amp == "off" or device.type != "cuda":
        if amp in ("fp16", "bf16") and device.type != "cuda":
            print(f"[train] amp={amp} ignored on {device.type}")
        return None
    if amp == "auto":
        # Native bf16 needs compute capability 8.0 (Ampere) or newer. is_bf16_supported() also says True
        # on a T4 (7.5) through emulation, which is slow there: a T4 gets fp16 with a gradient scaler.
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast in dtype on the device; a no-op context when dtype is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and exits at the next step. A second Ctrl-C stops at once."""

    def __init__(self):
        self.reason: Optional[str] = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        return False


@contextlib.contextmanager
def sigterm_exits():
    """While the body runs (outside the loop's StopFlag), SIGTERM ends the process through Python's exception
    path (SystemExit 143) instead of killing it, so that ``finally`` blocks release the run-folder lock."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
