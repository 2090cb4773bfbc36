"""Shared helpers for the benchmark scripts: machine description, versions, timing, markdown, --write.

Import from a script in this folder with::

    sys.path.insert(0, str(Path(__file__).resolve().parent))        # benchmarks/
    from common import machine_description, markdown_table, write_results

Nothing here imports diffusers or any other optional package at import time, so a script that uses
these helpers still runs where an optional package is missing (for example on a bare GPU machine).
"""
from __future__ import annotations

import datetime
import importlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
RESULTS_PREAMBLE = (
    "# Benchmark results\n\n"
    "Numbers appended by the scripts in `benchmarks/` run with `--write`; the newest section of each kind\n"
    "is the current one. Each section names its machine, versions and the command that produced it.\n"
    "See `benchmarks/README.md` for what each script measures and how to run it.\n"
)

Device = Union[str, torch.device]


# ---------------------------------------------------------------------------------------------
# Machine and versions
# ---------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform reports."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return name


def gpu_name(device: Device = "cuda") -> Optional[str]:
    """The CUDA device's name, or None when there is no GPU."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def machine_description(device: Device) -> str:
    """One line: the GPU (name, memory, CUDA) for a CUDA device, else the CPU model, cores and torch threads."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        return (f"{props.name} ({props.total_memory / 2 ** 30:.0f} GiB, CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}); host CPU {cpu_name()}")
    return (f"{cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
            f"{platform.system()} {platform.release()}")


def package_version(name: str) -> Optional[str]:
    """The installed version of a package, or None when it cannot be imported."""
    try:
        return getattr(importlib.import_module(name), "__version__", "unknown")
    except Exception:      # ImportError, or a broken install that fails while importing
        return None


def environment(device: Device, packages: Sequence[str] = ()) -> Dict[str, Any]:
    """Machine, Python, torch, CUDA, GPU name and the versions of ``packages`` (None when missing)."""
    device = torch.device(device)
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
           "machine": machine_description(device), "gpu": gpu_name(device), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
           "load_avg": _load_average()}
    for p in packages:
        env[p] = package_version(p)
    return env


def environment_line(env: Dict[str, Any]) -> str:
    """The environment dict as one readable markdown line."""
    parts = [f"Machine: {env['machine']}", f"Python {env['python']}", f"torch {env['torch']}"]
    for key, value in env.items():
        if key in ("date", "device", "machine", "gpu", "python", "torch", "cuda", "load_avg"):
            continue
        parts.append(f"{key} {value if value is not None else 'not installed'}")
    if env.get("load_avg") is not None:
        parts.append(f"load average at start {env['load_avg']:.1f}")
    return "; ".join(parts) + "."


def _load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def synchronize(device: Device) -> None:
    """Wait for queued CUDA work (no-op on the CPU). Call only around timed regions."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, device: Device) -> float:
    """Wall seconds of n calls of fn(), synchronised before and after (not in between)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------
# Markdown and RESULTS.md
# ---------------------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub markdown table. align: one character per column, 'l' or 'r' (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(header) - 1))
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} entries for {len(header)} columns")
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(title: str, body: str, env: Dict[str, Any], command: Optional[str] = None,
                  path: Path = RESULTS) -> Path:
    """Append a dated section to RESULTS.md: '## title (date, device)', the environment line,
    the command that reproduces it, then body. Creates the file with a short preamble if missing."""
    path = Path(path)
    where = env.get("gpu") or "CPU"
    parts = [f"\n## {title} ({env['date'][:10]}, {where})\n", environment_line(env) + "\n"]
    if command:
        parts.append(f"Reproduce: `{command}`\n")
    parts.append(body if body.endswith("\n") else body + "\n")
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a") as f:
        if new:
            f.write(RESULTS_PREAMBLE)
        f.write("\n".join(parts))
    return path


def command_line(argv: Optional[List[str]], script: str) -> str:
    """How the current run was invoked, for the 'Reproduce' line."""
    import shlex
    import sys
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script] + [shlex.quote(a) for a in args])
