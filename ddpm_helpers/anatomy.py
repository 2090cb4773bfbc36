"""Taught in notebook 03.

Read the report's architecture off a built U-Net: what notebook 03 shows and the tests check.

Each function answers one statement of the report by running the real network with forward hooks:
the shapes level by level (:func:`trace_shapes`), where the time embedding enters (:func:`time_injections`),
what the decoder's convolutions see (:func:`skip_inputs`, :func:`skip_effect`) and which normalisation and
activation layers the blocks use (:func:`block_layers`). Nothing here changes the model.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn

from .unet import DoubleConv, UNet


@dataclass(frozen=True)
class Stage:
    """One stage of the forward pass: its name (inc, down1 …, bottleneck, up1 …, outc), module class, output shape."""

    name: str
    kind: str
    shape: Tuple[int, ...]


def stages(model: UNet) -> List[Tuple[str, nn.Module]]:
    """The U-Net's stages in the order the input passes through them."""
    return [("inc", model.inc), *[(f"down{l}", m) for l, m in enumerate(model.downs, 1)], ("bottleneck", model.attn),
            *[(f"up{l}", m) for l, m in enumerate(model.ups, 1)], ("outc", model.outc)]


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def trace_shapes(model: UNet, x: torch.Tensor, t: torch.Tensor) -> List[Stage]:
    """Run ``model(x, t)`` once and record the output shape of every stage.  x: (B, C, H, W); t: (B,)."""
    rows: List[Stage] = []
    handles = [m.register_forward_hook(
                   lambda mod, inp, out, s=s: rows.append(Stage(s, type(mod).__name__, tuple(out.shape))))
               for s, m in stages(model)]
    with _hooks(handles), torch.no_grad():
        model(x, t)
    return rows


def double_convs(model: nn.Module) -> Dict[str, DoubleConv]:
    """Every two-convolution block by its module path (inc.…, downs.0.conv, …, ups.3.conv)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, DoubleConv)}


def time_injections(model: UNet, x: torch.Tensor, t: torch.Tensor) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """For every block: (what was added between its two convolutions, what the report's formula says is added).

    measured = conv2's input − act1's output, (B, C, H, W); expected = W·act(temb(t)) + b broadcast over the
    pixels, (B, C, H, W). They are equal when the time embedding enters between the convs of that block.
    """
    blocks, seen = double_convs(model), {}
    handles = []
    for name, b in blocks.items():
        handles.append(b.act1.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__((n, "before"), o)))
        handles.append(b.conv2.register_forward_pre_hook(lambda m, i, n=name: seen.__setitem__((n, "after"), i[0])))
    with _hooks(handles), torch.no_grad():
        model(x, t)
        temb = model.time_embed(t)                                            # (B, 4·base)
        result = {}
        for name, b in blocks.items():
            measured = seen[name, "after"] - seen[name, "before"]              # (B, C, H, W)
            expected = b.time_proj(temb)[:, :, None, None].expand_as(measured)  # one number per channel
            result[name] = (measured, expected)
    return result


@dataclass(frozen=True)
class SkipInput:
    """What the first convolution of a decoder level sees: upsampled channels + skip channels = its input."""

    level: str
    upsampled: int
    skip: int
    conv_in: int


def skip_inputs(model: UNet, x: torch.Tensor, t: torch.Tensor) -> List[SkipInput]:
    """Channels of the upsampled map, of the encoder's skip and of the decoder conv's input, per up level."""
    rows, ups = [], {}
    handles = []
    for l, up in enumerate(model.ups, 1):
        handles.append(up.up.register_forward_hook(lambda m, i, o, l=l: ups.__setitem__(l, o.shape[1])))
        handles.append(up.conv.conv1.register_forward_pre_hook(
            lambda m, i, l=l: rows.append((l, i[0].shape[1], m.in_channels))))
    with _hooks(handles), torch.no_grad():
        model(x, t)
    return [SkipInput(f"up{l}", ups[l], seen - ups[l], conv_in) for l, seen, conv_in in rows]


def skip_effect(model: UNet, x: torch.Tensor, t: torch.Tensor, level: int) -> float:
    """How much decoder level ``level`` (1 = deepest) relies on its skip: mean |Δ out| / mean |out| of that level's
    block when the concatenated encoder map is replaced by zeros (the upsampled input kept as it is).

    0 would mean the skip is ignored; freshly initialised U-Nets give 0.05 to 1.  x: (B, C, H, W); t: (B,).
    """
    up, outs = model.ups[level - 1], []
    zero_skip = lambda m, args: (args[0], torch.zeros_like(args[1]), args[2])   # Up.forward(x, skip, temb)
    keep = up.register_forward_hook(lambda m, args, out: outs.append(out))
    with _hooks([keep]), torch.no_grad():
        model(x, t)
        with _hooks([up.register_forward_pre_hook(zero_skip)]):
            model(x, t)
    ref, cut = outs
    return ((ref - cut).abs().mean() / ref.abs().mean().clamp_min(1e-12)).item()


def block_layers(model: nn.Module) -> Counter:
    """How many normalisation and activation layers of each class the two-convolution blocks hold."""
    kinds = (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.SiLU)
    return Counter(type(m).__name__ for b in double_convs(model).values() for m in b.modules() if isinstance(m, kinds))
