"""Taught in notebook 03.

The U-Net block diagram, drawn from a UNetConfig, so that it follows the preset (taught in 03_unet).

``unet_blocks(cfg, image_size)`` lists the blocks of unet.UNet in forward order, with their channels and feature-map
side; ``draw_unet(cfg, image_size)`` draws them as a U: the encoder going down the left (MaxPool 2×2, then two 3×3
convolutions), the bottleneck (with self-attention when the preset has it), the decoder going up the right
(2×2 up-convolution halving the channels, the skip concatenated, two 3×3 convolutions), and the time MLP
(sinusoid → Linear → SiLU → Linear) whose output is projected and added into every block.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from .config import UNetConfig
from .plotting import PAGE_WIDTH, print_styled


@dataclass(frozen=True)
class Block:
    """One block of the U-Net: where it sits (side: 'enc', 'mid' or 'dec'; level 0 = full resolution)."""

    name: str
    side: str
    level: int
    c_in: int
    c_out: int
    size: int                  # feature-map side H = W after the block
    op: str                    # what happens before the two convolutions


def unet_blocks(cfg: UNetConfig, image_size: int = 64) -> list:
    """The blocks of unet.UNet(cfg) in forward order: inc, down1 … downD, up1 … upD (deepest first).

    Channels C_l = cfg.channels()[l]; side H_l = image_size / 2^l. An up block takes C_{l+1} channels, its
    up-convolution makes C_l, the skip adds C_l (concatenation: 2·C_l in), and it returns C_l.
    """
    chs = cfg.channels()
    blocks = [Block("inc", "enc", 0, cfg.in_channels, chs[0], image_size, "")]
    for level in range(1, cfg.depth + 1):
        side = "mid" if level == cfg.depth else "enc"
        blocks.append(Block(f"down{level}", side, level, chs[level - 1], chs[level], image_size >> level,
                            "MaxPool 2×2"))
    for i, level in enumerate(reversed(range(cfg.depth))):
        blocks.append(Block(f"up{i + 1}", "dec", level, 2 * chs[level], chs[level], image_size >> level,
                            "ConvTranspose 2×2 (stride 2)"))
    return blocks


def _box(ax, x, y, w, h, text, face, fontsize=6.5):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                fc=face, ec="0.25", lw=0.6))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, linespacing=1.15)


def _arrow(ax, start, end, text="", color="0.2", ls="-", text_offset=(0.0, 0.0), ha="center", rad=0.0):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": color, "lw": 0.7, "ls": ls,
                                                     "shrinkA": 0, "shrinkB": 0, "mutation_scale": 7,
                                                     "connectionstyle": f"arc3,rad={rad}"})
    if text:
        mx, my = (start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(mx, my, text, fontsize=5.5, color=color, ha=ha, va="center")


@print_styled
def draw_unet(cfg: UNetConfig, image_size: int = 64, title: str | None = None, width: float = PAGE_WIDTH):
    """The block diagram of unet.UNet(cfg) for image_size × image_size inputs, as a matplotlib figure."""
    blocks = unet_blocks(cfg, image_size)
    depth, temb = cfg.depth, 4 * cfg.base_channels
    t_dim = cfg.time_dim or cfg.base_channels
    dy, bw, bh, bm = 1.0, 2.3, 0.56, 2.3
    xl, xr = 0.0, 7.2
    xm = (xl + xr) / 2
    norm, act = ("BN" if cfg.norm == "batch" else "GN"), {"relu": "ReLU", "silu": "SiLU"}[cfg.act]
    height = (depth + 2.2) * dy
    fig, ax = plt.subplots(figsize=(width, width * height / (xr - xl + 4.6)))
    pos = {}
    for b in blocks:
        x = {"enc": xl, "mid": xm, "dec": xr}[b.side]
        y = -b.level * dy
        pos[b.name] = (x, y)
        conv = f"2 × [Conv 3×3, {norm}, {act}]" + (" + 1×1 res." if cfg.residual else "")
        face = {"enc": "#cfe0f3", "mid": "#f6d0cc", "dec": "#d3ecd1"}[b.side]
        chans = f"{b.c_in} → {b.c_out}"
        _box(ax, x, y, bw if b.side != "mid" else bm, bh, f"{b.name}: {chans} ch, {b.size}×{b.size}\n{conv}", face, 5.8)
        ax.text(x + (bw if b.side != "mid" else bm) / 2 - 0.02, y + bh / 2, "⊕t", fontsize=5.5, color="C1",
                ha="right", va="bottom")
    enc = [b for b in blocks if b.side in ("enc", "mid")]
    for a, b in zip(enc, enc[1:]):
        _arrow(ax, (pos[a.name][0], pos[a.name][1] - bh / 2), (pos[b.name][0] - (bm / 2 if b.side == "mid" else 0),
                                                               pos[b.name][1] + (0 if b.side == "mid" else bh / 2)),
               "MaxPool 2×2", text_offset=(0.08, 0), ha="left")
    dec = [blocks[depth]] + [b for b in blocks if b.side == "dec"]
    for a, b in zip(dec, dec[1:]):
        x, y = pos[a.name]
        start = (x + bm / 2, y) if a.side == "mid" else (x, y + bh / 2)
        _arrow(ax, start, (pos[b.name][0], pos[b.name][1] - bh / 2), "up-conv 2×2\n(halves channels)",
               text_offset=(0.12, -0.14) if a.side == "mid" else (-0.08, 0), ha="left" if a.side == "mid" else "right")
    for b in blocks:
        if b.side == "enc":
            up = next(u for u in blocks if u.side == "dec" and u.level == b.level)
            _arrow(ax, (pos[b.name][0] + bw / 2, pos[b.name][1]), (pos[up.name][0] - bw / 2, pos[up.name][1]),
                   f"skip: copy {b.c_out} ch, concatenate", color="0.45", ls="--", text_offset=(0, 0.09))
    if cfg.attention:
        x, y = pos[blocks[depth].name]
        _box(ax, x, y - 0.62, bm, 0.3, f"self-attention ({cfg.attn_heads} heads)", "#f9e3b5")
    # input, output and the time MLP
    _arrow(ax, (xl - 1.7, 0.0), (xl - bw / 2, 0.0), "")
    ax.text(xl - 1.75, 0.0, f"$x_t$\n{cfg.in_channels}×{image_size}²", fontsize=6.5, ha="right", va="center")
    _box(ax, xr + 2.05, 0.0, 0.95, 0.36, "Conv 1×1", "0.92")
    _arrow(ax, (xr + bw / 2, 0.0), (xr + 2.05 - 0.475, 0.0))
    ax.text(xr + 2.05, -0.32, r"$\epsilon_\theta(x_t, t)$" + f"\n{cfg.out_channels}×{image_size}²", fontsize=6.5,
            ha="center", va="top")
    _box(ax, xm, 0.95, 6.4, 0.4, f"time MLP: t → sinusoid ({t_dim}) → Linear → SiLU → Linear → temb ({temb})",
         "#fde5cf")
    ax.text(xm, 0.58, f"⊕t: temb → {act} → Linear({temb} → C) added to every block between its two convolutions",
            fontsize=5.5, color="C1", ha="center", va="center")
    ax.set_xlim(xl - 2.5, xr + 2.6)
    ax.set_ylim(-depth * dy - (1.25 if cfg.attention else 0.8), 1.25)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(xm, -depth * dy - (1.0 if cfg.attention else 0.55), f"BN: BatchNorm, GN: GroupNorm ({cfg.groups} groups)"
            if cfg.norm == "group" else "BN: BatchNorm", fontsize=5.5, color="0.4", ha="center", va="top")
    ax.set_title(title or f"U-Net, depth {depth}, channels {', '.join(map(str, cfg.channels()))}, {image_size} px")
    fig.tight_layout(pad=0.1)
    return fig
