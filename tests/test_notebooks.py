"""The notebooks are committed clean, define no model/sampler/training loop, and share one first cell.

Running them is nbmake's job (pyproject: addopts --nbmake, testpaths include notebooks/).
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# What belongs in the package, never in a notebook (the GUIDE: notebooks import the library, they do not paste it).
FORBIDDEN = {
    "an nn.Module subclass": re.compile(r"^\s*class\s+\w+\s*\([^)]*(nn\.)?Module\b", re.M),
    "a sampler or a forward-process step":
        re.compile(r"^\s*def\s+(p_sample|q_sample|p_mean|forward_step|\w*_sample|sample\w*)\s*\(", re.M),
    "a loss": re.compile(r"^\s*def\s+\w*loss\w*\s*\(", re.M),
    "a training loop": re.compile(r"^\s*def\s+train\w*\s*\(", re.M),
    "a backward pass": re.compile(r"\.backward\s*\("),
    "an optimizer step": re.compile(r"\b\w*(optimizer|optim|opt)\w*\.step\s*\("),
    "an optimizer": re.compile(r"\btorch\.optim\.\w+\s*\("),
}


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_and_clean(path):
    nb = _read(path)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; clear them with "
                       f"`jupyter nbconvert --clear-output --inplace {path}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_defines_no_model_sampler_or_training_loop(path):
    found = [f"cell {i}: {what}" for i, cell in enumerate(_code_cells(_read(path)))
             for what, pattern in FORBIDDEN.items() if pattern.search(cell.source)]
    assert not found, f"{path.name} defines what belongs in ddpm_helpers: {found}"


def test_forbidden_patterns_catch_what_they_should():
    bad = ["class Net(nn.Module):", "def p_sample(model, x, t):", "def q_sample(x0, t):", "def train(model):",
           "loss.backward()", "optimizer.step()", "opt = torch.optim.Adam(params)", "def ddpm_sample(m):"]
    good = ["from ddpm_helpers import p_sample", "x = q_sample(x0, t, noise, schedule)", "plotting.save_figure(fig, p)"]
    assert all(any(p.search(src) for p in FORBIDDEN.values()) for src in bad)
    assert not any(p.search(src) for src in good for p in FORBIDDEN.values())


MAX_CELL_LINES = 25   # a code cell is calls, prints, pictures and asserts; anything longer belongs in the package


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_is_short(path):
    """The first cell (the identical bootstrap, checked below) is exempt."""
    long = {i: n for i, cell in enumerate(_code_cells(_read(path))[1:], 1)
            if (n := sum(1 for line in cell.source.splitlines() if line.strip())) > MAX_CELL_LINES}
    assert not long, (f"{path.name}: code cells {long} (index: non-blank lines) are longer than {MAX_CELL_LINES} "
                      "lines; "
                      f"move the logic into a tested ddpm_helpers function and call it")


def test_first_code_cell_is_identical_and_calls_setup():
    firsts = {path.name: _code_cells(_read(path))[0].source for path in NOTEBOOKS}
    reference = next(iter(firsts.values()))
    different = [name for name, source in firsts.items() if source != reference]
    assert not different, f"first code cell differs from {next(iter(firsts))} in {different}"
    assert "from ddpm_helpers.notebook_setup import setup" in reference and "RUN = setup()" in reference
