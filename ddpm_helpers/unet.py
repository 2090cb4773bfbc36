"""Taught in notebooks 02, 03.

The noise predictor ε_θ(x_t, t): the report's U-Net. The network only; no diffusion math here.

Shape of the network for depth D (channels C_0 … C_D, by default C_l = base · 2^l):

    inc:       DoubleConv(in → C_0)                          (B, C_0, H, W)
    down l:    MaxPool2d(2) → DoubleConv(C_{l−1} → C_l)        (B, C_l, H/2^l, W/2^l),  l = 1 … D
    bottleneck: optional self-attention at (H/2^D, W/2^D)
    up l:      ConvTranspose2d(C_l → C_{l−1}, stride 2)      upsample, halving the channels
               concat skip (C_{l−1}) → DoubleConv(2·C_{l−1} → C_{l−1})
    outc:      1×1 conv C_0 → out

Each DoubleConv is conv3×3 → norm → act, then + the projected time embedding (``DoubleConv.add_time``), then
conv3×3 → norm → act: the time embedding enters between the two convolutions at every depth.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig, unet_preset
from .embeddings import TimeEmbedding


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """BatchNorm2d (the report's) or GroupNorm (better for the small batches of generative training)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    raise ValueError(f"unknown norm {kind!r}; use 'batch' or 'group'")


def make_act(kind: str) -> nn.Module:
    """ReLU (the report's) or SiLU."""
    if kind == "relu":
        return nn.ReLU(inplace=False)
    if kind == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {kind!r}; use 'relu' or 'silu'")


class DoubleConv(nn.Module):
    """Two 3×3 convolutions with the time embedding added between them.

    x: (B, C_in, H, W), temb: (B, T_dim) → (B, C_out, H, W).
    With ``residual`` the block output adds a 1×1 projection of x (a ResNet block).
    """

    def __init__(self, c_in: int, c_out: int, temb_dim: int, cfg: UNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = make_norm(cfg.norm, c_out, cfg.groups)
        self.act1 = make_act(cfg.act)
        self.time_proj = nn.Sequential(make_act(cfg.act), nn.Linear(temb_dim, c_out))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = make_norm(cfg.norm, c_out, cfg.groups)
        self.act2 = make_act(cfg.act)
        self.skip = None
        if cfg.residual:
            self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.norm1(self.conv1(x)))                  # (B, C_out, H, W)
        h = self.add_time(h, temb)                                # time enters between the convs
        h = self.act2(self.norm2(self.conv2(self.dropout(h))))    # (B, C_out, H, W)
        return h if self.skip is None else h + self.skip(x)

    def add_time(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The report's time injection: the embedding, projected to this block's channels, is added at every pixel.

        h_{c,i,j} + (W · act(temb) + b)_c, with ``time_proj`` = act → Linear(T_dim → C_out): one shift per channel,
        the same at every pixel, between the two convolutions of every block.
        h: (B, C_out, H, W) (after the first conv, norm and act), temb: (B, T_dim) → (B, C_out, H, W).
        :func:`replace_time_injection` swaps it in every block of a model (an ablation, or notebook 03's exercise).
        """
        return h + self.time_proj(temb)[:, :, None, None]         # (B, C_out) → (B, C_out, 1, 1), broadcast


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual connection.

    Uses torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels on GPU).
    x: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, channels: int, heads: int, cfg: UNetConfig):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels {channels} not divisible by {heads} heads")
        self.heads = heads
        self.norm = make_norm("group", channels, cfg.groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # The 1×1 convolutions are applied as matrix products over the H·W tokens: the same weights and
        # result, but PyTorch's fast GEMM path instead of its slow one for small 1×1 convs (2× on CPU).
        tokens = self.norm(x).flatten(2).transpose(1, 2)                          # (B, HW, C)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)        # (B, HW, 3C)
        qkv = qkv.reshape(B, H * W, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                           # each (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)                              # (B, heads, HW, C/heads)
        h = h.transpose(1, 2).reshape(B, H * W, C)                               # (B, HW, C)
        h = F.linear(h, self.proj.weight.flatten(1), self.proj.bias)             # (B, HW, C)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Down(nn.Module):
    """MaxPool2d(2) then DoubleConv: halves H and W, changes C_in → C_out (doubling by default)."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, cfg: UNetConfig):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(c_in, c_out, temb_dim, cfg)

    def forward(self, x, temb):
        return self.conv(self.pool(x), temb)                   # (B, C_out, H/2, W/2)


class Up(nn.Module):
    """ConvTranspose2d upsampling that halves the channels, concatenated skip, then DoubleConv."""

    def __init__(self, c_in: int, c_skip: int, temb_dim: int, cfg: UNetConfig):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_skip, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * c_skip, c_skip, temb_dim, cfg)

    def forward(self, x, skip, temb):
        x = self.up(x)                                         # (B, C_skip, 2H, 2W)
        x = torch.cat([skip, x], dim=1)                        # (B, 2·C_skip, 2H, 2W)
        return self.conv(x, temb)                              # (B, C_skip, 2H, 2W)


class UNet(nn.Module):
    """ε_θ(x_t, t): predicts the noise in x_t. ``model(x, t)`` returns a tensor shaped like x.

    x: (B, in_channels, H, W) with H and W divisible by 2**depth; t: (B,) int64 timesteps.
    """

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        chs = cfg.channels()
        if cfg.image_size is not None:
            check_image_size(cfg.image_size, cfg.depth)
        t_dim = cfg.time_dim or cfg.base_channels
        temb_dim = 4 * cfg.base_channels
        self.time_embed = TimeEmbedding(t_dim, temb_dim)
        self.inc = DoubleConv(cfg.in_channels, chs[0], temb_dim, cfg)
        self.downs = nn.ModuleList(Down(chs[i], chs[i + 1], temb_dim, cfg) for i in range(cfg.depth))
        self.attn = SelfAttention(chs[-1], cfg.attn_heads, cfg) if cfg.attention else nn.Identity()
        self.ups = nn.ModuleList(Up(chs[i + 1], chs[i], temb_dim, cfg) for i in reversed(range(cfg.depth)))
        self.outc = nn.Conv2d(chs[0], cfg.out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_image_size(tuple(x.shape[-2:]), self.cfg.depth)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embed(t)                              # (B, 4·base)
        h = self.inc(x, temb)                                  # (B, C_0, H, W)
        skips = [h]
        for down in self.downs:
            h = down(h, temb)                                  # (B, C_l, H/2^l, W/2^l)
            skips.append(h)
        h = self.attn(skips.pop())                             # bottleneck (B, C_D, H/2^D, W/2^D)
        for up in self.ups:
            h = up(h, skips.pop(), temb)                       # (B, C_{l-1}, H/2^{l-1}, ...)
        return self.outc(h)                                    # (B, out_channels, H, W)


InjectFn = Callable[[DoubleConv, torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def replace_time_injection(model: nn.Module, inject: InjectFn) -> Iterator[nn.Module]:
    """Within the block, every DoubleConv of model injects the time with ``inject(block, h, temb)`` instead of
    :meth:`DoubleConv.add_time`; the blocks get their own method back afterwards. Weights are not touched.

    inject receives the block (for its ``time_proj``), h: (B, C_out, H, W) and temb: (B, T_dim), and must
    return the tensor the block's second convolution will see.
    """
    blocks = [m for m in model.modules() if isinstance(m, DoubleConv)]
    for block in blocks:
        block.add_time = functools.partial(inject, block)   # an instance attribute shadows the method
    try:
        yield model
    finally:
        for block in blocks:
            block.__dict__.pop("add_time", None)


def check_image_size(size, depth: int) -> None:
    """Raise a ValueError naming the size and depth unless every side divides by 2**depth."""
    sides = (size, size) if isinstance(size, int) else tuple(size)
    factor = 2 ** depth
    bad = [s for s in sides if s % factor or s < factor]
    if bad:
        raise ValueError(
            f"image size {'x'.join(map(str, sides))} cannot be halved cleanly {depth} times (depth={depth} needs "
            f"sides divisible by {factor}); use a size such as {factor * max(1, round(bad[0] / factor))} "
            f"or a smaller depth")


def build_unet(preset: str | UNetConfig = "report", **overrides) -> UNet:
    """Build a U-Net from a preset name (see config.UNET_PRESETS) or a UNetConfig, with fields replaced."""
    if isinstance(preset, UNetConfig):
        return UNet(dataclasses.replace(preset, **overrides))
    return UNet(unet_preset(preset, **overrides))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
