"""Kaggle tooling and the notebooks' first cell: kernel/dataset folders, the package search on fake
/kaggle/input trees (both mount schemes), the run-size detection, and the CLI without a network."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ddpm_helpers import kaggle, notebook_setup
from ddpm_helpers.notebook_setup import find_package_source, is_small_forced, setup

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ddpm_helpers"


def _fake_notebooks(folder: Path, names=("01_forward_noising", "03_unet", "04_training")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def _plant_package(folder: Path, full: bool = False) -> Path:
    """ddpm_helpers/ inside folder: a full copy (importable) or just an __init__.py (enough for the search)."""
    if full:
        shutil.copytree(PACKAGE, folder / "ddpm_helpers", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        (folder / "ddpm_helpers").mkdir(parents=True)
        (folder / "ddpm_helpers" / "__init__.py").write_text("")
    return folder


def _plant_celeba(root: Path) -> Path:
    """A Kaggle-layout CelebA with one image: <root>/img_align_celeba/img_align_celeba/000001.jpg + partition CSV."""
    from PIL import Image
    images = root / "img_align_celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    Image.new("RGB", (178, 218), (120, 90, 60)).save(images / "000001.jpg")
    (root / "list_eval_partition.csv").write_text("image_id,partition\n000001.jpg,0\n")
    return root


# ---------------------------------------------------------------------------------------------
# kernel-metadata.json and dataset-metadata.json
# ---------------------------------------------------------------------------------------------
def test_kernel_metadata_fields():
    meta = kaggle.kernel_metadata("notebooks/01_forward_noising.ipynb", "alice")
    assert meta["id"] == "alice/ddpm-01-forward-noising"
    assert meta["title"].lower().replace(" ", "-") == "ddpm-01-forward-noising"  # Kaggle derives the slug from it
    assert meta["code_file"] == "01_forward_noising.ipynb"
    assert (meta["language"], meta["kernel_type"]) == ("python", "notebook")
    assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["dataset_sources"] == ["jessicali9530/celeba-dataset", "alice/ddpm-helpers-code"]
    assert meta["kernel_sources"] == [] and meta["competition_sources"] == [] and meta["model_sources"] == []
    cpu = kaggle.kernel_metadata("x/05_sampling.ipynb", "bob", slug="my-sampler", dataset_sources=("a/b",), gpu=False)
    assert cpu["id"] == "bob/my-sampler" and cpu["enable_gpu"] is False and "machine_shape" not in cpu
    assert cpu["dataset_sources"] == ["a/b"]


def test_write_kernel_dirs(tmp_path):
    notebooks = _fake_notebooks(tmp_path / "notebooks")
    folders = kaggle.write_kernel_dirs(notebooks, tmp_path / "out", "alice")
    assert [f.name for f in folders] == ["ddpm-01-forward-noising", "ddpm-03-unet", "ddpm-04-training"]
    for folder in folders:
        meta = json.loads((folder / "kernel-metadata.json").read_text())  # valid JSON
        assert (folder / meta["code_file"]).is_file()
        nbformat.validate(nbformat.read(folder / meta["code_file"], as_version=4))
        assert meta["id"] == f"alice/{folder.name}" and meta["machine_shape"] == "NvidiaTeslaT4"
        assert "jessicali9530/celeba-dataset" in meta["dataset_sources"]
        assert "alice/ddpm-helpers-code" in meta["dataset_sources"]
        expected = [meta["id"]] if folder.name.startswith("ddpm-04") else []  # training chains its own outputs
        assert meta["kernel_sources"] == expected
    with pytest.raises(FileNotFoundError):
        kaggle.write_kernel_dirs(tmp_path / "empty", tmp_path / "out2", "alice")


def test_write_package_dataset(tmp_path):
    folder = kaggle.write_package_dataset(REPO, tmp_path / "out", "alice")
    meta = json.loads((folder / "dataset-metadata.json").read_text())
    assert meta == {"title": "ddpm-helpers-code", "id": "alice/ddpm-helpers-code", "licenses": [{"name": "MIT"}]}
    assert (folder / "ddpm_helpers" / "__init__.py").is_file()
    assert (folder / "ddpm_helpers" / "notebook_setup.py").is_file()
    assert not list(folder.rglob("__pycache__"))
    # the written dataset is exactly what the notebooks' search finds under /kaggle/input/<slug>/
    assert find_package_source(tmp_path / "out", cwd=tmp_path) == folder


# ---------------------------------------------------------------------------------------------
# The package search, on fake /kaggle/input trees
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mount", ["ddpm-helpers-code", "datasets/alice/ddpm-helpers-code"])
def test_find_package_both_mount_schemes(tmp_path, mount):
    kin = tmp_path / "kaggle" / "input"
    _plant_celeba(kin / mount.replace("ddpm-helpers-code", "celeba-dataset"))
    dataset = _plant_package(kin / mount)
    assert find_package_source(kin, cwd=tmp_path / "kaggle" / "working") == dataset


def test_find_package_prefers_a_clone_and_finds_wheels(tmp_path):
    clone = _plant_package(tmp_path / "repo")
    (clone / "notebooks").mkdir()
    kin = tmp_path / "input"
    _plant_package(kin / "ddpm-helpers-code")
    assert find_package_source(kin, cwd=clone / "notebooks") == clone          # notebooks/ under the repo root
    assert find_package_source(kin, cwd=tmp_path) == clone                     # Colab: cloned into a sub-folder
    wheel_kin = tmp_path / "wheel_input"
    wheel = wheel_kin / "datasets" / "alice" / "ddpm-helpers-whl" / "ddpm_helpers-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"PK")
    assert find_package_source(wheel_kin, cwd=tmp_path / "elsewhere") == wheel


def test_find_package_none_and_depth_bound(tmp_path):
    kin = tmp_path / "input"
    assert find_package_source(kin, cwd=tmp_path) is None                      # no /kaggle/input at all
    _plant_package(kin / "a" / "b" / "c" / "d" / "e")                           # deeper than the search goes
    assert find_package_source(kin, cwd=tmp_path) is None


def _first_cell() -> str:
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    if not notebooks:
        pytest.skip("no notebooks yet")
    nb = nbformat.read(notebooks[0], as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("mount", ["ddpm-helpers-code", "datasets/alice/ddpm-helpers-code"])
def test_first_cell_imports_package_from_fake_kaggle_input(tmp_path, mount):
    """Run the notebooks' real first cell in a fresh interpreter where ddpm_helpers is not importable."""
    kin = tmp_path / "input"
    dataset = _plant_package(kin / mount, full=True)
    _plant_celeba(kin / mount.replace("ddpm-helpers-code", "celeba-dataset"))
    work = tmp_path / "kaggle" / "working"
    work.mkdir(parents=True)
    script = _first_cell() + "\nimport ddpm_helpers\nprint('FROM', ddpm_helpers.__file__)\nprint('CELEBA', RUN.celeba.image_dir)\n"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CELEBA_DIR", "DDPM_SHARED_DATA")}
    env.update(DDPM_KAGGLE_INPUT=str(kin), DDPM_FIGURES_DIR=str(tmp_path / "figures"), DDPM_SMALL="1",
               MPLBACKEND="Agg", KAGGLE_KERNEL_RUN_TYPE="")
    result = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"FROM {dataset / 'ddpm_helpers' / '__init__.py'}" in result.stdout
    assert "CELEBA " + str(kin / mount.replace("ddpm-helpers-code", "celeba-dataset")) in result.stdout
    assert "Small configuration" in result.stdout


# ---------------------------------------------------------------------------------------------
# setup(): environment and run size
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, small", [({}, False), ({"CI": "true"}, True), ({"CI": "1"}, True), ({"CI": "0"}, False),
                                        ({"DDPM_SMALL": "1"}, True), ({"DDPM_SMALL": "0"}, False)])
def test_small_detection(monkeypatch, env, small):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DDPM_SMALL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_small_forced() is small


def test_setup_on_fake_kaggle(tmp_path, monkeypatch, capsys):
    kin, working = tmp_path / "input", tmp_path / "working"
    working.mkdir()
    celeba = _plant_celeba(kin / "datasets" / "jessicali9530" / "celeba-dataset")
    monkeypatch.setattr(notebook_setup, "cuda_devices", lambda: 2)              # pretend: T4 ×2
    run = setup(kaggle_input=kin, kaggle_working=working, environ={})
    assert run.on_kaggle and not run.in_ci and run.device == "cuda" and run.n_gpus == 2
    assert run.celeba.image_dir == celeba / "img_align_celeba" / "img_align_celeba" and not run.celeba_is_sample
    assert run.full and run.pick(small=32, full=64) == 64
    assert run.figures_dir == working / "figures" and run.figures_dir.is_dir() and run.out_dir == working
    assert capsys.readouterr().out.startswith("Full run (Kaggle): cuda ×2, CelebA at ")
    ci = setup(kaggle_input=kin, kaggle_working=working, environ={"CI": "1"}, announce=False)
    assert ci.in_ci and not ci.full                                           # CI is always small


def test_setup_small_without_gpu_or_celeba(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(notebook_setup, "cuda_devices", lambda: 0)
    monkeypatch.setattr(notebook_setup, "repository_root", lambda: tmp_path / "clone")  # a clone without data/
    monkeypatch.chdir(tmp_path)                                               # no ./data here
    run = setup(kaggle_input=tmp_path / "none", kaggle_working=tmp_path / "none", environ={})
    assert not run.on_kaggle and run.device == "cpu" and not run.full and run.pick(small=32, full=64) == 32
    assert run.celeba is None and run.repo_root == tmp_path / "clone"
    assert run.figures_dir == tmp_path / "clone" / "figures" and run.out_dir == tmp_path / "clone" / "runs"
    assert "Small configuration" in capsys.readouterr().out
    with pytest.raises(Exception):
        run.full = True                                                       # frozen
    sample = tmp_path / "shared" / "celeba_sample"
    _plant_celeba(sample)
    run = setup(kaggle_input=tmp_path / "none", kaggle_working=tmp_path / "none", announce=False,
                environ={"DDPM_SHARED_DATA": str(tmp_path / "shared"), "DDPM_FIGURES_DIR": str(tmp_path / "figs")})
    assert run.celeba is not None and run.celeba_is_sample and not run.full
    assert run.figures_dir == tmp_path / "figs"                               # the override wins


def test_gpu_with_only_the_sample_is_small(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook_setup, "cuda_devices", lambda: 1)
    monkeypatch.setattr(notebook_setup, "repository_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    _plant_celeba(tmp_path / "shared" / "celeba_sample")
    run = setup(kaggle_input=tmp_path / "none", kaggle_working=tmp_path / "none", announce=False,
                environ={"DDPM_SHARED_DATA": str(tmp_path / "shared"), "DDPM_FIGURES_DIR": str(tmp_path / "figs")})
    assert run.device == "cuda" and run.celeba_is_sample and not run.full


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------
def _args(tmp_path, *extra):
    parser = kaggle.add_kaggle_arguments(argparse.ArgumentParser())
    return parser.parse_args(["--user", "alice", "--out", str(tmp_path / "build"), "--repo-root", str(REPO),
                              "--notebooks", str(_fake_notebooks(tmp_path / "nbs")), *extra])


def test_cli_without_push_prints_commands(tmp_path, capsys):
    assert kaggle.run_kaggle(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "kaggle datasets create -p" in out and "--dir-mode tar" in out and "kaggle datasets version" in out
    assert out.count("kaggle kernels push -p") == 3
    assert (tmp_path / "build" / "ddpm-helpers-code" / "dataset-metadata.json").is_file()
    assert (tmp_path / "build" / "kernels" / "ddpm-03-unet" / "kernel-metadata.json").is_file()


def test_cli_push_without_kaggle_cli_or_credentials(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kaggle.shutil, "which", lambda name: None)
    assert kaggle.run_kaggle(_args(tmp_path, "--push")) == 2
    assert "pip install kaggle" in capsys.readouterr().out
    monkeypatch.setattr(kaggle.shutil, "which", lambda name: "/usr/bin/kaggle")
    monkeypatch.setattr(kaggle, "kaggle_credentials_found", lambda: False)
    assert kaggle.run_kaggle(_args(tmp_path, "--push")) == 2
    assert "kaggle.json" in capsys.readouterr().out


def test_cli_push_runs_the_kaggle_commands(tmp_path, monkeypatch, capsys):
    """A fake `kaggle` executable on PATH logs its arguments; `datasets status` fails, so the dataset is created."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    fake = bin_dir / "kaggle"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n[ "$2" = status ] && exit 1\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    assert kaggle.run_kaggle(_args(tmp_path, "--push")) == 0
    calls = log.read_text().splitlines()
    assert calls[0] == "datasets status alice/ddpm-helpers-code"
    assert calls[1].startswith("datasets create -p") and calls[1].endswith("--dir-mode tar")
    assert [c.split()[:2] for c in calls[2:]] == [["kernels", "push"]] * 3
    assert capsys.readouterr().out.count("$ kaggle") == 4


def test_credentials_detection(tmp_path):
    assert kaggle.kaggle_credentials_found({"KAGGLE_USERNAME": "a", "KAGGLE_KEY": "b"}, home=tmp_path)
    assert kaggle.kaggle_credentials_found({"KAGGLE_API_TOKEN": "t"}, home=tmp_path)
    assert not kaggle.kaggle_credentials_found({}, home=tmp_path)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text("{}")
    assert kaggle.kaggle_credentials_found({}, home=tmp_path)


def test_find_run_checkpoints_under_a_kaggle_input_tree(tmp_path):
    """A previous version's output is found in both mount schemes; other runs and deep trees are ignored."""
    from ddpm_helpers.checkpoint import checkpoint_step, find_run_checkpoints
    old = tmp_path / "my-training" / "celeba64"
    new = tmp_path / "notebooks" / "me" / "my-training" / "celeba64"
    for folder, steps in ((old, (1000, 2000)), (new, (3000,)), (tmp_path / "x" / "report64", (9000,))):
        folder.mkdir(parents=True)
        for s in steps:
            (folder / f"ckpt_{s:08d}.pt").write_bytes(b"")
    (new / "ckpt_latest.pt").write_bytes(b"")
    found = find_run_checkpoints(tmp_path, "celeba64")
    assert [checkpoint_step(p) for p in found] == [1000, 2000, 3000]
    assert find_run_checkpoints(tmp_path, "celeba64", max_depth=2)[-1].parent == old


def test_small_training_config_prefers_shared_half_size_celeba(tmp_path):
    from ddpm_helpers.notebook_setup import setup, small_training_config
    run = setup(kaggle_input=tmp_path / "none", environ={"CI": "1"}, announce=False)
    (tmp_path / "celeba_5k_half").mkdir()
    with_data = small_training_config(run, "04_small", environ={"DDPM_SHARED_DATA": str(tmp_path)})
    assert with_data.data.root == str(tmp_path / "celeba_5k_half") and with_data.model.in_channels == 3
    offline = small_training_config(run, "05_small", environ={})
    assert offline.data.root is None and offline.data.channels == offline.model.out_channels == 1
    assert with_data.max_steps == offline.max_steps and offline.out_dir.endswith("05_small")
