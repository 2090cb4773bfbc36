"""Ablations: which choices of the recipe matter, and how much (issue 24; taught in notebook 06).

Every training variant changes one thing of a base recipe and trains for the same budget in images seen; every
sampling variant reuses ``base``'s checkpoints with another sampler. Each (variant, seed) run is scored the same
way: n samples from the EMA weights with a fixed sampler and sampling seed, SWD (swd.py, Karras et al. 2018)
against n held-out real faces never trained on, beside the real-vs-real floor (n training images against the
same held-out ones). The split is deterministic: the first ``max_images`` images of the split train, the images
after them are held out (swd.heldout_images, as ``evaluate`` does; an array given directly is split the same way).

Layout of ``--out DIR``::

    DIR/protocol.json              what every run of DIR shares (a rerun with another protocol is refused)
    DIR/runs/<variant>/seed<k>/    one run folder each: checkpoints, samples/, curve.json, score.json
    DIR/results.json               protocol, floor, variants (name, kind, swd per seed, images_seen, seconds)
    DIR/ablations.png / .pdf       the plot (print style)

Resumable: a killed ablation continues each unfinished run from its last checkpoint (train.py's exact resume),
and a rerun reuses finished runs (score.json) and says so. results.json is rewritten after every finished run.
At a CPU budget the ablation ranks how fast each lever learns, not where it converges.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import prepare_images
from .errors import ConfigError, DDPMError
from .files import atomic_open
from .generate import generate
from .plotting import PAGE_WIDTH, PRINT_DPI, plot_image_rows, print_style, save_figure
from .schedule import NoiseSchedule
from .swd import heldout_images, swd
from .train import train

RESULTS_FORMAT = "ddpm_helpers/ablation/1"
DEFAULT_SEEDS = 3
DEFAULT_N = 256                 # samples per run = held-out images = training images of the floor
STEP_COST = 3.0                 # one training step ≈ 3 forward passes of its batch (forward + backward)
REPO_FIGURES = Path(__file__).resolve().parents[1] / "figures"
PUBLISHED_JSON = "ablations.json"         # the committed copy: figures/ablations.json (written only when asked)
PLOT_STEM = "ablations"
SAMPLES_STEM = "ablations_samples"       # the same starting noise drawn by every variant
SAMPLES_PER_ROW = 8
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


class AblationInterrupted(DDPMError):
    """A training run stopped early (a signal): the ablation stops; rerun the same command to resume."""


# ---------------------------------------------------------------------------------------------
# Samplers and variants
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampler:
    """A fixed sampler: generate.generate's sampler ("ddim", "ddpm", "dpm++2m" or "dpm++3m"), its steps (model
    calls), DDIM's η, DDPM's σ_t² choice and the grid of DDIM / DPM-Solver++ (None: generate's default)."""

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    variance: str = "beta"
    spacing: Optional[str] = None

    def label(self) -> str:
        if self.sampler == "ddpm":
            return f"DDPM, all T steps, σ² = {'β' if self.variance == 'beta' else 'β̃'}"
        if self.sampler.startswith("dpm++"):
            return f"DPM-Solver++({self.sampler[5:].upper()}), {self.steps} calls"
        return f"DDIM-{self.steps}, η = {self.eta:g}"

    def settings(self) -> Dict[str, Any]:
        """The fields that define it (None fields left out: generate's defaults)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def network_calls(self, T: int) -> int:
        """Network evaluations per image."""
        return T if self.sampler == "ddpm" else self.steps


def _model(cfg: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def _half_width(cfg: TrainConfig) -> TrainConfig:
    return _model(cfg, base_channels=max(1, cfg.model.base_channels // 2))


@dataclass(frozen=True)
class Variant:
    """One ablation: name, kind ("train" or "sample"), one line on what it changes, and the change itself
    (``change`` of base's TrainConfig for a training variant; for a sampling one, on base's runs: ``sampler``, None
    for the ablation's own, and ``ema``, False to read the raw weights instead of their EMA)."""

    name: str
    kind: str
    what: str
    change: Optional[Callable[[TrainConfig], TrainConfig]] = None
    sampler: Optional[Sampler] = None
    ema: bool = True

    def config(self, base: TrainConfig) -> TrainConfig:
        return self.change(base) if self.change is not None else base


VARIANTS: Tuple[Variant, ...] = (
    Variant("base", "train", "the base recipe (--preset; default cpu-celeba-v1: GroupNorm + SiLU residual U-Net, no "
                             "attention, lr 1e-3, 200-step warm-up, EMA 0.995)"),
    Variant("report-blocks", "train", "the report's blocks at base's width: BatchNorm + ReLU, no residual",
            lambda c: _model(c, norm="batch", act="relu", residual=False)),
    Variant("attention", "train", "self-attention at the bottleneck", lambda c: _model(c, attention=True)),
    Variant("half-width", "train", "half the channels at every level", _half_width),
    Variant("cosine-beta", "train", "cosine β schedule (Nichol & Dhariwal 2021) instead of linear",
            lambda c: dataclasses.replace(c, diffusion=dataclasses.replace(c.diffusion, schedule="cosine"))),
    Variant("lr-2e-4", "train", "learning rate 2e-4 (the DDPM paper's) instead of the recipe's",
            lambda c: dataclasses.replace(c, lr=2e-4)),
    Variant("lr-2e-3", "train", "learning rate 2e-3, twice the recipe's",
            lambda c: dataclasses.replace(c, lr=2e-3)),
    Variant("no-warmup", "train", "no learning-rate warm-up", lambda c: dataclasses.replace(c, warmup_steps=0)),
    # The EMA is a read-out: it never changes the training trajectory (tests/test_ablate.py checks that a run with
    # decay 0 ends with base's raw weights bit for bit), so "no EMA" samples base's raw weights instead of training
    # again: the same answer for no training cost.
    Variant("no-ema", "sample", "no EMA: base's checkpoints, the raw weights (= training with decay 0)", ema=False),
    Variant("ema-0.9999", "train", "EMA decay 0.9999 with warm-up min(d, (1+n)/(10+n))",
            lambda c: dataclasses.replace(c, ema_decay=0.9999, ema_warmup=True)),
    Variant("min-snr-5", "train", "Min-SNR-5 loss weight min(SNR_t, 5)/SNR_t (ε-prediction)",
            lambda c: dataclasses.replace(c, min_snr_gamma=5.0)),
    Variant("input-perturbation-0.1", "train", "input perturbation: x_t built from ε + 0.1·ξ, target ε",
            lambda c: dataclasses.replace(c, input_perturbation=0.1)),
    Variant("ddpm-sigma-beta", "sample", "base's checkpoints, DDPM ancestral sampling with σ_t² = β_t (the report's)",
            sampler=Sampler("ddpm", variance="beta")),
    Variant("ddpm-sigma-beta-tilde", "sample", "base's checkpoints, DDPM ancestral sampling with σ_t² = β̃_t",
            sampler=Sampler("ddpm", variance="posterior")),
    Variant("ddim-10", "sample", "base's checkpoints, DDIM with 10 steps", sampler=Sampler("ddim", steps=10)),
    Variant("ddim-20", "sample", "base's checkpoints, DDIM with 20 steps", sampler=Sampler("ddim", steps=20)),
    Variant("ddim-100", "sample", "base's checkpoints, DDIM with 100 steps", sampler=Sampler("ddim", steps=100)),
    Variant("dpm++2m-10", "sample", "base's checkpoints, DPM-Solver++(2M) with 10 model calls",
            sampler=Sampler("dpm++2m", steps=10)),
    Variant("dpm++2m-20", "sample", "base's checkpoints, DPM-Solver++(2M) with 20 model calls",
            sampler=Sampler("dpm++2m", steps=20)),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
DEFAULT_CURVE = ("base", "min-snr-5", "input-perturbation-0.1")


def variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    raise ConfigError(f"unknown variant {name!r} (--variants); see `ablate --list` for the {len(VARIANTS)} names")


def list_variants() -> str:
    """One line per variant: its name, kind and what it changes (``ablate --list``)."""
    width = max(len(v.name) for v in VARIANTS)
    return "\n".join(f"{v.name:<{width}}  {v.kind:<6}  {v.what}" for v in VARIANTS)


def parse_variants(text: Optional[str]) -> Tuple[str, ...]:
    """'a,b' → ('a', 'b'), each checked; None or 'all' → every variant."""
    if text is None or text.strip() == "all":
        return VARIANT_NAMES
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError("--variants is empty: name at least one variant (see `ablate --list`)")
    for n in names:
        variant(n)
    return names


# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ablation:
    """What an ablation runs: the base recipe (data included; its max_images trains, the rest is held out), the
    variants and seeds, the budget in optimizer steps (images seen = steps × batch size, the same for every
    training variant), the scoring (n samples, sampler, sampling seed) and where it goes."""

    base: TrainConfig
    variants: Tuple[str, ...] = VARIANT_NAMES
    seeds: int = DEFAULT_SEEDS
    max_steps: int = 1500
    n: int = DEFAULT_N
    sampler: Sampler = Sampler()
    sample_seed: int = 0
    sample_batch: int = 64
    curve: Tuple[str, ...] = DEFAULT_CURVE     # variants also scored at 1/4, 1/2, 3/4 of the budget
    curve_points: int = 4
    out: str = "runs/ablate"
    device: Optional[str] = None
    checkpoint_every: Optional[int] = None     # default: every quarter of the budget, at most 250 steps apart

    def __post_init__(self):
        for name in (*self.variants, *self.curve):
            variant(name)
        if not (isinstance(self.seeds, int) and self.seeds >= 1):
            raise ConfigError(f"--seeds is {self.seeds!r}: must be an integer >= 1")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ConfigError(f"the budget is {self.max_steps!r} steps: it must give at least one optimizer step of "
                              f"{self.base.batch_size} images (--max-steps >= 1, --images >= {self.base.batch_size})")
        if not (isinstance(self.n, int) and self.n >= 2):
            raise ConfigError(f"--n is {self.n!r}: SWD needs at least 2 samples per run")
        if self.curve_points < 1:
            raise ConfigError(f"curve_points is {self.curve_points}: must be >= 1")

    @property
    def images_seen(self) -> int:
        return self.max_steps * self.base.batch_size

    def plan(self) -> List[Variant]:
        """The variants to run, base first whenever a sampling variant needs its checkpoints."""
        chosen = [variant(n) for n in self.variants]
        if any(v.kind == "sample" for v in chosen) and "base" not in self.variants:
            chosen.insert(0, variant("base"))
        return sorted(chosen, key=lambda v: (v.name != "base", v.kind == "sample"))

    def checkpoints_at(self, name: str) -> List[int]:
        """The steps where a run is scored: the end of the budget, plus intermediate points for curve variants."""
        if name not in self.curve:
            return [self.max_steps]
        points = {max(1, round(self.max_steps * k / self.curve_points)) for k in range(1, self.curve_points + 1)}
        return sorted(points)

    def train_config(self, v: Variant, seed: int, run_dir: Path) -> TrainConfig:
        """base with the variant's change, the seed, the run folder and the budget (no time limit: same images)."""
        cfg = dataclasses.replace(self.base, seed=seed, out_dir=str(run_dir), max_steps=self.max_steps, epochs=None,
                                  time_budget=None, sample_every=0, sample_n=16, sample_steps=20,
                                  keep_checkpoints=2,
                                  checkpoint_every=self.checkpoint_every or max(1, min(250, self.max_steps // 4)),
                                  log_every=max(1, min(25, self.max_steps)))
        return v.config(cfg)

    def protocol(self, data: str, train_count: int, heldout_count: int) -> Dict[str, Any]:
        """The facts every run of this ablation shares (protocol.json, results.json's ``protocol``), as JSON reads
        them back (tuples become lists), so that a rerun compares equal."""
        b = self.base
        split = f"first {train_count:,} images train; {heldout_count:,} images after them held out (never trained on)"
        recipe = {"unet": dataclasses.asdict(b.model), "diffusion": dataclasses.asdict(b.diffusion), "lr": b.lr,
                  "warmup_steps": b.warmup_steps, "ema_decay": b.ema_decay}
        facts = {"data": data, "split": split, "train_images": train_count, "heldout_images": heldout_count,
                 "image_size": b.data.image_size, "channels": b.data.channels, "batch_size": b.batch_size,
                 "budget_steps": self.max_steps, "budget_images": self.images_seen, "sampler": self.sampler.label(),
                 "sampler_settings": self.sampler.settings(), "n": self.n, "sample_seed": self.sample_seed,
                 "metric": "SWD×1e3 (Karras et al. 2018, swd.py) of n samples against n held-out real images; "
                           "lower is better; floor: n training images against the same held-out images",
                 "base_recipe": recipe}
        return json.loads(json.dumps(facts))


# ---------------------------------------------------------------------------------------------
# Data: a deterministic split into training and held-out images
# ---------------------------------------------------------------------------------------------
def split_data(base: TrainConfig, images: Optional[np.ndarray] = None,
               progress: bool = False) -> Tuple[np.ndarray, np.ndarray, str]:
    """(training images, held-out images, description), both uint8 (N, H, W, C).

    images given: the first base.data.max_images train (default: half), the rest are held out. Otherwise CelebA
    from base.data: its first max_images train (data.prepare_images) and the images of the split after them are
    held out (swd.heldout_images, as `evaluate` uses); max_images must be set so that some images are left.
    """
    count = base.data.max_images
    if images is not None:
        count = count if count is not None else len(images) // 2
        if not 1 <= count < len(images):
            raise ConfigError(f"cannot hold out images: {len(images)} images given, {count} to train on")
        return (images[:count], images[count:],
                f"{len(images)} images given directly: images 1–{count} train, {count + 1}–{len(images)} held out")
    if count is None:
        raise ConfigError("the ablation needs held-out images: set the number of training images (--train-images); "
                          "the images after them are held out")
    data_cfg = dataclasses.replace(base.data, offline_fallback=False)
    train_images, desc = prepare_images(data_cfg, progress=progress)
    heldout, held_desc = heldout_images(data_cfg, progress=progress)
    return train_images, heldout, f"{desc}; held out: {held_desc}"


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def score(model: torch.nn.Module, schedule, sampler: Sampler, n: int, heldout: np.ndarray, seed: int = 0,
          batch_size: int = 64, device=None) -> float:
    """SWD×1e3 of n samples (fixed sampler, sampling seed) against the first n held-out images."""
    c, h = heldout.shape[-1], heldout.shape[1]
    samples = generate(model, schedule, n, sampler=sampler.sampler, steps=sampler.steps, eta=sampler.eta,
                       variance=sampler.variance, batch_size=batch_size, seed=seed, device=device,
                       image_size=h, channels=c, progress=False, spacing=sampler.spacing)
    return swd(samples, heldout[:n], seed=seed, n=n).mean


def floor(train_images: np.ndarray, heldout: np.ndarray, n: int, seed: int = 0) -> float:
    """The real-vs-real SWD×1e3 at the same n: the first n training images against the first n held-out ones."""
    return swd(train_images[:n], heldout[:n], seed=seed, n=n).mean


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(record: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return path


def run_dir(out: Path, name: str, seed: int) -> Path:
    return Path(out) / "runs" / name / f"seed{seed}"


def _latest_step(folder: Path) -> int:
    found = ckpt_io.list_checkpoints(folder) if folder.is_dir() else []
    return ckpt_io.checkpoint_step(found[-1]) if found else 0


class _Progress:
    """One overall bar in work units (one unit = one training step; sampling counted as its forward passes)."""

    def __init__(self, ab: Ablation, plan: List[Variant], out: Path, T: int, enabled: bool):
        self.sample_units = ab.n / (STEP_COST * ab.base.batch_size)
        total = done = 0.0
        for v in plan:
            for seed in range(ab.seeds):
                folder = run_dir(out, v.name, seed)
                finished = (folder / "score.json").exists()
                units = self._sampling(ab, v, T)
                if v.kind == "train":
                    units += ab.max_steps
                    done += ab.max_steps if finished else min(_latest_step(folder), ab.max_steps)
                if finished:
                    done += self._sampling(ab, v, T)
                total += units
        self.bar = tqdm(total=total, initial=done, unit="unit", bar_format=BAR_FORMAT, desc="ablate",
                        disable=not enabled, dynamic_ncols=True, smoothing=0.05)

    def _sampling(self, ab: Ablation, v: Variant, T: int) -> float:
        sampler = v.sampler or ab.sampler
        points = len(ab.checkpoints_at(v.name)) if v.kind == "train" else 1
        return points * sampler.network_calls(T) * self.sample_units

    def add(self, units: float) -> None:
        self.bar.update(min(units, self.bar.total - self.bar.n))

    def where(self, text: str) -> None:
        self.bar.set_postfix_str(text)


def _train_run(ab: Ablation, v: Variant, seed: int, out: Path, train_images: np.ndarray, heldout: np.ndarray,
               bar: _Progress, log: Callable[[str], None], T: int) -> Dict[str, Any]:
    """Train (or resume) one (variant, seed) run to each scoring point and score it there; returns score.json."""
    folder = run_dir(out, v.name, seed)
    cfg = ab.train_config(v, seed, folder)
    curve_path = folder / "curve.json"
    curve = (_read_json(curve_path) or {}).get("points", [])
    step_units = ab.sampler.network_calls(T) * bar.sample_units
    started = _latest_step(folder)
    if started:
        log(f"[ablate] {v.name} seed {seed}: resuming from its checkpoint at step {started:,}")
    for point in ab.checkpoints_at(v.name):
        if any(p["step"] == point for p in curve) or _latest_step(folder) > point:
            continue                  # scored already (or its checkpoint is gone: the run is past it)
        last = [_latest_step(folder)]

        def on_step(step: int, last: list = last) -> None:
            bar.add(step - last[0])
            last[0] = step
        result = train(dataclasses.replace(cfg, max_steps=point), resume=True, device=ab.device, images=train_images,
                       progress=False, verbose=False, on_step=on_step)
        if result.stop_reason != "done":
            raise AblationInterrupted(f"{v.name} seed {seed} stopped at step {result.step} ({result.stop_reason}); "
                                      "rerun the same command to resume")
        t0 = time.time()
        value = score(result.model, _schedule(cfg, ab.device), ab.sampler, ab.n, heldout, ab.sample_seed,
                      ab.sample_batch, ab.device)
        elapsed = float(ckpt_io.load_checkpoint(result.checkpoint).get("elapsed", 0.0))
        curve.append({"step": point, "images_seen": point * cfg.batch_size, "swd": value,
                      "train_seconds": elapsed, "score_seconds": time.time() - t0})
        _write_json({"points": curve}, curve_path)
        bar.add(step_units)
    final = max(curve, key=lambda p: p["step"])
    return {"name": v.name, "kind": "train", "seed": seed, "swd": final["swd"], "images_seen": final["images_seen"],
            "seconds": final["train_seconds"], "score_seconds": final["score_seconds"],
            "curve": [[p["images_seen"], p["swd"]] for p in sorted(curve, key=lambda p: p["step"])]}


def _schedule(cfg: TrainConfig, device):
    return NoiseSchedule.from_config(cfg.diffusion).to(device or "cpu")


def _sample_run(ab: Ablation, v: Variant, seed: int, out: Path, heldout: np.ndarray, bar: _Progress,
                T: int) -> Dict[str, Any]:
    """Score base's final checkpoint of this seed with the variant's sampler (or the ablation's) and weights (EMA or
    raw); returns score.json."""
    model, schedule = final_model(out, v, seed, ab.max_steps, ab.device)
    sampler = v.sampler or ab.sampler
    t0 = time.time()
    value = score(model, schedule, sampler, ab.n, heldout, ab.sample_seed, ab.sample_batch, ab.device)
    seconds = time.time() - t0
    bar.add(sampler.network_calls(T) * bar.sample_units)
    return {"name": v.name, "kind": "sample", "seed": seed, "swd": value, "images_seen": ab.images_seen,
            "seconds": seconds, "sampler": sampler.label(), "weights": "EMA" if v.ema else "raw"}


def _check_protocol(out: Path, protocol: Dict[str, Any]) -> None:
    """Write DIR/protocol.json, or refuse a folder that holds runs of another protocol."""
    path = out / "protocol.json"
    saved = _read_json(path)
    if saved is not None and saved != protocol:
        keys = sorted(k for k in set(saved) | set(protocol) if saved.get(k) != protocol.get(k))
        raise ConfigError(f"{out} holds an ablation with another protocol (differs in: {', '.join(keys)}); "
                          "choose another --out or repeat that ablation's settings")
    if saved is None:
        _write_json(protocol, path)


def run_ablation(ab: Ablation, images: Optional[np.ndarray] = None, progress: bool = True,
                 log: Callable[[str], None] = print, publish: Optional[Path] = None) -> Dict[str, Any]:
    """Run (or resume) every (variant, seed) of ab and write DIR/results.json and the plot; returns the results.

    images: a uint8 (N, H, W, C) array instead of base.data (split as split_data says). publish: a folder that also
    receives ablations.json and the plot (the repository's figures/ only when the user asks: `ablate --publish`).
    """
    out = Path(ab.out)
    train_images, heldout, data_desc = split_data(ab.base, images, progress=progress)
    if ab.n > len(heldout) or ab.n > len(train_images):
        raise ConfigError(f"--n {ab.n} is more than the {len(heldout):,} held-out / {len(train_images):,} training "
                          "images: lower --n or hold out more images")
    protocol = ab.protocol(data_desc, len(train_images), len(heldout))
    _check_protocol(out, protocol)
    floor_path = out / "floor.json"
    floor_rec = _read_json(floor_path)
    if floor_rec is None:
        floor_rec = {"swd": floor(train_images, heldout, ab.n, ab.sample_seed), "n": ab.n,
                     "what": f"the first {ab.n:,} training images against the first {ab.n:,} held-out images"}
        _write_json(floor_rec, floor_path)
    plan = ab.plan()
    T = ab.base.diffusion.timesteps
    bar = _Progress(ab, plan, out, T, progress)
    scores: Dict[str, Dict[int, Dict[str, Any]]] = {}
    results = None
    try:
        for v in plan:
            for seed in range(ab.seeds):
                path = run_dir(out, v.name, seed) / "score.json"
                rec = _read_json(path)
                if rec is not None:
                    log(f"[ablate] reusing finished run {v.name} seed {seed}: SWD {rec['swd']:.2f} ({path})")
                else:
                    bar.where(f"{v.name} seed {seed}")
                    if v.kind == "train":
                        rec = _train_run(ab, v, seed, out, train_images, heldout, bar, log, T)
                    else:
                        rec = _sample_run(ab, v, seed, out, heldout, bar, T)
                    _write_json(rec, path)
                    log(f"[ablate] {v.name} seed {seed}: SWD {rec['swd']:.2f} after {rec['images_seen']:,} images "
                        f"({rec['seconds']:.0f} s)")
                scores.setdefault(v.name, {})[seed] = rec
                results = collect(protocol, floor_rec, plan, scores)
                _write_json(results, out / "results.json")
                if publish is not None:            # after every finished run: a session that ends mid-run loses nothing
                    _write_json(results, Path(publish) / PUBLISHED_JSON)
    finally:
        bar.bar.close()
    plot_results(results, out / PLOT_STEM)
    samples = plot_samples(results, out, out / SAMPLES_STEM, device=ab.device)
    if publish is not None:
        _write_json(results, Path(publish) / PUBLISHED_JSON)
        plot_results(results, Path(publish) / PLOT_STEM)
        for path in samples:
            with atomic_open(Path(publish) / path.name, "wb") as f:
                f.write(path.read_bytes())
        log(f"[ablate] published {Path(publish) / PUBLISHED_JSON}, {PLOT_STEM}.png/.pdf and {SAMPLES_STEM}.png")
    return results


def collect(protocol: Dict[str, Any], floor_rec: Dict[str, Any], plan: Sequence[Variant],
            scores: Dict[str, Dict[int, Dict[str, Any]]]) -> Dict[str, Any]:
    """results.json: protocol, floor, and per variant name, kind, what, swd / seconds per seed, images_seen, curve."""
    variants = []
    for v in plan:
        runs = scores.get(v.name, {})
        if not runs:
            continue
        seeds = sorted(runs)
        variants.append({"name": v.name, "kind": v.kind, "what": v.what, "seeds": seeds,
                         "swd": [runs[s]["swd"] for s in seeds], "images_seen": runs[seeds[0]]["images_seen"],
                         "seconds": [runs[s]["seconds"] for s in seeds],
                         "curve": {str(s): runs[s].get("curve", []) for s in seeds if runs[s].get("curve")}})
    return {"format": RESULTS_FORMAT, "protocol": protocol, "floor": floor_rec, "variants": variants}


# ---------------------------------------------------------------------------------------------
# Reading results: what exceeds the seed spread
# ---------------------------------------------------------------------------------------------
def compare(results: Dict[str, Any], reference: str = "base") -> List[Dict[str, Any]]:
    """Each variant against the reference: mean SWD, spread (max − min over seeds), difference of means and verdict.

    A difference is an effect only when it exceeds the larger of the two seed spreads ("better"/"worse");
    otherwise "no measurable effect"; with a single seed the spread is unknown ("one seed: spread unknown").
    """
    by_name = {v["name"]: v for v in results["variants"]}
    if reference not in by_name:
        raise ConfigError(f"the results hold no {reference!r} variant to compare with")
    ref = by_name[reference]
    ref_mean, ref_spread = float(np.mean(ref["swd"])), float(np.ptp(ref["swd"]))
    rows = []
    for v in results["variants"]:
        mean, spread = float(np.mean(v["swd"])), float(np.ptp(v["swd"]))
        diff = mean - ref_mean
        bound = max(spread, ref_spread)
        if v["name"] == reference:
            verdict = "reference"
        elif min(len(v["swd"]), len(ref["swd"])) < 2:
            verdict = "one seed: spread unknown"
        elif abs(diff) > bound:
            verdict = "better" if diff < 0 else "worse"
        else:
            verdict = "no measurable effect"
        rows.append({"name": v["name"], "kind": v["kind"], "mean": mean, "spread": spread, "diff": diff,
                     "bound": bound, "verdict": verdict, "seconds": float(np.mean(v["seconds"])),
                     "excess_over_floor": mean - results["floor"]["swd"]})
    return rows


def table(results: Dict[str, Any]) -> str:
    """A Markdown table of compare(results) with the floor, for RESULTS.md and notebook 06."""
    lines = [f"SWD×1e3 of {results['protocol']['n']:,} samples against held-out faces after "
             f"{results['protocol']['budget_images']:,} images; real-vs-real floor {results['floor']['swd']:.2f}.", "",
             "| variant | kind | SWD mean | seed spread | Δ vs base | verdict | seconds* |",
             "|---|---|---:|---:|---:|---|---:|"]
    for r in compare(results):
        lines.append(f"| {r['name']} | {r['kind']} | {r['mean']:.2f} | {r['spread']:.2f} | {r['diff']:+.2f} | "
                     f"{r['verdict']} | {r['seconds']:.0f} |")
    lines += ["", "*mean per seed: training seconds of a training variant, sampling seconds of a sampling one."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------------------
def plot_results(results: Optional[Dict[str, Any]], stem: Path) -> List[Path]:
    """Left: SWD per variant (each seed a dot, the mean a bar |), the floor and base's mean as lines. Right: SWD
    against images seen for the curve variants (mean over seeds, band from min to max). PNG and PDF, print style."""
    if not results or not results["variants"]:
        return []
    rows = compare(results)
    curves = [v for v in results["variants"] if any(len(c) > 1 for c in v.get("curve", {}).values())]
    with print_style():
        fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(PAGE_WIDTH, 0.2 * len(rows) + 1.3), squeeze=False,
                                 gridspec_kw={"width_ratios": [1.4, 1] if curves else [1]})
        ax = axes[0, 0]
        names = [r["name"] for r in rows][::-1]
        for i, name in enumerate(names):
            v = next(x for x in results["variants"] if x["name"] == name)
            color = "C0" if v["kind"] == "train" else "C2"
            ax.plot([np.mean(v["swd"])], [i], "|", color=color, markersize=9, markeredgewidth=1.5)
            ax.plot(v["swd"], [i] * len(v["swd"]), "o", color=color, markersize=2.5, alpha=0.7)
        ax.axvline(results["floor"]["swd"], color="k", linestyle="--", label="real vs real (floor)")
        base = next((r for r in rows if r["name"] == "base"), None)
        if base is not None:
            ax.axvline(base["mean"], color="C3", linestyle=":", label="base (mean)")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("SWD×10³ vs held-out faces (lower is better)")
        ax.set_title(f"{results['protocol']['budget_images']:,} images seen; | mean, • seeds (green: sampler)")
        ax.set_xlim(0, 1.05 * max(max(v["swd"]) for v in results["variants"]))
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.legend(loc="best")
        if curves:
            ax2 = axes[0, 1]
            for k, v in enumerate(curves):
                per_seed = [np.array(c) for c in v["curve"].values()]
                xs = per_seed[0][:, 0]
                ys = np.stack([c[:, 1] for c in per_seed if len(c) == len(xs)])
                ax2.plot(xs, ys.mean(0), "o-", color=f"C{k}", markersize=2.5, label=v["name"])
                ax2.fill_between(xs, ys.min(0), ys.max(0), color=f"C{k}", alpha=0.2, linewidth=0)
            ax2.axhline(results["floor"]["swd"], color="k", linestyle="--")
            ax2.set_xlabel("images seen")
            ax2.set_ylabel("SWD×10³")
            ax2.set_title("learning speed (mean, min–max)")
            ax2.legend()
        fig.tight_layout()
        return save_figure(fig, stem, formats=("png", "pdf"), dpi=PRINT_DPI)


def final_model(out: Path, v: Variant, seed: int, max_steps: int, device=None):
    """(model, schedule) that a finished run of v scores: its own final checkpoint (training variants) or base's,
    EMA or raw weights as v says (sampling variants)."""
    folder = run_dir(out, v.name if v.kind == "train" else "base", seed)
    found = ckpt_io.list_checkpoints(folder) if folder.is_dir() else []
    if not found or ckpt_io.checkpoint_step(found[-1]) != max_steps:
        raise ConfigError(f"{v.name} seed {seed} needs the finished run in {folder} (a checkpoint at step "
                          f"{max_steps:,}); run {'it' if v.kind == 'train' else 'base'} first")
    model, schedule, _ = ckpt_io.load_model(found[-1], ema=v.ema, device=device or "cpu")
    return model, schedule


def plot_samples(results: Optional[Dict[str, Any]], out: Path, stem: Path, k: int = SAMPLES_PER_ROW, seed: int = 0,
                 device=None) -> List[Path]:
    """What the numbers look like: one row per variant (the order of compare), k samples of its seed-``seed`` run
    with its sampler, every row from the same starting noise x_T (sample i is seeded by (sampling seed, i)), labelled
    with the variant's mean SWD. PNG in whole pixels (print style); runs that are missing are left out."""
    if not results or not results["variants"]:
        return []
    p = results["protocol"]
    base_sampler = Sampler(**p["sampler_settings"])
    rows: Dict[str, torch.Tensor] = {}
    for r in compare(results):
        try:
            v = variant(r["name"])
            model, schedule = final_model(out, v, seed, p["budget_steps"], device)
        except ConfigError:
            continue
        smp = v.sampler or base_sampler
        rows[f"{r['name']} ({r['mean']:.1f})"] = generate(
            model, schedule, k, sampler=smp.sampler, steps=smp.steps, eta=smp.eta, variance=smp.variance,
            seed=p["sample_seed"], device=device, progress=False, spacing=smp.spacing, image_size=p["image_size"],
            channels=p["channels"])
    if not rows:
        return []
    fig = plot_image_rows(rows, [f"x_T #{i}" for i in range(k)], scale=0.45)
    return save_figure(fig, stem, formats=("png",))


# ---------------------------------------------------------------------------------------------
# Budget helpers for the command line
# ---------------------------------------------------------------------------------------------
def steps_for_images(images: int, batch_size: int) -> int:
    """The optimizer steps that see ``images`` images at this batch size (rounded down; at least one batch)."""
    if images < batch_size:
        raise ConfigError(f"--images {images:,} is less than one batch of {batch_size}: the budget is too small to "
                          "train, let alone sample")
    return images // batch_size


def estimate_seconds(ab: Ablation, images_per_s: float, forward_images_per_s: float) -> float:
    """Rough wall time of the whole ablation from measured training and sampling throughputs."""
    T = ab.base.diffusion.timesteps
    total = 0.0
    for v in ab.plan():
        if v.kind == "train":
            total += ab.images_seen / images_per_s
            total += len(ab.checkpoints_at(v.name)) * ab.n * ab.sampler.network_calls(T) / forward_images_per_s
        else:
            total += ab.n * v.sampler.network_calls(T) / forward_images_per_s
    return total * ab.seeds if math.isfinite(total) else total
