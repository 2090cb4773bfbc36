"""The ablation (issue 24) end to end in-process on generated 16 px images with the tiny U-Net: results.json's schema
and numbers (recomputed from the checkpoints), resumption after a kill, the verdicts, and bad input."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from ddpm_helpers import ablate, cli
from ddpm_helpers import checkpoint as ckpt_io
from ddpm_helpers.config import TRAIN_PRESETS
from ddpm_helpers.errors import ConfigError
from ddpm_helpers.swd import swd

STEPS, N = 4, 8


def _images() -> np.ndarray:
    """40 smooth 16×16 grayscale patterns: the first 24 train, the last 16 are held out."""
    yy, xx = np.mgrid[0:16, 0:16]
    faces = [127 + 100 * np.sin(xx / (2 + i % 3) + i) * np.cos(yy / 3) for i in range(40)]
    return np.stack(faces).clip(0, 255).astype(np.uint8)[..., None]


def _ablation(out, variants=("base", "min-snr-5"), seeds=2, curve=("base",)) -> ablate.Ablation:
    base = TRAIN_PRESETS["smoke"]
    base = dataclasses.replace(base, num_threads=1, data=dataclasses.replace(base.data, max_images=24))
    return ablate.Ablation(base=base, variants=variants, seeds=seeds, max_steps=STEPS, n=N,
                           sampler=ablate.Sampler("ddim", steps=5), curve=curve, curve_points=2, out=str(out),
                           checkpoint_every=2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    published = ablate.REPO_FIGURES / ablate.PUBLISHED_JSON
    before = published.stat().st_mtime_ns if published.exists() else None
    lines = []
    results = ablate.run_ablation(_ablation(out), images=_images(), progress=False, log=lines.append)
    after = published.stat().st_mtime_ns if published.exists() else None
    return out, results, lines, (before, after)


def test_results_json_schema_and_numbers(finished):
    out, results, _, (before, after) = finished
    assert before == after                           # the committed copy is written only with --publish
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    p = saved["protocol"]
    for key in ("data", "split", "image_size", "budget_images", "sampler", "n", "metric"):
        assert key in p
    assert (p["image_size"], p["n"], p["budget_images"], p["train_images"], p["heldout_images"]) == (16, N, 32, 24, 16)
    images = _images()
    assert saved["floor"]["swd"] == pytest.approx(swd(images[:N], images[24:24 + N], seed=0, n=N).mean, rel=1e-6)
    assert [v["name"] for v in saved["variants"]] == ["base", "min-snr-5"]
    for v in saved["variants"]:
        assert v["kind"] == "train" and v["images_seen"] == STEPS * 8 and len(v["swd"]) == len(v["seconds"]) == 2
        assert all(np.isfinite(v["swd"])) and all(s > 0 for s in v["seconds"])
    base = saved["variants"][0]
    assert [pt[0] for pt in base["curve"]["0"]] == [16, 32] and base["curve"]["0"][-1][1] == base["swd"][0]
    assert base["swd"][0] != base["swd"][1]                           # the seeds differ
    ck = ckpt_io.list_checkpoints(ablate.run_dir(out, "base", 1))[-1]   # the score is the checkpoint's, recomputed
    assert ckpt_io.checkpoint_step(ck) == STEPS
    model, schedule, _ = ckpt_io.load_model(ck)
    again = ablate.score(model, schedule, ablate.Sampler("ddim", steps=5), N, images[24:], seed=0)
    assert again == pytest.approx(base["swd"][1], rel=1e-6)
    assert (out / "ablations.png").stat().st_size > 0 and (out / "ablations.pdf").stat().st_size > 0
    assert (out / "ablations_samples.png").stat().st_size > 0       # one row of samples per variant


def test_killed_ablation_resumes_exactly_and_reuses_finished_runs(finished, tmp_path, monkeypatch):
    out, results, _, _ = finished
    real_train = ablate.train

    def killed_at_step_3(cfg, **kw):
        def on_step(step):
            kw["on_step"](step)
            if step == 3:
                raise KeyboardInterrupt
        return real_train(cfg, **{**kw, "on_step": on_step})
    monkeypatch.setattr(ablate, "train", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        ablate.run_ablation(_ablation(tmp_path, variants=("base",), seeds=1, curve=()), images=_images(),
                            progress=False, log=lambda m: None)
    assert not (ablate.run_dir(tmp_path, "base", 0) / "score.json").exists()
    monkeypatch.setattr(ablate, "train", real_train)
    lines = []
    ablate.run_ablation(_ablation(tmp_path, variants=("base",), seeds=1, curve=()), images=_images(),
                        progress=False, log=lines.append)
    assert any("resuming from its checkpoint at step 2" in m for m in lines)
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["variants"][0]["swd"] == [results["variants"][0]["swd"][0]]     # = the uninterrupted run's
    # a rerun with one more variant reuses the finished run, says so, and leaves its checkpoint alone
    ck = ckpt_io.list_checkpoints(ablate.run_dir(tmp_path, "base", 0))[-1]
    stamp = ck.stat().st_mtime_ns
    lines = []
    both = ablate.run_ablation(_ablation(tmp_path, variants=("base", "ddim-10"), seeds=1, curve=()),
                               images=_images(), progress=False, log=lines.append, publish=tmp_path / "pub")
    assert any("reusing finished run base seed 0" in m for m in lines) and ck.stat().st_mtime_ns == stamp
    sample = both["variants"][1]
    assert sample["name"] == "ddim-10" and sample["kind"] == "sample" and sample["images_seen"] == STEPS * 8
    published = json.loads((tmp_path / "pub" / ablate.PUBLISHED_JSON).read_text())     # --publish's copy
    assert published == json.loads(json.dumps(both)) and (tmp_path / "pub" / "ablations.pdf").is_file()
    samples = tmp_path / "pub" / "ablations_samples.png"
    assert samples.read_bytes() == (tmp_path / "ablations_samples.png").read_bytes()


def test_a_sampling_variant_alone_runs_base_first_and_another_protocol_is_refused(finished, tmp_path):
    out, _, _, _ = finished
    shutil.copytree(out, tmp_path / "a")
    lines = []
    res = ablate.run_ablation(_ablation(tmp_path / "a", variants=("ddim-10",), curve=("base",)), images=_images(),
                              progress=False, log=lines.append)
    assert [v["name"] for v in res["variants"]] == ["base", "ddim-10"]
    assert sum("reusing finished run base" in m for m in lines) == 2
    recipe = ablate.Ablation(base=TRAIN_PRESETS["cpu-celeba"]).protocol("d", 10, 10)   # tuples (channel_mults) inside
    ablate._check_protocol(tmp_path / "b", recipe)
    ablate._check_protocol(tmp_path / "b", recipe)                 # a rerun reads back the protocol it wrote
    other = dataclasses.replace(_ablation(tmp_path / "a"), max_steps=STEPS + 1)
    with pytest.raises(ConfigError, match="another protocol.*budget"):
        ablate.run_ablation(other, images=_images(), progress=False, log=lambda m: None)


def test_no_ema_reads_base_raw_weights_which_equal_a_run_trained_with_decay_0(finished, tmp_path):
    """The EMA never changes the training trajectory, so the sampling variant "no-ema" (base's raw weights) is the
    same model as a run trained with decay 0, bit for bit; its score is the raw weights' score; the DPM-Solver++
    variant scores base's EMA weights with 10 model calls."""
    out, _, _, _ = finished
    shutil.copytree(out, tmp_path / "a")
    ab = _ablation(tmp_path / "a", variants=("no-ema", "dpm++2m-10"), curve=("base",))
    res = {v["name"]: v for v in ablate.run_ablation(ab, images=_images(), progress=False,
                                                     log=lambda m: None)["variants"]}
    assert res["no-ema"]["kind"] == "sample" and res["no-ema"]["images_seen"] == STEPS * 8
    ck = ckpt_io.list_checkpoints(ablate.run_dir(tmp_path / "a", "base", 1))[-1]
    raw, schedule, cfg = ckpt_io.load_model(ck, ema=False)
    ema, _, _ = ckpt_io.load_model(ck, ema=True)
    images = _images()
    assert res["no-ema"]["swd"][1] == pytest.approx(ablate.score(raw, schedule, ab.sampler, N, images[24:]), rel=1e-6)
    assert res["dpm++2m-10"]["swd"][1] == pytest.approx(
        ablate.score(ema, schedule, ablate.Sampler("dpm++2m", steps=10), N, images[24:]), rel=1e-6)
    assert res["no-ema"]["swd"][1] != res["base"]["swd"][1]                      # raw ≠ EMA weights
    assert json.loads((ablate.run_dir(tmp_path / "a", "no-ema", 1) / "score.json").read_text())["weights"] == "raw"
    # train the same seed with decay 0: its raw weights (and its "EMA", a copy of them) equal base's raw weights
    no_ema = ablate.train(dataclasses.replace(ab.train_config(ablate.variant("base"), 1, tmp_path / "decay0"),
                                              ema_decay=0.0), images=images[:24], progress=False, verbose=False)
    again, _, _ = ckpt_io.load_model(no_ema.checkpoint, ema=False)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), raw.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), raw.state_dict().values()))


def test_compare_calls_only_differences_beyond_the_seed_spread_effects():
    results = {"floor": {"swd": 10.0}, "variants": [
        {"name": "base", "kind": "train", "swd": [30.0, 32.0], "seconds": [1, 1]},
        {"name": "a", "kind": "train", "swd": [25.0, 26.0], "seconds": [1, 1]},      # −5.5 > spread 2: better
        {"name": "b", "kind": "train", "swd": [30.5, 33.5], "seconds": [1, 1]},      # +1 < spread 3: no effect
        {"name": "c", "kind": "sample", "swd": [40.0, 41.0], "seconds": [1, 1]},     # +9.5: worse
        {"name": "d", "kind": "train", "swd": [20.0], "seconds": [1]}]}
    rows = {r["name"]: r for r in ablate.compare(results)}
    assert [rows[k]["verdict"] for k in "abcd"] == ["better", "no measurable effect", "worse",
                                                   "one seed: spread unknown"]
    assert rows["a"]["diff"] == pytest.approx(-5.5) and rows["b"]["bound"] == pytest.approx(3.0)
    assert rows["base"]["excess_over_floor"] == pytest.approx(21.0)
    assert "| a | train | 25.50 |" in ablate.table({**results, "protocol": {"n": 8, "budget_images": 32}})


def test_bad_input_is_one_line_and_list_names_every_variant(capsys, tmp_path):
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        _ablation(tmp_path, variants=("base", "nope"))
    with pytest.raises(ConfigError, match="--seeds"):
        _ablation(tmp_path, seeds=0)
    with pytest.raises(ConfigError, match="too small"):
        ablate.steps_for_images(7, 8)
    with pytest.raises(ConfigError, match="--n 20"):
        ablate.run_ablation(dataclasses.replace(_ablation(tmp_path), n=20), images=_images(), progress=False)
    for argv, needle in ((["--variants", "base,nope"], "unknown variant"), (["--seeds", "0"], "--seeds"),
                         (["--images", "10"], "too small"), (["--max-steps", "5", "--images", "64"], "not allowed")):
        assert cli.main(["ablate", "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[0] and len(err) <= 2
    assert cli.main(["ablate", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(ablate.VARIANT_NAMES)
    for name in ("base", "report-blocks", "attention", "half-width", "cosine-beta", "lr-2e-4", "no-warmup", "no-ema",
                 "ema-0.9999", "min-snr-5", "input-perturbation-0.1", "ddpm-sigma-beta", "ddpm-sigma-beta-tilde"):
        assert name in ablate.VARIANT_NAMES
