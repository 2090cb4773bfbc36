"""Kaggle tooling and the notebooks' first cell: kernel/dataset folders, the package search on fake
/kaggle/input trees (both mount schemes), the run-size detection, and the CLI without a network."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ddpm_helpers import cli, env, kaggle, notebook_setup
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


ALL_NOTEBOOKS = ("01_forward_noising", "02_time_embeddings", "03_unet", "04_training", "05_sampling")


def test_write_kernel_dirs(tmp_path):
    notebooks = _fake_notebooks(tmp_path / "notebooks", ALL_NOTEBOOKS)
    folders = kaggle.write_kernel_dirs(notebooks, tmp_path / "out", "alice")
    assert [f.name for f in folders] == ["ddpm-" + n.replace("_", "-") for n in ALL_NOTEBOOKS]
    metas = {}
    for folder in folders:
        meta = metas[folder.name] = json.loads((folder / "kernel-metadata.json").read_text())  # valid JSON
        assert (folder / meta["code_file"]).is_file()
        nbformat.validate(nbformat.read(folder / meta["code_file"], as_version=4))
        assert meta["id"] == f"alice/{folder.name}"
        assert "jessicali9530/celeba-dataset" in meta["dataset_sources"]
        assert "alice/ddpm-helpers-code" in meta["dataset_sources"]
    # 04 chains its own outputs (resume); 05 reads 04's output (its model); 01-03 need nothing
    assert metas["ddpm-04-training"]["kernel_sources"] == ["alice/ddpm-04-training"]
    assert metas["ddpm-05-sampling"]["kernel_sources"] == ["alice/ddpm-04-training"]
    assert all(metas[f"ddpm-0{i}-{n}"]["kernel_sources"] == [] for i, n in ((1, "forward-noising"), (3, "unet")))
    # GPU T4x2 only where the work needs it: 01-03 spend no GPU quota
    gpu = {name: (m["enable_gpu"], m.get("machine_shape")) for name, m in metas.items()}
    assert gpu == {"ddpm-01-forward-noising": (False, None), "ddpm-02-time-embeddings": (False, None),
                   "ddpm-03-unet": (False, None), "ddpm-04-training": (True, "NvidiaTeslaT4"),
                   "ddpm-05-sampling": (True, "NvidiaTeslaT4")}
    with pytest.raises(FileNotFoundError):
        kaggle.write_kernel_dirs(tmp_path / "empty", tmp_path / "out2", "alice")


# The licence names Kaggle accepts for datasets (kaggle-cli docs/datasets_metadata.md, "Licenses"); no "MIT".
KAGGLE_DATASET_LICENSES = {
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0", "CC-BY-3.0-IGO",
    "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0",
    "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0"}


def test_write_package_dataset(tmp_path):
    folder = kaggle.write_package_dataset(REPO, tmp_path / "out", "alice")
    meta = json.loads((folder / "dataset-metadata.json").read_text())
    assert (meta["title"], meta["id"]) == ("ddpm-helpers-code", "alice/ddpm-helpers-code")
    assert [lic["name"] for lic in meta["licenses"]] == ["other"] and "other" in KAGGLE_DATASET_LICENSES
    assert "MIT" in meta["description"] and "CelebA" in meta["description"]   # "other": said in the description
    licence = (REPO / "LICENSE").read_text()
    assert (folder / "LICENSE").read_text() == licence and "MIT" in licence
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
    tar = _plant_archive(tmp_path / "tar_input" / "ddpm-helpers-code", "tar")    # Kaggle kept the upload packed
    assert find_package_source(tmp_path / "tar_input", cwd=tmp_path / "elsewhere") == tar


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


def _plant_archive(folder: Path, fmt: str) -> Path:
    """What `kaggle datasets create --dir-mode tar|zip` uploads: the package's files at the archive's top level."""
    folder.mkdir(parents=True)
    return Path(shutil.make_archive(str(folder / "ddpm_helpers"), fmt, PACKAGE))


@pytest.mark.parametrize("mount", ["ddpm-helpers-code", "datasets/alice/ddpm-helpers-code",
                                   "tar:datasets/alice/ddpm-helpers-code", "zip:ddpm-helpers-code"])
def test_first_cell_imports_package_from_fake_kaggle_input(tmp_path, mount):
    """Run the notebooks' real first cell in a fresh interpreter where ddpm_helpers is not importable:
    the package unpacked by Kaggle, or left as the uploaded .tar/.zip (unpacked into a temporary folder)."""
    kin = tmp_path / "input"
    fmt, _, mount = mount.rpartition(":")
    if fmt:
        archive = _plant_archive(kin / mount, fmt)
        os.chmod(kin / mount, 0o555)                                        # inputs are read-only
    else:
        dataset = _plant_package(kin / mount, full=True)
    _plant_celeba(kin / mount.replace("ddpm-helpers-code", "celeba-dataset"))
    work = tmp_path / "kaggle" / "working"
    work.mkdir(parents=True)
    script = (_first_cell() + "\nimport ddpm_helpers\nprint('FROM', ddpm_helpers.__file__)\n"
              "print('CELEBA', RUN.celeba.image_dir)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CELEBA_DIR", "DDPM_SHARED_DATA")}
    env.update(DDPM_KAGGLE_INPUT=str(kin), DDPM_FIGURES_DIR=str(tmp_path / "figures"), DDPM_SMALL="1",
               MPLBACKEND="Agg", KAGGLE_KERNEL_RUN_TYPE="")
    result = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    if fmt:
        imported = Path(result.stdout.split("FROM ")[1].split()[0])
        assert imported.name == "__init__.py" and not imported.is_relative_to(kin) and archive.is_file()
        assert sorted(os.listdir(kin / mount)) == [archive.name]                   # nothing written to the input
    else:
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
    run = setup(kaggle_input=kin, kaggle_working=working, environ={"KAGGLE_KERNEL_RUN_TYPE": "Batch"})
    assert run.on_kaggle and not run.in_ci and run.device == "cuda" and run.n_gpus == 2
    assert run.celeba.image_dir == celeba / "img_align_celeba" / "img_align_celeba" and not run.celeba_is_sample
    assert run.full and run.pick(small=32, full=64) == 64
    assert run.figures_dir == working / "figures" and run.figures_dir.is_dir() and run.out_dir == working
    assert capsys.readouterr().out.startswith("Full run (Kaggle): cuda ×2, CelebA at ")
    ci = setup(kaggle_input=kin, kaggle_working=working, environ={"CI": "1", "KAGGLE_KERNEL_RUN_TYPE": "Batch"},
               announce=False)
    assert ci.in_ci and not ci.full                                           # CI is always small


def test_kaggle_is_recognised_by_its_variable_not_by_a_folder(tmp_path, monkeypatch):
    """A CI machine with a /kaggle/working folder is not Kaggle: nothing is written there."""
    monkeypatch.setattr(notebook_setup, "cuda_devices", lambda: 0)
    monkeypatch.setattr(notebook_setup, "repository_root", lambda: tmp_path / "clone")
    working = tmp_path / "kaggle" / "working"
    working.mkdir(parents=True)
    assert not env.is_kaggle({}) and not env.is_kaggle({"KAGGLE_KERNEL_RUN_TYPE": " "})
    assert env.is_kaggle({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"})
    run = setup(kaggle_input=tmp_path / "none", environ={"DDPM_KAGGLE_ROOT": str(tmp_path / "kaggle")}, announce=False)
    assert not run.on_kaggle and run.out_dir == tmp_path / "clone" / "runs" and not any(working.iterdir())
    run = setup(kaggle_input=tmp_path / "none", announce=False,
                environ={"DDPM_KAGGLE_ROOT": str(tmp_path / "kaggle"), "KAGGLE_KERNEL_RUN_TYPE": "Batch"})
    assert run.on_kaggle and run.out_dir == working and run.figures_dir == working / "figures"
    assert env.kaggle_input_dir({"DDPM_KAGGLE_ROOT": "/x"}) == Path("/x/input")


def test_setup_small_without_gpu_or_celeba(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(notebook_setup, "cuda_devices", lambda: 0)
    monkeypatch.setattr(notebook_setup, "repository_root", lambda: tmp_path / "clone")  # a clone without data/
    monkeypatch.chdir(tmp_path)                                               # no ./data here
    run = setup(kaggle_input=tmp_path / "none", kaggle_working=tmp_path / "none", environ={})
    assert not run.on_kaggle and run.device == "cpu" and not run.full and run.pick(small=32, full=64) == 32
    assert run.celeba is None and run.repo_root == tmp_path / "clone"
    assert run.figures_dir == tmp_path / "clone" / "runs" / "figures" and run.out_dir == tmp_path / "clone" / "runs"
    assert "Small configuration" in capsys.readouterr().out
    run = setup(kaggle_input=tmp_path / "none", kaggle_working=tmp_path / "none", environ={"DDPM_REFRESH_FIGURES": "1"})
    assert run.figures_dir == tmp_path / "clone" / "runs" / "figures"        # refresh needs the sample they came from
    assert "ignored" in capsys.readouterr().out
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.full = True                                                       # frozen
    sample = tmp_path / "shared" / "celeba_sample"
    _plant_celeba(sample)
    run = setup(kaggle_input=tmp_path / "none", kaggle_working=tmp_path / "none", announce=False,
                environ={"DDPM_SHARED_DATA": str(tmp_path / "shared"), "DDPM_FIGURES_DIR": str(tmp_path / "figs")})
    assert run.celeba is not None and run.celeba_is_sample and not run.full
    assert run.figures_dir == tmp_path / "figs"                               # the override wins
    run = setup(kaggle_input=tmp_path / "none", kaggle_working=tmp_path / "none", announce=False,
                environ={"DDPM_SHARED_DATA": str(tmp_path / "shared"), "DDPM_REFRESH_FIGURES": "1"})
    assert run.figures_dir == tmp_path / "clone" / "figures"                  # asked for, with the sample


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
    parser = cli.add_kaggle_arguments(argparse.ArgumentParser())
    return parser.parse_args(["--user", "alice", "--out", str(tmp_path / "build"), "--repo-root", str(REPO),
                              "--notebooks", str(_fake_notebooks(tmp_path / "nbs")), *extra])


def test_cli_without_push_prints_commands(tmp_path, capsys):
    assert kaggle.run_kaggle(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "kaggle datasets create -p" in out and "--dir-mode tar" in out and "kaggle datasets version" in out
    assert out.count("kaggle kernels push -p") == 3
    assert (tmp_path / "build" / "ddpm-helpers-code" / "dataset-metadata.json").is_file()
    assert (tmp_path / "build" / "kernels" / "ddpm-03-unet" / "kernel-metadata.json").is_file()


def test_cli_push_without_kaggle_package_or_credentials(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kaggle.importlib.util, "find_spec", lambda name: None)
    assert kaggle.run_kaggle(_args(tmp_path, "--push")) == 2
    assert "pip install kaggle" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setattr(kaggle, "kaggle_credentials_found", lambda: False)
    assert kaggle.run_kaggle(_args(tmp_path, "--push")) == 2
    assert "kaggle.json" in capsys.readouterr().out


class _NotFound(Exception):
    """What requests raises for a 404 (an HTTPError with .response.status_code)."""

    def __init__(self):
        super().__init__("404 Client Error: Not Found")
        self.response = argparse.Namespace(status_code=404, text="not found")


class FakeKaggleApi:
    """Stands in for KaggleApi: records calls, answers with scripted statuses and server-side errors."""

    def __init__(self, dataset_exists=False, dataset_statuses=("pending", "ready"),
                 kernel_statuses=("running", "complete"),
                 push_response=None):
        self.calls, self.exists = [], dataset_exists
        self.dataset_statuses, self.kernel_statuses = list(dataset_statuses), list(kernel_statuses)
        self.push_response = push_response or {}

    def dataset_status(self, ref):
        self.calls.append(("dataset_status", ref))
        if not self.exists:
            raise _NotFound()
        return self.dataset_statuses.pop(0) if len(self.dataset_statuses) > 1 else self.dataset_statuses[0]

    def dataset_create_new(self, folder, quiet=False, dir_mode="skip"):
        self.calls.append(("dataset_create_new", Path(folder).name, dir_mode))
        self.exists = True
        return argparse.Namespace(status="ok", error=None)

    def dataset_create_version(self, folder, version_notes, quiet=False, dir_mode="skip"):
        self.calls.append(("dataset_create_version", Path(folder).name, dir_mode))
        return argparse.Namespace(status="ok", error=None)

    def kernels_push(self, folder):
        name = Path(folder).name
        self.calls.append(("kernels_push", name))
        fields = dict(error=None, invalid_dataset_sources=[], invalid_competition_sources=[],
                      invalid_kernel_sources=[], invalid_model_sources=[], version_number=1, url="https://kaggle")
        fields.update(self.push_response.get(name, {}))
        return argparse.Namespace(**fields)

    def kernels_status(self, ref):
        self.calls.append(("kernels_status", ref))
        status = self.kernel_statuses.pop(0) if len(self.kernel_statuses) > 1 else self.kernel_statuses[0]
        return argparse.Namespace(status=argparse.Namespace(name=status.upper()), failure_message="it broke")


def _push_args(tmp_path, *extra):
    parser = cli.add_kaggle_arguments(argparse.ArgumentParser())
    return parser.parse_args(["--user", "alice", "--out", str(tmp_path / "build"), "--repo-root", str(REPO),
                              "--poll", "0",
                              "--notebooks", str(_fake_notebooks(tmp_path / "nbs", ALL_NOTEBOOKS)), "--push", *extra])


def test_push_order_dataset_ready_first_then_04_and_05_only_after_04_completes(tmp_path, capsys):
    api = FakeKaggleApi()
    assert kaggle.run_kaggle(_push_args(tmp_path, "--wait"), api=api) == 0
    names = [c[0] for c in api.calls]
    create = names.index("dataset_create_new")
    ready = max(i for i, c in enumerate(api.calls) if c[0] == "dataset_status")
    assert api.calls[create][2] == "tar" and create < ready < names.index("kernels_push")   # ready before any push
    pushes = [c[1] for c in api.calls if c[0] == "kernels_push"]
    assert pushes == ["ddpm-01-forward-noising", "ddpm-02-time-embeddings", "ddpm-03-unet", "ddpm-04-training",
                      "ddpm-05-sampling"]
    complete = max(i for i, c in enumerate(api.calls) if c == ("kernels_status", "alice/ddpm-04-training"))
    assert names.index("kernels_push") < complete < api.calls.index(("kernels_push", "ddpm-05-sampling"))
    out = capsys.readouterr().out
    assert "dataset alice/ddpm-helpers-code: pending" in out and "kernel alice/ddpm-04-training: complete" in out


def test_push_without_wait_leaves_05_and_says_how(tmp_path, capsys):
    api = FakeKaggleApi(dataset_exists=True, dataset_statuses=("ready",))
    assert kaggle.run_kaggle(_push_args(tmp_path), api=api) == 0
    assert ("dataset_create_version", "ddpm-helpers-code", "tar") in api.calls
    assert ("kernels_push", "ddpm-05-sampling") not in api.calls and ("kernels_push", "ddpm-04-training") in api.calls
    assert not any(c[0] == "kernels_status" for c in api.calls)
    out = capsys.readouterr().out
    assert "Not pushed yet: ddpm-05-sampling" in out and "kaggle kernels push -p" in out and "--wait" in out


@pytest.mark.parametrize("response, message", [
    ({"error": "Notebook not found or access denied"}, "Notebook not found or access denied"),
    ({"invalid_kernel_sources": ["alice/ddpm-04-trainin"]}, "invalid kernel sources ['alice/ddpm-04-trainin']"),
    ({"invalid_dataset_sources": ["alice/ddpm-helpers-code"]}, "invalid dataset sources"),
])
def test_push_fails_with_kaggles_message(tmp_path, capsys, response, message):
    api = FakeKaggleApi(dataset_exists=True, dataset_statuses=("ready",),
                        push_response={"ddpm-02-time-embeddings": response})
    assert kaggle.run_kaggle(_push_args(tmp_path, "--wait"), api=api) == 1
    out = capsys.readouterr().out
    assert "Kernel push error for alice/ddpm-02-time-embeddings" in out and message in out
    assert ("kernels_push", "ddpm-03-unet") not in api.calls                   # stops at the first error


def test_push_fails_when_the_dataset_or_04_fails(tmp_path, capsys):
    api = FakeKaggleApi(dataset_statuses=("pending", "failed"))
    assert kaggle.run_kaggle(_push_args(tmp_path), api=api) == 1
    assert "dataset alice/ddpm-helpers-code ended with status 'failed'" in capsys.readouterr().out
    assert not any(c[0] == "kernels_push" for c in api.calls)                  # nothing runs on a broken package
    api = FakeKaggleApi(dataset_exists=True, dataset_statuses=("ready",), kernel_statuses=("running", "error"))
    assert kaggle.run_kaggle(_push_args(tmp_path, "--wait"), api=api) == 1
    assert "kernel alice/ddpm-04-training ended with status 'error': it broke" in capsys.readouterr().out
    assert ("kernels_push", "ddpm-05-sampling") not in api.calls


def test_push_says_when_kaggle_cannot_be_reached(tmp_path, capsys):
    class Offline(FakeKaggleApi):
        def dataset_status(self, ref):
            raise ConnectionError("Max retries exceeded with url: /v1/datasets.DatasetApiService/GetDatasetStatus")
    assert kaggle.run_kaggle(_push_args(tmp_path), api=Offline()) == 1
    assert "Upload stopped: cannot reach Kaggle (ConnectionError: Max retries" in capsys.readouterr().out


def test_wait_for_times_out():
    ticks = iter(range(0, 10**6, 100))
    with pytest.raises(kaggle.KagglePushError, match="still 'running' after 250 s"):
        kaggle.wait_for(lambda: ("running", ""), "kernel a/b", done=("complete",), failed=("error",), poll_s=1,
                        timeout_s=250, sleep=lambda s: None, clock=lambda: next(ticks))


def _kaggle_cli(calls, config_dir, tmp_path) -> list[str]:
    """Run the real kaggle CLI once per argument list (one interpreter, so the test stays fast), with dummy
    credentials and every request sent to a closed local port; return what each call printed."""
    env = {**os.environ, "KAGGLE_CONFIG_DIR": str(config_dir), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        env.pop(key, None)
    code = ("import json, sys, traceback\nsys.stderr = sys.stdout\nfrom kaggle.cli import main\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    sys.argv = ['kaggle', *args]\n"
            "    try:\n        main()\n    except BaseException:\n        traceback.print_exc(file=sys.stdout)\n"
            "    print('=== END OF CALL ===', flush=True)\n")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(calls)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    said = result.stdout.split("=== END OF CALL ===")[:-1]
    assert len(said) == len(calls), result.stdout + result.stderr
    return said


def test_generated_folders_pass_the_real_kaggle_cli_validation(tmp_path):
    """Every generated folder gets through the kaggle CLI's local checks: it fails only when it reaches the network."""
    pytest.importorskip("kaggle.cli", reason="the kaggle package (pip install kaggle) is needed for its CLI")
    config = tmp_path / "kaggle_config"
    config.mkdir()
    (config / "kaggle.json").write_text('{"username": "alice", "key": "0123456789abcdef0123456789abcdef"}')
    (config / "kaggle.json").chmod(0o600)
    dataset = kaggle.write_package_dataset(REPO, tmp_path / "build", "alice")
    kernels = kaggle.write_kernel_dirs(REPO / "notebooks", tmp_path / "build" / "kernels", "alice")
    bad = tmp_path / "bad_dataset"
    bad.mkdir()
    meta = json.loads((dataset / "dataset-metadata.json").read_text())
    (bad / "dataset-metadata.json").write_text(json.dumps({**meta, "title": "ddpm"}))   # a title Kaggle rejects
    calls = [["datasets", "create", "-p", str(dataset), "--dir-mode", "tar"]]
    calls += [["kernels", "push", "-p", str(k)] for k in kernels] + [["datasets", "create", "-p", str(bad)]]
    *good, rejected = _kaggle_cli(calls, config, tmp_path)
    for args, said in zip(calls, good):
        assert "Max retries exceeded" in said and "api.kaggle.com" in said, f"{args} failed before the network:\n{said}"
        assert ("SaveKernel" if args[0] == "kernels" else "GetDatasetStatus") in said, said
    assert "title must be between 6 and 50 characters" in rejected and "api.kaggle.com" not in rejected


# ---------------------------------------------------------------------------------------------
# Discoverability: one repository URL, badges, the CI workflow
# ---------------------------------------------------------------------------------------------
def _repository_url() -> str:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def _badges(url: str, notebook: str) -> list[str]:
    path = f"blob/main/notebooks/{notebook}"
    return [f"(https://kaggle.com/kernels/welcome?src={url}/{path})",
            f"(https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}/{path})"]


def test_repository_url_is_set_once_and_used_by_badges_and_colab_steps():
    url = _repository_url()
    assert url.startswith("https://github.com/") and url.count("/") == 4
    readme = (REPO / "README.md").read_text()
    assert f"!git clone {url}\n%cd {url.rsplit('/', 1)[1]}/notebooks" in readme
    assert all(b in readme for b in _badges(url, "01_forward_noising.ipynb"))
    assert "<this repository's URL>" not in readme
    texts = [readme]
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and all(b in nb.cells[0].source for b in _badges(url, path.name))
        texts += [c.source for c in nb.cells]
    # every link to this project, anywhere in the README or a notebook, is that one URL
    links = {m for text in texts for m in re.findall(r"github\.com/[\w.-]+/ddpm[\w.-]*", text)}
    assert links == {url.removeprefix("https://")}, links


def test_ci_workflow_runs_the_ci_script_on_python_311():
    workflow = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert "runs-on: ubuntu-latest" in workflow and 'python-version: "3.11"' in workflow
    assert "run: bash .ci/run" in workflow and (REPO / ".ci" / "run").is_file()


def test_default_cache_dir_follows_kaggles_variable_not_a_folder(tmp_path, monkeypatch):
    from ddpm_helpers.cache import default_cache_dir
    (tmp_path / "kaggle" / "working").mkdir(parents=True)
    monkeypatch.setenv("DDPM_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / "cache"                          # a /kaggle/working folder is not Kaggle
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert default_cache_dir() == tmp_path / "kaggle" / "working" / "cache"
