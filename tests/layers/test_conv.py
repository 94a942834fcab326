"""ConvNormAct for 1-D/2-D/3-D, TF SAME padding, activations, and the TF weight init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

from mbconv.layers import ConvNormAct, LayerOpts, SamePad, create_act, init_weights_tf, tf_same_pads

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SIZES = {1: (11,), 2: (9, 8), 3: (5, 6, 7)}


# -- activations and options ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [
    (None, nn.Identity), ("identity", nn.Identity), ("relu", nn.ReLU), ("relu6", nn.ReLU6),
    ("swish", nn.SiLU), ("silu", nn.SiLU), ("hard_swish", nn.Hardswish), ("sigmoid", nn.Sigmoid),
    ("hard_sigmoid", nn.Hardsigmoid), ("gelu", nn.GELU),
])
def test_create_act(name, cls):
    assert type(create_act(name)) is cls


def test_create_act_unknown_is_named():
    with pytest.raises(ValueError, match="invalid act='mish'"):
        create_act("mish")


def test_layer_opts_validation():
    with pytest.raises(ValueError, match="invalid dims=4"):
        LayerOpts(dims=4)
    with pytest.raises(ValueError, match="invalid padding='valid'"):
        LayerOpts(padding="valid")


# -- ConvNormAct -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_norm_act_forward_backward(dims, stride, padding):
    torch.manual_seed(0)
    opts = LayerOpts(dims=dims, padding=padding, norm_eps=1e-3, norm_momentum=0.01)
    m = ConvNormAct(4, 6, 3, stride, act="swish", opts=opts)
    assert isinstance(m.conv, CONV[dims]) and m.conv.bias is None
    assert (m.bn.eps, m.bn.momentum, m.bn.num_features) == (1e-3, 0.01, 6)
    x = torch.randn(2, 4, *SIZES[dims], requires_grad=True)
    y = m(x)
    assert y.shape == (2, 6, *[math.ceil(n / stride) for n in SIZES[dims]])
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert m.conv.weight.grad is not None and m.conv.weight.grad.abs().sum() > 0


def test_conv_norm_act_no_norm_with_bias_and_groups():
    m = ConvNormAct(8, 16, 3, groups=4, act=None, norm=False, bias=True)
    assert isinstance(m.bn, nn.Identity) and isinstance(m.act, nn.Identity)
    assert m.conv.bias is not None and m.conv.groups == 4
    assert sum(p.numel() for p in m.parameters()) == 16 * 2 * 9 + 16
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(m(x), m.conv(x))


@pytest.mark.parametrize("kw, field", [
    (dict(in_chs=6, out_chs=8, groups=4), "groups"),
    (dict(in_chs=0, out_chs=8), "in_chs"),
    (dict(in_chs=4, out_chs=8, kernel=0), "kernel"),
    (dict(in_chs=4, out_chs=8, stride=0), "stride"),
])
def test_conv_norm_act_validation(kw, field):
    with pytest.raises(ValueError, match=f"invalid {field}="):
        ConvNormAct(**kw)


# -- TF SAME padding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, kernel, stride, want", [
    (224, 3, 2, (0, 1)),  # even input, stride 2: all the padding goes after
    (225, 3, 2, (1, 1)),
    (8, 5, 2, (1, 2)),
    (7, 5, 2, (2, 2)),
    (10, 3, 1, (1, 1)),
    (10, 4, 1, (1, 2)),
    (5, 1, 2, (0, 0)),
    (4, 1, 2, (0, 0)),
    (9, 3, 3, (0, 0)),
    (10, 3, 3, (1, 1)),
    (7, 7, 4, (2, 2)),
    (1, 3, 2, (1, 1)),
])
def test_tf_same_pads(size, kernel, stride, want):
    assert tf_same_pads(size, kernel, stride) == want
    before, after = want
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("stride", [2, 3])
def test_same_strided_output_size_is_ceil(kernel, stride):
    m = ConvNormAct(2, 3, kernel, stride, opts=LayerOpts(padding="same")).eval()
    assert isinstance(m.pad, SamePad) and m.conv.padding == (0, 0)
    for n in range(1, 12):
        want = (math.ceil(n / stride), math.ceil((n + 1) / stride))
        assert m(torch.randn(1, 2, n, n + 1)).shape[2:] == want


@pytest.mark.parametrize("h, w, kernel, pads", [
    (8, 9, 3, (1, 1, 0, 1)),  # F.pad order: (W before, W after, H before, H after)
    (8, 8, 5, (1, 2, 1, 2)),
    (7, 10, 5, (1, 2, 2, 2)),
])
def test_same_strided_equals_manual_asymmetric_pad(h, w, kernel, pads):
    torch.manual_seed(0)
    m = ConvNormAct(3, 4, kernel, 2, act=None, norm=False, opts=LayerOpts(padding="same"))
    x = torch.randn(2, 3, h, w)
    want = F.conv2d(F.pad(x, pads), m.conv.weight, stride=2)
    torch.testing.assert_close(m(x), want)
    # the unpadded/symmetric conv is a different function on even sizes
    sym = F.conv2d(x, m.conv.weight, stride=2, padding=(kernel - 1) // 2)
    assert sym.shape != want.shape or not torch.allclose(sym, want)
    # and timm's dynamic Conv2dSame (the tf_* reference) agrees
    ref = Conv2dSame(3, 4, kernel, stride=2, bias=False)
    ref.weight.data.copy_(m.conv.weight)
    torch.testing.assert_close(m(x), ref(x))


@pytest.mark.parametrize("dims", [1, 3])
def test_same_pad_other_dims(dims):
    torch.manual_seed(0)
    m = ConvNormAct(2, 2, 3, 2, act=None, norm=False, opts=LayerOpts(dims=dims, padding="same"))
    size = (8,) * dims  # even: pads (0, 1) on every axis
    x = torch.randn(1, 2, *size)
    conv = {1: F.conv1d, 3: F.conv3d}[dims]
    torch.testing.assert_close(m(x), conv(F.pad(x, (0, 1) * dims), m.conv.weight, stride=2))


def test_same_pad_is_a_no_op_when_nothing_to_pad():
    pad = SamePad(1, 2, 2)
    x = torch.randn(1, 1, 5, 5)
    assert pad(x) is x


def test_same_stride1_odd_kernel_is_symmetric():
    m = ConvNormAct(2, 2, 5, 1, opts=LayerOpts(padding="same"))
    assert isinstance(m.pad, nn.Identity) and m.conv.padding == (2, 2)


@pytest.mark.parametrize("kernel", [2, 4])
def test_same_even_kernel_keeps_size(kernel):
    m = ConvNormAct(2, 2, kernel, 1, opts=LayerOpts(padding="same"))
    assert m(torch.randn(1, 2, 7, 7)).shape[2:] == (7, 7)


# -- TF init -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims, in_chs, out_chs, kernel, groups", [
    (2, 64, 256, 3, 1),     # fan_out = 9 * 256
    (2, 512, 512, 5, 512),  # depthwise: fan_out = 25
    (1, 128, 256, 5, 1),    # fan_out = 5 * 256
    (1, 1024, 1024, 7, 1024),
    (3, 16, 64, 3, 1),      # fan_out = 27 * 64
    (3, 512, 512, 3, 512),  # depthwise 3-D: fan_out = 27
    (2, 64, 128, 3, 4),     # grouped: fan_out = 9 * 128 / 4
    (2, 256, 1024, 1, 1),   # pointwise: fan_out = 1024
])
def test_init_weights_tf_conv_std(dims, in_chs, out_chs, kernel, groups):
    torch.manual_seed(0)
    conv = CONV[dims](in_chs, out_chs, kernel, groups=groups, bias=True)
    conv.bias.data.fill_(1.0)
    init_weights_tf(conv)
    fan_out = kernel**dims * out_chs / groups
    w = conv.weight.detach()
    assert w.numel() >= 6000
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.04)
    assert abs(w.mean().item()) < 0.1 * math.sqrt(2.0 / fan_out)
    assert torch.count_nonzero(conv.bias) == 0


def test_init_weights_tf_linear_and_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1000), nn.BatchNorm2d(8), nn.BatchNorm1d(4), nn.BatchNorm3d(2))
    for bn in model[1:]:
        bn.weight.data.fill_(3.0)
        bn.bias.data.fill_(3.0)
    model[0].bias.data.fill_(1.0)
    init_weights_tf(model)
    r = 1.0 / math.sqrt(1000)  # TF dense: uniform(+-1/sqrt(out_units))
    w = model[0].weight.detach()
    assert w.abs().max().item() <= r
    assert w.std().item() == pytest.approx(r / math.sqrt(3), rel=0.02)
    assert torch.count_nonzero(model[0].bias) == 0
    for bn in model[1:]:
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
