"""Wall time of `python -m ddpm_helpers --help` and of the notebooks' first cell (import + setup()), median of N
fresh processes (issue 19: neither may get more than 10 % slower). The machine's other load moves these numbers:
compare runs made side by side.

    python benchmarks/import_time.py [N]
"""
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -m ddpm_helpers --help": [sys.executable, "-m", "ddpm_helpers", "--help"],
    "first notebook cell (import notebook_setup, setup())":
        [sys.executable, "-c", "from ddpm_helpers.notebook_setup import setup; setup()"],
    "import ddpm_helpers": [sys.executable, "-c", "import ddpm_helpers"],
}


def median_seconds(command, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for name, command in COMMANDS.items():
        print(f"{name}: {median_seconds(command, n):.3f} s (median of {n})")
