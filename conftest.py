"""Root pytest configuration, for the tests and the notebooks (nbmake) alike.

* The notebooks always take their small configuration, even on a GPU machine with CelebA (the full job belongs
  to Kaggle / the command line, not to tests).
* The tracked-file guard: nothing a test or a notebook does may change a file git tracks (a committed figure, a
  notebook, the README). The run records ``git status`` of the tracked files (and a hash of each one already
  modified) when it starts and fails when they differ at the end, naming the files. Outside a git checkout (an
  unpacked sdist, a Kaggle dataset) the guard is off.
"""
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("DDPM_SMALL", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent


def tracked_state(root: Path = ROOT):
    """{path: status + content hash} of the tracked files git sees as changed under root; None outside git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "-z"], cwd=root,
                             capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    state = {}
    for entry in out.stdout.decode(errors="replace").split("\0"):
        if len(entry) > 3:
            path = root / entry[3:]
            digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "absent"
            state[entry[3:]] = f"{entry[:2]} {digest}"
    return state


def pytest_sessionstart(session):
    session.config._tracked_before = tracked_state()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_tracked_before", None)
    after = tracked_state() if before is not None else None
    if after is None:
        return
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = ("tracked files changed during the test run (a test or notebook wrote into the repository; "
                   "write to tmp_path or an ignored folder instead): " + ", ".join(changed))
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("=", "tracked-file guard", red=True, bold=True)
            reporter.write_line(message)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
