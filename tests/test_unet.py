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


# ---------------------------------------------------------------------------------------------
# The report's statements, one test each (notebook 03 shows each with the same function)
# ---------------------------------------------------------------------------------------------
from ddpm_helpers import anatomy  # noqa: E402


def _small(preset: str, **kw) -> UNet:
    torch.manual_seed(0)
    return UNet(dataclasses.replace(_shrink(UNET_PRESETS[preset]), **kw)).eval()


@pytest.mark.parametrize("preset", ["report", "recommended"])
def test_decoder_concatenates_the_skip_and_its_output_depends_on_it(preset):
    """"Concatenate the feature maps from the Encoder to the corresponding layers in the Decoder": the decoder's first
    conv sees upsampled + skip channels (upsampling halved them to the skip's count), and zeroing the skip changes
    that level's output."""
    model = _small(preset)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    rows = anatomy.skip_inputs(model, x, t)
    assert len(rows) == model.cfg.depth
    chs = model.cfg.channels()
    for level, row in enumerate(rows, 1):
        skip_channels = chs[model.cfg.depth - level]
        assert (row.upsampled, row.skip) == (skip_channels, skip_channels)
        assert row.conv_in == row.upsampled + row.skip
        assert anatomy.skip_effect(model, x, t, level) > 0.01          # ≥ 1 % of the block's output


@pytest.mark.parametrize("preset", ["report", "recommended"])
def test_time_embedding_is_added_between_the_two_convs_of_every_block(preset):
    """"We add it in the U-Net, at each depth of the Unet between the 2 convolutions": in all 1 + 2·depth blocks
    (first block, every encoder and every decoder block) conv2's input = act1's output + W·act(temb(t)) + b."""
    model = _small(preset)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    injections = anatomy.time_injections(model, x, t)
    names = set(injections)
    assert len(names) == 1 + 2 * model.cfg.depth
    levels = range(model.cfg.depth)
    assert {"inc"} | {f"downs.{i}.conv" for i in levels} | {f"ups.{i}.conv" for i in levels} == names
    for name, (measured, expected) in injections.items():
        torch.testing.assert_close(measured, expected, atol=1e-5, rtol=1e-5, msg=name)
        assert (measured[0] - measured[1]).abs().max() > 1e-4, name       # t = 0 and t = 999 add different shifts


def test_norm_and_activation_choices_are_built_as_named():
    """BatchNorm + ReLU (the report's), GroupNorm + SiLU (the alternative it names), in every block."""
    depth = UNET_PRESETS["report"].depth
    n_blocks = 1 + 2 * depth
    assert anatomy.block_layers(_small("report")) == {"BatchNorm2d": 2 * n_blocks, "ReLU": 3 * n_blocks}
    got = anatomy.block_layers(_small("report", norm="group", act="silu"))
    assert got == {"GroupNorm": 2 * n_blocks, "SiLU": 3 * n_blocks}


def test_group_norm_normalises_each_group_of_channels_per_image():
    """GroupNorm's output (fresh affine = identity): zero mean and unit variance within each (image, group)."""
    cfg = UNetConfig(base_channels=8, norm="group", groups=4, act="silu")
    block = DoubleConv(3, 8, 16, cfg).eval()
    h = block.norm1(block.conv1(torch.randn(2, 3, 8, 8) * 5 + 3))         # (2, 8, 8, 8)
    g = h.reshape(2, 4, -1)                                               # (images, groups, 2 channels · 64 pixels)
    torch.testing.assert_close(g.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(g.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)


def test_128_base_channels_doubles_every_level_and_quadruples_the_weights():
    """"64 base channels (can be changed to 128 or more)": every level doubles, the weight count grows ≈ 4×."""
    with torch.device("meta"):
        m64 = build_unet("report")
        m128 = build_unet("report", base_channels=128)
    assert m128.cfg.channels() == (128, 256, 512, 1024, 2048)
    assert 3.95 < count_parameters(m128) / count_parameters(m64) < 4.0     # convs are C_in·C_out; biases are linear
    rows = anatomy.trace_shapes(m128, torch.empty(1, 3, 64, 64, device="meta"),
                                torch.zeros(1, dtype=torch.long, device="meta"))
    assert [r.shape[1] for r in rows[:5]] == [128, 256, 512, 1024, 2048]


@pytest.mark.parametrize("preset, size", [("report64", 64), ("report128", 128)])
def test_the_reports_two_models_train_its_unet_with_adam_for_100_epochs(preset, size):
    """"Trained for 100 epochs using the Adam optimizer … 64 pixels … and 128 in the second model"."""
    from ddpm_helpers.config import train_preset
    from ddpm_helpers.train import make_adam
    cfg = train_preset(preset)
    assert cfg.data.image_size == size and cfg.epochs == 100
    assert dataclasses.replace(cfg.model, in_channels=3, out_channels=3) == UNET_PRESETS["report"]
    opt = make_adam(torch.nn.Linear(2, 2).parameters(), cfg)
    assert type(opt) is torch.optim.Adam
    assert opt.defaults["lr"] == cfg.lr and opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["weight_decay"] == 0


def test_trace_shapes_halves_going_down_and_doubles_coming_up():
    model = _small("report")
    rows = anatomy.trace_shapes(model, torch.randn(1, 3, 32, 32), torch.tensor([5]))
    chs, D = model.cfg.channels(), model.cfg.depth
    expected = ([(chs[l], 32 >> l) for l in range(D + 1)] + [(chs[D], 32 >> D)]
                + [(chs[l], 32 >> l) for l in reversed(range(D))] + [(3, 32)])
    assert [(r.shape[1], r.shape[2]) for r in rows] == expected
    assert [r.name for r in rows][:2] == ["inc", "down1"] and rows[D + 1].name == "bottleneck"


def _old_double_conv(block, x, temb):
    # DoubleConv.forward as it was written before add_time existed (the formula inline).
    h = block.act1(block.norm1(block.conv1(x)))
    h = h + block.time_proj(temb)[:, :, None, None]
    h = block.act2(block.norm2(block.conv2(block.dropout(h))))
    return h if block.skip is None else h + block.skip(x)


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_add_time_seam_keeps_every_number_and_every_state_dict_key(preset):
    from ddpm_helpers.unet import replace_time_injection
    model = UNet(_shrink(UNET_PRESETS[preset])).eval()
    keys = list(model.state_dict())
    assert sum(k.endswith("time_proj.1.weight") for k in keys) == 1 + 2 * model.cfg.depth   # one per block
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    with torch.no_grad():
        new = model(x, t)
        blocks = [m for m in model.modules() if isinstance(m, DoubleConv)]
        for b in blocks:   # the pre-seam forward, bound per instance, for comparison
            b.forward = lambda x, temb, b=b: _old_double_conv(b, x, temb)
        old = model(x, t)
        for b in blocks:
            del b.forward
    assert torch.equal(new, old)
    with torch.no_grad(), replace_time_injection(model, lambda b, h, temb: h):   # no time at all
        no_time = model(x, t)
    assert not torch.allclose(no_time, new)
    with torch.no_grad():
        assert torch.equal(model(x, t), new)                       # every block has its own add_time back
    assert list(model.state_dict()) == keys


def test_add_time_adds_one_shift_per_channel_the_same_at_every_pixel():
    cfg = UNetConfig(base_channels=4, depth=1, norm="group", groups=2, act="silu")
    block = DoubleConv(3, 4, 16, cfg)
    h, temb = torch.randn(2, 4, 5, 7), torch.randn(2, 16)
    shift = block.add_time(h, temb) - h
    expected = block.time_proj[1](torch.nn.functional.silu(temb))            # W · act(temb) + b, (B, C)
    assert torch.allclose(shift, expected[:, :, None, None].expand_as(h), atol=1e-6)
