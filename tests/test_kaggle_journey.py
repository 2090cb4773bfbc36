"""The Kaggle journey in the stand-in (tests/kaggle_standin.py): the harness itself on tiny notebooks, then the
real chain in small mode: 04 version 1 cut off by the time limit → 04 version 2 resumes from version 1's output and
finishes → 05 samples 04's final checkpoint (the same weights, not a model of its own) → figures in both outputs."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from kaggle_standin import InputsModified, KaggleStandIn

from ddpm_helpers import kaggle

REPO = Path(__file__).resolve().parent.parent
SMALL_STEPS = 160          # the stand-in's small budget ($DDPM_SMALL_MAX_STEPS), announced by the notebooks


def _kernel(folder: Path, slug: str, cells: list[str], kernel_sources=()) -> Path:
    folder = folder / slug
    folder.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), folder / "nb.ipynb")
    meta = {"id": f"alice/{slug}", "code_file": "nb.ipynb", "dataset_sources": ["alice/data"],
            "kernel_sources": list(kernel_sources)}
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    return folder


def _data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "numbers.txt").write_text("1 2 3\n")
    return tmp_path / "data"


@pytest.mark.parametrize("scheme, mounted", [("current", "input/notebooks/alice/chain"), ("legacy", "input/chain")])
def test_standin_environment_and_version_chain(tmp_path, scheme, mounted):
    """Kaggle's variables, /kaggle/working as cwd, datasets mounted, and version N's output an input of N+1."""
    cells = ["import os, pathlib\n"
             "print('RUN_TYPE', os.environ['KAGGLE_KERNEL_RUN_TYPE'], os.environ['KAGGLE_URL_BASE'],\n"
             "      os.environ['KAGGLE_DATA_PROXY_PROJECT'], 'SHARED' in ''.join(os.environ))\n"
             "print('CWD', os.getcwd())\n"
             "root = pathlib.Path(os.environ['DDPM_KAGGLE_ROOT'])\n"
             "seen = sorted(str(p.relative_to(root)) for p in root.glob('input/**/*.txt'))\n"
             "print('SEEN', seen)\n"
             "pathlib.Path('version.txt').write_text(str(len(seen)))"]
    kernel = _kernel(tmp_path / "kernels", "chain", cells, kernel_sources=["alice/chain"])
    standin = KaggleStandIn(tmp_path / "standin", {"alice/data": _data(tmp_path)}, scheme=scheme)
    first, second = standin.run(kernel), standin.run(kernel)
    assert (first.status, second.status) == ("complete", "complete"), first.error + second.error
    text = first.text()
    assert "RUN_TYPE Batch https://www.kaggle.com kaggle-161607 False" in text
    assert f"CWD {standin.kaggle / 'working'}" in text
    data = "input/datasets/alice/data/numbers.txt" if scheme == "current" else "input/data/numbers.txt"
    assert f"SEEN ['{data}']" in text
    assert f"SEEN {sorted([data, mounted + '/version.txt'])}" in second.text()  # version 1's output, as an input
    assert (second.output / "version.txt").read_text() == "2" and (first.output / "version.txt").read_text() == "1"


def test_standin_time_limit_ends_the_kernel_and_keeps_the_output(tmp_path):
    cells = ["import pathlib, time\npathlib.Path('before.txt').write_text('saved')\nprint('started')",
             "time.sleep(600)", "print('never printed')\npathlib.Path('after.txt').write_text('lost')"]
    kernel = _kernel(tmp_path / "kernels", "sleeper", cells)
    standin = KaggleStandIn(tmp_path / "standin", {"alice/data": _data(tmp_path)}, grace_s=1.0)
    version = standin.run(kernel, time_limit_s=15)   # room for a slow kernel start on a busy machine
    assert version.status == "time limit" and version.seconds < 60
    assert "started" in version.text() and "never printed" not in version.text()
    assert sorted(p.name for p in version.output.iterdir()) == ["before.txt"]


def test_standin_inputs_are_read_only(tmp_path):
    """chmod stops a normal user; as root (CI) it stops nothing, so the content check catches the write."""
    cells = ["import os, pathlib\n"
             "target = next(pathlib.Path(os.environ['DDPM_KAGGLE_ROOT']).glob('input/**/numbers.txt'))\n"
             "target.write_text('changed')"]
    kernel = _kernel(tmp_path / "kernels", "writer", cells)
    standin = KaggleStandIn(tmp_path / "standin", {"alice/data": _data(tmp_path)})
    try:
        version = standin.run(kernel)
    except InputsModified as exc:
        assert "alice/writer version 1 changed files under /kaggle/input" in str(exc)
    else:
        assert version.status == "error" and "PermissionError" in version.error
    assert (tmp_path / "data" / "numbers.txt").read_text() == "1 2 3\n"           # the dataset's source is intact


# ---------------------------------------------------------------------------------------------
# The real chain: 04 → 04 → 05
# ---------------------------------------------------------------------------------------------
def _kaggle_celeba(folder: Path) -> Path:
    """CelebA in the Kaggle dataset's layout: the 32 real test images if $DDPM_SHARED_DATA has them, else 48 made up."""
    images = folder / "img_align_celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    shared = Path(os.environ.get("DDPM_SHARED_DATA", "/nonexistent")) / "celeba_sample"
    if shared.is_dir():
        for jpg in sorted(shared.glob("*.jpg")):
            shutil.copy(jpg, images / jpg.name)
    else:
        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(0)
        for i in range(1, 49):
            base = rng.integers(40, 215, size=3)
            face = np.clip(base + rng.normal(0, 12, size=(218, 178, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(face).save(images / f"{i:06d}.jpg")
    names = sorted(p.name for p in images.glob("*.jpg"))
    (folder / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(f"{n},0\n" for n in names))
    return folder


@pytest.fixture
def standin_chain(tmp_path):
    kernels = kaggle.write_kernel_dirs(REPO / "notebooks", tmp_path / "kernels", "alice")
    by_number = {k.name.split("-")[1]: k for k in kernels}                      # "04" → ddpm-04-training
    datasets = {"jessicali9530/celeba-dataset": _kaggle_celeba(tmp_path / "celeba"),
                "alice/ddpm-helpers-code": kaggle.write_package_dataset(REPO, tmp_path / "build", "alice")}
    standin = KaggleStandIn(tmp_path / "standin", datasets, scheme="current",
                            extra_env={"DDPM_SMALL": "1", "DDPM_SMALL_MAX_STEPS": str(SMALL_STEPS)})
    return standin, by_number


def _fingerprint(checkpoint: Path) -> str:
    from ddpm_helpers.checkpoint import load_model
    from ddpm_helpers.generate import weights_fingerprint
    return weights_fingerprint(load_model(checkpoint)[0])


def test_kaggle_chain_04_cut_off_04_resumes_05_samples_04s_model(standin_chain):
    standin, kernel = standin_chain
    first_checkpoint = lambda working: any((working / "04_small").glob("ckpt_*.pt"))  # noqa: E731
    v1 = standin.run(kernel["04"], time_limit_s=240, cut_when=first_checkpoint)
    assert v1.status == "time limit", v1.error
    assert f"small budget from $DDPM_SMALL_MAX_STEPS: {SMALL_STEPS} steps" in v1.text()
    v1_steps = sorted(int(p.stem[5:]) for p in (v1.output / "04_small").glob("ckpt_*.pt"))
    assert v1_steps and v1_steps[-1] < SMALL_STEPS                             # cut off before the end
    assert list((v1.output / "cache").glob("*.npy"))                            # the cache is in version 1's output

    v2 = standin.run(kernel["04"], time_limit_s=400)
    assert v2.status == "complete", v2.error
    previous = standin.kaggle / "input" / "notebooks" / "alice" / "ddpm-04-training"
    text = v2.text()
    assert f"resuming from {previous / '04_small' / f'ckpt_{v1_steps[-1]:08d}.pt'}" in text
    assert f"cache folder: {previous / 'cache'}" in text and not (v2.output / "cache").exists()  # reused, not copied
    final = max((v2.output / "04_small").glob("ckpt_*.pt"))
    step = int(final.stem[5:])
    # it trains to the end, unless the session's 45-s budget ran out first on a busy machine (said, and cut cleanly)
    assert step == SMALL_STEPS or (step > v1_steps[-1] and "this session: time budget" in text), text[-2000:]
    logged = [int(row.split(",")[0]) for row in (v2.output / "04_small" / "metrics.csv").read_text().splitlines()[1:]]
    assert logged[0] <= v1_steps[-1] and logged[-1] >= step - 10                # the loss log continues across versions
    made = {p.name for p in (v2.output / "figures").iterdir()}
    assert {"04_small_loss.png", "04_small_samples.png", "04_small_figures.json"} <= made

    v3 = standin.run(kernel["05"], time_limit_s=400)
    assert v3.status == "complete", v3.error
    text = v3.text()
    # 04's final weights: its last checkpoint, or the weights-only export 04 writes beside it (same step)
    used = re.search(r"model: (\S+) \(step ([\d,]+)", text)
    assert used and Path(used.group(1)).parent == previous / "04_small", text[-2000:]
    assert Path(used.group(1)).name in (final.name, "model.safetensors") and int(used.group(2).replace(",", "")) == step
    printed = re.search(r"weights fingerprint: (\w+)", text).group(1)
    assert printed == _fingerprint(final) and "trained here" not in text     # 04's weights, not a model of its own
    assert not (v3.output / "05_small").exists()
    made = {p.name for p in (v3.output / "figures").iterdir()}
    assert {"05_small_trajectory.png", "05_small_ddpm_vs_ddim.png", "05_small_eta.png", "05_small_reverse.gif"} <= made
