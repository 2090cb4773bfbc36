"""Frozen dataclass configs and named presets.

Every knob of the project lives here, so that a notebook, the command line and the tests speak
one language. Shrink a preset for a test with ``dataclasses.replace(cfg, image_size=16)``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from .errors import ConfigError

# The names a config may use. Crops are defined in the coordinates of a full-size aligned CelebA image (178 wide
# × 218 high) and scaled in proportion for other sizes (celeba.crop_box); ddim_128 follows ermongroup/ddim,
# center_140 NCSN / score-SDE. Splits map to the value of CelebA's partition file (None: every image).
# Reference frame of an aligned CelebA image, and the crop boxes in it: (left, top, width, height).
FULL_WIDTH, FULL_HEIGHT = 178, 218
CROPS = {
    "ddim_128": (25, 57, 128, 128),     # rows 57–184, cols 25–152 (ermongroup/ddim)
    "center_140": (19, 39, 140, 140),   # rows 39–178, cols 19–158 (NCSN, NCSNv2, score-SDE)
    "center_178": (0, 20, 178, 178),    # rows 20–197, the full width
}
CROP_NAMES = tuple(CROPS)
SPLITS = {"train": 0, "valid": 1, "test": 2, "all": None}
SPLIT_NAMES = tuple(SPLITS)
NORM_NAMES = ("batch", "group")
ACT_NAMES = ("relu", "silu")
SCHEDULE_NAMES = ("linear", "cosine")
VARIANCE_NAMES = ("beta", "posterior")
AMP_NAMES = ("auto", "fp16", "bf16", "off")
SAMPLER_NAMES = ("ddpm", "ddim", "dpm++2m", "dpm++3m")
FIGURE_PARTS = ("samples", "samplers", "reverse", "curves", "data")   # samplers: ddpm_vs_ddim, trajectory, eta;
# curves: loss, lr_grad_norm; data: nearest and SWD (figures.draw_figures)
MIN_IMAGE_SIZE = 8
SEED_STRIDE = 1_000_003   # derive_seed: the seeds of one run's numbered streams are seed·1_000_003 + index
MAX_SEED = 2 ** 32 - 1   # seeds: NumPy's range; seed·1_000_003 + index then stays far below 2**63 (torch's limit)


def derive_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` of a run seeded with ``seed``: seed · 1_000_003 + index.

    The package's one seed derivation: epoch e's shuffle (data), sample i's starting noise (generate), the
    t/ε noise after an inexact resume at step s (state: derive_seed(s, seed·7919 + rank)) and the figures'
    noise streams all use it, so streams of different indices never share a seed for index < 1_000_003.
    """
    return seed * SEED_STRIDE + index


def parse_duration(text: Any) -> Optional[float]:
    """'11h30m', '90m', '45s', '1.5h' or a number of seconds → seconds (None and '' stay None)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"cannot read duration {text!r}; use e.g. 11h30m, 90m, 45s or 3600 (seconds)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)

# The command-line flag of each config field that has one, so that an error names what the user typed
FLAGS = {"batch_size": "--batch-size", "lr": "--lr", "max_steps": "--max-steps", "epochs": "--epochs",
         "time_budget": "--time-budget", "ema_decay": "--ema-decay", "log_every": "--log-every",
         "sample_every": "--sample-every", "checkpoint_every": "--checkpoint-every", "amp": "--amp",
         "seed": "--seed", "image_size": "--image-size", "max_images": "--max-images", "crop": "--crop",
         "split": "--split", "channels": "--channels",
         "min_snr_gamma": "--loss-weight", "input_perturbation": "--input-perturbation"}


# ---------------------------------------------------------------------------------------------
# Validation: every config checks its fields when it is built (frozen, so they stay checked)
# ---------------------------------------------------------------------------------------------
def _require(ok: bool, name: str, value: Any, want: str) -> None:
    """Raise ConfigError "name (--flag) is value: want" unless ok."""
    if not ok:
        flag = f" ({FLAGS[name]})" if name in FLAGS else ""
        raise ConfigError(f"{name}{flag} is {value!r}: {want}")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(obj: Any, low: int, *names: str, optional: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (optional and value is None):
            _require(_is_int(value, low), name, value, f"must be an integer >= {low}"
                     + (" (or None)" if optional else ""))


def _one_of(obj: Any, name: str, choices: Tuple[str, ...]) -> None:
    value = getattr(obj, name)
    _require(value in choices, name, value, f"unknown name; use one of {', '.join(choices)}")


def nearest_image_sizes(size: int, depth: int) -> Tuple[int, ...]:
    """The multiples of 2**depth (at least 2**depth) closest to size from below and above."""
    factor = 2 ** depth
    below = max(factor, size // factor * factor)
    above = max(factor, -(-size // factor) * factor)
    return tuple(dict.fromkeys((below, above)))


def check_image_size_for_depth(image_size: int, depth: int) -> None:
    """A U-Net of this depth halves the image ``depth`` times: the size must be a multiple of 2**depth."""
    factor = 2 ** depth
    if image_size % factor == 0 and image_size >= factor:
        return
    sizes = " or ".join(str(s) for s in nearest_image_sizes(image_size, depth))
    raise ConfigError(f"image_size (--image-size) is {image_size}: a U-Net of depth={depth} halves the image "
                      f"{depth} times, so the size must be a multiple of {factor}; the nearest sizes that work are "
                      f"{sizes} (or choose a U-Net of smaller depth with --unet)")


@dataclass(frozen=True)
class UNetConfig:
    """The report's U-Net: MaxPool + two 3×3 convs down, optional attention bottleneck,
    upsampling that halves the channels, concatenated skips, time added between the two convs."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64          # channels at full resolution; doubled at each level down
    depth: int = 4                   # number of MaxPool levels; image size must divide 2**depth
    channel_mults: Optional[Tuple[int, ...]] = None  # per level (len depth+1); default 1,2,4,8,...
    norm: str = "batch"              # "batch" (the report's) or "group"
    groups: int = 8                  # GroupNorm groups (ignored for BatchNorm)
    act: str = "relu"                # "relu" (the report's) or "silu"
    attention: bool = False          # self-attention in the bottleneck
    attn_heads: int = 4
    dropout: float = 0.0
    residual: bool = False           # 1×1-shortcut residual double-conv blocks (not in the report)
    time_dim: Optional[int] = None   # sinusoidal dimension d; default base_channels
    image_size: Optional[int] = None  # if given, checked against depth when the model is built

    def __post_init__(self):
        _int_at_least(self, 1, "in_channels", "out_channels", "base_channels", "depth", "groups", "attn_heads")
        _int_at_least(self, 1, "time_dim", "image_size", optional=True)
        _one_of(self, "norm", NORM_NAMES)
        _one_of(self, "act", ACT_NAMES)
        _require(_is_real(self.dropout) and 0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        try:
            widths = self.channels()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.norm == "group" or self.attention:
            bad = [c for c in widths if c % self.groups]
            _require(not bad, "groups", self.groups, f"GroupNorm needs it to divide every level's channels {widths}")
        if self.attention:
            _require(widths[-1] % self.attn_heads == 0, "attn_heads", self.attn_heads,
                     f"must divide the bottleneck's {widths[-1]} channels")
        if self.image_size is not None:
            check_image_size_for_depth(self.image_size, self.depth)

    def channels(self) -> Tuple[int, ...]:
        """Channel count at each level, level 0 = full resolution."""
        mults = self.channel_mults or tuple(2 ** i for i in range(self.depth + 1))
        if len(mults) != self.depth + 1:
            raise ValueError(f"channel_mults has {len(mults)} entries; depth {self.depth} needs {self.depth + 1}")
        return tuple(self.base_channels * m for m in mults)


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    schedule: str = "linear"         # "linear" (the report's) or "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance: str = "beta"           # reverse-step σ_t²: "beta" (the report's σ_t = √β_t) or "posterior" (β̃_t)

    def __post_init__(self):
        _int_at_least(self, 2, "timesteps")
        _one_of(self, "schedule", SCHEDULE_NAMES)
        _one_of(self, "variance", VARIANCE_NAMES)
        betas = (self.beta_start, self.beta_end)
        _require(all(_is_real(b) for b in betas) and 0 < self.beta_start <= self.beta_end < 1, "beta range", betas,
                 "need 0 < beta_start <= beta_end < 1 (the report's: 1e-4 to 0.02)")


@dataclass(frozen=True)
class DataConfig:
    root: Optional[str] = None       # CelebA location; None = search (env CELEBA_DIR, /kaggle/input, ./data)
    split: str = "train"             # train / valid / test / all
    crop: str = "ddim_128"           # ddim_128 / center_140 / center_178
    image_size: int = 64
    channels: int = 3
    hflip: bool = True
    cache_dir: Optional[str] = None  # where the uint8 cache goes; None = next to the run
    max_images: Optional[int] = None
    offline_fallback: bool = True    # use the offline LFW faces when CelebA is not found

    def __post_init__(self):
        _one_of(self, "split", SPLIT_NAMES)
        _one_of(self, "crop", CROP_NAMES)
        _int_at_least(self, MIN_IMAGE_SIZE, "image_size")
        _require(self.channels in (1, 3), "channels", self.channels, "use 1 (grayscale) or 3 (RGB)")
        _int_at_least(self, 1, "max_images", optional=True)


@dataclass(frozen=True)
class TrainConfig:
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "runs/default"
    batch_size: int = 64
    lr: float = 2e-4
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 500
    epochs: Optional[int] = None     # stop after this many epochs (None: use max_steps)
    max_steps: Optional[int] = None  # stop after this many optimizer steps
    time_budget: Optional[float] = None  # seconds of wall time, then checkpoint and exit
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True          # decay ramps as min(decay, (1+n)/(10+n))
    amp: str = "auto"                # auto / fp16 / bf16 / off
    channels_last: Optional[bool] = None  # None: on CUDA for BatchNorm models only (GroupNorm ones ran slower, H200)
    compile: bool = False
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000         # steps between sample grids (0 = only at the end)
    sample_n: int = 16
    sample_steps: int = 50           # DDIM steps for in-training grids
    checkpoint_every: int = 1000     # steps between checkpoints
    keep_checkpoints: int = 3
    max_bad_steps: int = 20          # consecutive non-finite losses before stopping
    num_threads: Optional[int] = None
    min_snr_gamma: Optional[float] = None  # Min-SNR-γ loss weight min(SNR, γ)/SNR (None: L_simple's uniform weight)
    input_perturbation: float = 0.0  # δ: x_t built from ε + δ·ξ, target ε (0: off)

    def __post_init__(self):
        _require(self.min_snr_gamma is None or (_is_real(self.min_snr_gamma) and self.min_snr_gamma > 0),
                 "min_snr_gamma", self.min_snr_gamma, "must be a number > 0 (or None for no weighting), e.g. 5")
        _require(_is_real(self.input_perturbation) and 0 <= self.input_perturbation <= 1, "input_perturbation",
                 self.input_perturbation, "must be in [0, 1], e.g. 0.1 (0: off)")
        _int_at_least(self, 1, "batch_size", "log_every", "sample_n", "sample_steps", "keep_checkpoints",
                      "max_bad_steps")
        _int_at_least(self, 0, "warmup_steps", "sample_every", "checkpoint_every", "seed")
        _require(self.seed <= MAX_SEED, "seed", self.seed, f"must be at most {MAX_SEED} (2**32 - 1)")
        _int_at_least(self, 1, "epochs", "max_steps", "num_threads", optional=True)
        _require(_is_real(self.lr) and self.lr > 0, "lr", self.lr, "must be a finite number > 0, e.g. 2e-4")
        _require(_is_real(self.ema_decay) and 0 <= self.ema_decay < 1, "ema_decay", self.ema_decay,
                 "must be in [0, 1), e.g. 0.9999 (at 1 the EMA never moves; above 1 or below 0 it diverges)")
        _require(self.time_budget is None or (_is_real(self.time_budget) and self.time_budget > 0), "time_budget",
                 self.time_budget, "must be a number of seconds > 0 (or None), e.g. 11h30m on the command line")
        _require(_is_real(self.grad_clip) and self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0: off)")
        _require(_is_real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
                 "must be >= 0")
        _require(len(self.adam_betas) == 2 and all(_is_real(b) and 0 <= b < 1 for b in self.adam_betas),
                 "adam_betas", self.adam_betas, "need two numbers in [0, 1)")
        _one_of(self, "amp", AMP_NAMES)
        _require(self.model.in_channels == self.data.channels == self.model.out_channels, "channels",
                 self.data.channels, f"the U-Net takes {self.model.in_channels} and gives {self.model.out_channels} "
                 "channels; set model in/out_channels and data.channels alike")
        check_image_size_for_depth(self.data.image_size, self.model.depth)


# ---------------------------------------------------------------------------------------------
# Named U-Net presets
# ---------------------------------------------------------------------------------------------
UNET_PRESETS = {
    # The report's model as described: BatchNorm, ReLU, 64 base channels, no attention.
    "report": UNetConfig(base_channels=64, depth=4, norm="batch", act="relu", attention=False),
    # What we expect to train better: GroupNorm, SiLU, attention bottleneck, residual blocks.
    "recommended": UNetConfig(base_channels=64, depth=4, channel_mults=(1, 2, 4, 8, 8), norm="group",
                              groups=8, act="silu", attention=True, residual=True, dropout=0.1),
    # Small models for CPU runs and tests.
    "small": UNetConfig(base_channels=32, depth=3, channel_mults=(1, 2, 2, 4), norm="group", groups=8,
                        act="silu", attention=True, residual=True),
    "tiny": UNetConfig(base_channels=8, depth=2, norm="group", groups=4, act="silu", attention=True),
}


def unet_preset(name: str, **overrides) -> UNetConfig:
    """Return a named U-Net preset, optionally with fields replaced."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; choose from {sorted(UNET_PRESETS)}")
    return dataclasses.replace(UNET_PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------------
# Named training presets
# ---------------------------------------------------------------------------------------------
def _train(model: UNetConfig, image_size: int, channels: int = 3, data: Optional[DataConfig] = None,
           diffusion: DiffusionConfig = DiffusionConfig(), **kw) -> TrainConfig:
    model = dataclasses.replace(model, in_channels=channels, out_channels=channels)
    data = dataclasses.replace(data or DataConfig(), image_size=image_size, channels=channels)
    return TrainConfig(model=model, diffusion=diffusion, data=data, **kw)


TRAIN_PRESETS = {
    # The report's two models: its U-Net (BatchNorm, ReLU, 64 channels), Adam, 100 epochs.
    "report64": _train(UNET_PRESETS["report"], 64, batch_size=64, lr=2e-4, epochs=100, out_dir="runs/report64"),
    "report128": _train(UNET_PRESETS["report"], 128, batch_size=32, lr=2e-4, epochs=100, out_dir="runs/report128"),
    # Recommended CelebA setups: residual GroupNorm/SiLU U-Net with attention, EMA, warm-up, clipping.
    "celeba64": _train(UNET_PRESETS["recommended"], 64, batch_size=128, lr=2e-4, warmup_steps=1000, epochs=100,
                       sample_every=2000, checkpoint_every=2000, out_dir="runs/celeba64"),
    "celeba128": _train(dataclasses.replace(UNET_PRESETS["recommended"], depth=5, channel_mults=(1, 1, 2, 4, 8, 8)),
                        128, batch_size=48, lr=1e-4, warmup_steps=1000, epochs=60,
                        sample_every=2000, checkpoint_every=2000, out_dir="runs/celeba128"),
    # A CPU run on the offline faces (100 LFW crops, grayscale, 32 px): 6,000 steps or 9.5 minutes, whichever first.
    "cpu": _train(dataclasses.replace(UNET_PRESETS["small"], attention=False, dropout=0.0), 32, channels=1,
                  data=DataConfig(hflip=True), batch_size=32, lr=1e-3, warmup_steps=200, max_steps=6000,
                  time_budget=570,
                  ema_decay=0.995, sample_every=1000, sample_n=36, checkpoint_every=500, log_every=25,
                  out_dir="runs/cpu"),
    # A CPU run on CelebA when it is there but no GPU is: 32 px RGB, first 5,000 images. lr 2e-3 and no warm-up follow
    # the ablation (figures/ablations.json, notebook 06): at 1,000 steps each alone beat 1e-3 with a 200-step warm-up
    # beyond the seed spread (SWD 50.7 and 48.1 vs 64.5); the others showed no measurable effect or were worse.
    "cpu-celeba": _train(dataclasses.replace(UNET_PRESETS["small"], attention=False, dropout=0.0), 32,
                         data=DataConfig(max_images=5000), batch_size=32, lr=2e-3, warmup_steps=0,
                         max_steps=6000, time_budget=570, ema_decay=0.995, sample_every=1000, sample_n=36,
                         checkpoint_every=500,
                         log_every=25, out_dir="runs/cpu-celeba"),
    # cpu-celeba as it was before the ablation (lr 1e-3 with a 200-step warm-up): the base that figures/ablations.json
    # measured, kept so that `ablate` reproduces it (its default --preset) and benchmarks/bench_recipe.py compares.
    "cpu-celeba-v1": _train(dataclasses.replace(UNET_PRESETS["small"], attention=False, dropout=0.0), 32,
                            data=DataConfig(max_images=5000), batch_size=32, lr=1e-3, warmup_steps=200,
                            max_steps=6000, time_budget=570, ema_decay=0.995, sample_every=1000, sample_n=36,
                            checkpoint_every=500, log_every=25, out_dir="runs/cpu-celeba-v1"),
    # Seconds-long end-to-end run for tests and CI.
    "smoke": _train(UNET_PRESETS["tiny"], 16, channels=1, diffusion=DiffusionConfig(timesteps=50),
                    batch_size=8, lr=1e-3, warmup_steps=5, max_steps=12, ema_decay=0.9, sample_every=6, sample_n=4,
                    sample_steps=5, checkpoint_every=6, log_every=3, out_dir="runs/smoke"),
}


def train_preset(name: str, **overrides) -> TrainConfig:
    """Return a named training preset, optionally with top-level fields replaced."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
    return dataclasses.replace(TRAIN_PRESETS[name], **overrides)
