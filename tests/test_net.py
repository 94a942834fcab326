"""MBConvNet: 1-D/2-D/3-D nets, input checks, multi-scale features, block count, drop-path rates, TF init."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from mbconv.layers import ConvBlock, DepthwiseSeparable, DropPath, FusedMBConv, MBConv
from mbconv.net import MBConvNet
from mbconv.spec import NetSpec, parse_arch
from mbconv.zoo import create_model, get_spec

ALL_TYPES = [["ds_r1_k3_s1_c8_se0.25"], ["ir_r2_k3_s2_e4_c12_se0.25", "ir_r1_k5_s1_e3_c12"],
             ["er_r1_k3_s2_e2_c16_se0.5"], ["cn_r1_k1_s1_c16_skip"]]
SIZES = {1: (32,), 2: (16, 18), 3: (8, 8, 9)}


def _spec(dims: int, **kw) -> NetSpec:
    base = dict(stages=parse_arch(ALL_TYPES), dims=dims, stem_chs=8, head_chs=32, num_classes=5, in_chans=3)
    return NetSpec(**(base | kw))


@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_net_forward_backward(dims, padding):
    torch.manual_seed(0)
    spec = _spec(dims, padding=padding, drop_path_rate=0.2)
    net = MBConvNet(spec)
    x = torch.randn(2, 3, *SIZES[dims])
    y = net(x)
    assert y.shape == (2, 5)
    y.square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    feats = net.forward_features(x)
    red = 2 * 2 * 2  # stem and two stride-2 stages
    assert feats.shape == (2, 32, *[math.ceil(n / red) for n in SIZES[dims]])
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    assert all(isinstance(m, {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]) for m in convs)  # depthwise: subclass


def test_blocks_follow_the_plan():
    net = MBConvNet(_spec(2))
    kinds = {"ds": DepthwiseSeparable, "ir": MBConv, "er": FusedMBConv, "cn": ConvBlock}
    assert len(net.blocks()) == net.spec.num_blocks == len(net.plans) == 6
    assert [len(s) for s in net.stages] == [s.repeats for s in net.spec.stages]
    for block, plan in zip(net.blocks(), net.plans):
        assert type(block) is kinds[plan.block]
        assert block.has_skip == plan.has_skip
    assert net.blocks()[1].depthwise.conv.stride == (2, 2) and net.blocks()[2].depthwise.conv.stride == (1, 1)
    assert net.blocks()[5].has_skip  # the cn block asked for a skip and has in == out, stride 1


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b7", "efficientnetv2_s",
                                  "mobilenetv3_large_100", "efficientnet_lite4", "mobilenetv2_140"])
def test_block_count_equals_spec(name):
    with torch.device("meta"):
        net = create_model(name)
    spec = get_spec(name)
    assert len(net.blocks()) == spec.num_blocks
    counted = sum(isinstance(m, (MBConv, FusedMBConv, ConvBlock)) for m in net.modules())
    assert counted == spec.num_blocks


# -- input checks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims, bad_shape", [(2, (2, 3, 16)), (2, (2, 3, 4, 4, 4)), (1, (2, 3, 8, 8)),
                                             (3, (3, 8, 8, 8))])
def test_wrong_rank_is_named(dims, bad_shape):
    net = MBConvNet(_spec(dims))
    with pytest.raises(ValueError, match=f"rank {len(bad_shape)}") as e:
        net(torch.randn(*bad_shape))
    assert f"rank {dims + 2}" in str(e.value)
    with pytest.raises(ValueError, match="rank"):
        net.forward_multiscale(torch.randn(*bad_shape))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_wrong_channels_are_named(dims):
    net = MBConvNet(_spec(dims))
    with pytest.raises(ValueError, match="1 channels") as e:
        net(torch.randn(2, 1, *SIZES[dims]))
    assert "in_chans=3" in str(e.value)
    with pytest.raises(TypeError, match="Tensor"):
        net.forward_features(torch.randn(2, 3, *SIZES[dims]).numpy())


# -- multi-scale features --------------------------------------------------------------------------------

def test_forward_multiscale_efficientnet_b0():
    torch.manual_seed(0)
    net = create_model("efficientnet_b0").eval()
    info = net.feature_info
    assert [f["reduction"] for f in info] == [2, 4, 8, 16, 32]
    assert [f["channels"] for f in info] == [16, 24, 40, 112, 320]
    assert [f["stage"] for f in info] == [0, 1, 2, 4, 6]
    for f in info:
        assert net.get_submodule(f["module"]) is net.stages[f["stage"]]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = net.forward_multiscale(x)
        assert [tuple(m.shape) for m in maps] == [(1, c, 64 // r, 64 // r) for c, r in
                                                  [(f["channels"], f["reduction"]) for f in info]]
        torch.testing.assert_close(net.head(maps[-1]), net.forward_features(x))
    # timm's feature extractor reports the same levels
    with torch.device("meta"):
        ref = timm.create_model("efficientnet_b0", features_only=True)
    assert ref.feature_info.channels() == [f["channels"] for f in info]
    assert ref.feature_info.reduction() == [f["reduction"] for f in info]


@pytest.mark.parametrize("dims", [1, 3])
def test_forward_multiscale_other_dims(dims):
    net = MBConvNet(_spec(dims)).eval()
    info = net.feature_info
    assert [(f["reduction"], f["channels"]) for f in info] == [(2, 8), (4, 12), (8, 16)]
    x = torch.randn(1, 3, *SIZES[dims])
    with torch.no_grad():
        maps = net.forward_multiscale(x)
    assert len(maps) == len(info)
    for m, f in zip(maps, info):
        assert m.shape == (1, f["channels"], *[math.ceil(n / f["reduction"]) for n in SIZES[dims]])


def test_feature_info_with_stride1_stem():
    spec = NetSpec(stages=parse_arch(["ir_r1_k3_s1_e2_c8", "ir_r1_k3_s2_e2_c8", "ir_r1_k3_s1_e2_c16"]),
                   stem_stride=1, head_chs=16)
    info = MBConvNet(spec).feature_info
    assert [(f["stage"], f["reduction"], f["channels"]) for f in info] == [(0, 1, 8), (2, 2, 16)]


# -- heads and dropout ------------------------------------------------------------------------------------

def test_pool_conv_and_no_head():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    net = MBConvNet(_spec(2, head_type="pool_conv")).eval()
    assert isinstance(net.head.bn, nn.Identity) and net.head.conv.bias is not None
    with torch.no_grad():
        assert net.forward_features(x).shape == (2, 16, 2, 2)  # head runs after pooling
        assert net(x).shape == (2, 5)
        assert net.forward_head(net.forward_features(x), pre_logits=True).shape == (2, 32)
    net = MBConvNet(_spec(2, head_type="none", head_chs=0)).eval()
    assert net.num_features == 16 and net.classifier.in_features == 16
    with torch.no_grad():
        assert net(x).shape == (2, 5)


def test_dropout_only_in_train():
    torch.manual_seed(0)
    net = MBConvNet(_spec(2, drop_rate=0.5))
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x))
        net.train()
        assert not torch.allclose(net(x), net(x))


def test_invalid_init():
    with pytest.raises(ValueError, match="init='he'"):
        MBConvNet(_spec(2), init="he")


# -- drop-path schedule and init ---------------------------------------------------------------------------

def test_drop_path_schedule_is_linear_in_block_index():
    spec = get_spec("efficientnet_b0", drop_path_rate=0.2)
    net = MBConvNet(spec)
    n = spec.num_blocks
    checked = 0
    for idx, (block, plan) in enumerate(zip(net.blocks(), net.plans)):
        want = 0.2 * idx / n
        assert plan.drop_path == pytest.approx(want)
        if block.has_skip and idx > 0:
            assert isinstance(block.drop_path, DropPath)
            assert block.drop_path.p == pytest.approx(want)
            checked += 1
        else:
            assert isinstance(block.drop_path, nn.Identity)
    assert checked == 9  # b0 has 16 blocks, 9 of them residual
    assert max(p.drop_path for p in net.plans) == pytest.approx(0.2 * 15 / 16)
    assert all(isinstance(b.drop_path, nn.Identity) for b in create_model("efficientnet_b0").blocks())


def test_tf_init_on_built_net():
    torch.manual_seed(0)
    net = create_model("efficientnet_b0")
    checked = 0
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 20000:
            fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
            got = m.weight.std().item()
            assert got == pytest.approx(math.sqrt(2 / fan_out), rel=0.05), name
            checked += 1
    assert checked > 20
    dw = net.stages[5][0].depthwise.conv  # 5x5 depthwise on 672 channels: fan_out 25, not 25 * 672
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)
    r = 1 / math.sqrt(1000)
    assert net.classifier.weight.abs().max().item() <= r
