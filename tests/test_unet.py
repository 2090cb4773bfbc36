"""U-Net tests: every preset keeps the shape at 32/64/128 px and depends on t; bad sizes are refused."""
import dataclasses

import pytest
import torch

from ddpm_helpers.config import UNET_PRESETS, UNetConfig
from ddpm_helpers.unet import DoubleConv, SelfAttention, UNet, build_unet, count_parameters


def _shrink(cfg: UNetConfig) -> UNetConfig:
    # Same structure (norm, act, attention, depth, mults), fewer channels: fast on CPU.
    return dataclasses.replace(cfg, base_channels=8, groups=4, attn_heads=2)


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
@pytest.mark.parametrize("size", [32, 64, 128])
def test_every_preset_keeps_shape_and_depends_on_t(preset, size):
    model = UNet(_shrink(UNET_PRESETS[preset])).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a = model(x, torch.tensor([0, 0]))
        b = model(x, torch.tensor([999, 999]))
    assert a.shape == x.shape
    assert (a - b).abs().max() > 1e-4


def test_grayscale_and_single_timestep_tensor():
    model = build_unet("tiny", in_channels=1, out_channels=1)
    x = torch.randn(3, 1, 16, 16)
    assert model(x, torch.tensor(5)).shape == x.shape


def test_bad_image_size_names_size_and_depth():
    model = build_unet("tiny", depth=3)
    with pytest.raises(ValueError, match=r"image size 36x36.*depth=3"):
        model(torch.randn(1, 3, 36, 36), torch.tensor([1]))
    with pytest.raises(ValueError, match="depth=4"):
        UNet(dataclasses.replace(UNET_PRESETS["report"], image_size=100))


def test_report_preset_is_the_report_architecture():
    cfg = UNET_PRESETS["report"]
    assert (cfg.norm, cfg.act, cfg.base_channels, cfg.attention) == ("batch", "relu", 64, False)
    model = UNet(cfg)
    assert isinstance(model.inc.norm1, torch.nn.BatchNorm2d) and isinstance(model.inc.act1, torch.nn.ReLU)
    # encoder doubles the channels, each decoder upsampling halves them
    assert cfg.channels() == (64, 128, 256, 512, 1024)
    for up in model.ups:
        assert up.up.out_channels * 2 == up.up.in_channels
    assert isinstance(model.downs[0].pool, torch.nn.MaxPool2d)
    assert 30_000_000 < count_parameters(model) < 34_000_000


def test_time_enters_between_the_two_convolutions():
    """Changing only the time embedding changes the block output through the second conv."""
    cfg = UNetConfig(base_channels=8, norm="group", groups=2, act="silu")
    block = DoubleConv(3, 8, 16, cfg).eval()
    x = torch.randn(1, 3, 8, 8)
    seen = {}
    block.conv2.register_forward_hook(lambda m, inp, out: seen.setdefault("in", inp[0]))
    temb = torch.randn(1, 16)
    block(x, temb)
    h1 = block.act1(block.norm1(block.conv1(x)))
    torch.testing.assert_close(seen["in"], h1 + block.time_proj(temb)[:, :, None, None])


def test_attention_matches_explicit_softmax():
    cfg = UNetConfig(groups=2)
    att = SelfAttention(8, 2, cfg).eval()
    x = torch.randn(2, 8, 4, 4)
    B, C, H, W = x.shape
    qkv = att.qkv(att.norm(x)).reshape(B, 3, 2, 4, H * W)
    q, k, v = qkv[:, 0].transpose(-1, -2), qkv[:, 1].transpose(-1, -2), qkv[:, 2].transpose(-1, -2)
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)          # 1/sqrt(C/heads = 4)
    h = (w @ v).transpose(2, 3).reshape(B, C, H, W)
    torch.testing.assert_close(att(x), x + att.proj(h), atol=1e-5, rtol=1e-5)
