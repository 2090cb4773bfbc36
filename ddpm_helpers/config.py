"""Frozen dataclass configs and named presets.

Every knob of the project lives here, so that a notebook, the command line and the tests speak
one language. Shrink a preset for a test with ``dataclasses.replace(cfg, image_size=16)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple


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
    # A CPU run on the offline faces (100 LFW crops, grayscale, 32 px): 6,000 steps or 9.5 minutes, whichever comes first.
    "cpu": _train(dataclasses.replace(UNET_PRESETS["small"], attention=False, dropout=0.0), 32, channels=1,
                  data=DataConfig(hflip=True), batch_size=32, lr=1e-3, warmup_steps=200, max_steps=6000, time_budget=570,
                  ema_decay=0.995, sample_every=1000, sample_n=36, checkpoint_every=500, log_every=25,
                  out_dir="runs/cpu"),
    # A CPU run on CelebA when it is there but no GPU is: 32 px RGB, first 5,000 images.
    "cpu-celeba": _train(dataclasses.replace(UNET_PRESETS["small"], attention=False, dropout=0.0), 32,
                         data=DataConfig(max_images=5000), batch_size=32, lr=1e-3, warmup_steps=200,
                         max_steps=6000, time_budget=570, ema_decay=0.995, sample_every=1000, sample_n=36, checkpoint_every=500,
                         log_every=25, out_dir="runs/cpu-celeba"),
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
