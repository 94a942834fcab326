"""MBConv, DepthwiseSeparable, FusedMBConv, ConvBlock (1-D/2-D/3-D): SE placement, residual, drop path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mbconv.layers import (
    ConvBlock,
    DepthwiseSeparable,
    DropPath,
    FusedMBConv,
    LayerOpts,
    MBConv,
    SqueezeExcite,
    drop_path,
)

SIZES = {1: (12,), 2: (7, 8), 3: (4, 5, 6)}


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _out_size(stride: int, dims: int) -> tuple[int, ...]:
    return tuple(math.ceil(n / stride) for n in SIZES[dims])


def _run(block: nn.Module, in_chs: int, dims: int) -> torch.Tensor:
    x = torch.randn(2, in_chs, *SIZES[dims], requires_grad=True)
    y = block(x)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())
    return y


@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_mbconv_forward_backward(dims, stride, padding):
    torch.manual_seed(0)
    opts = LayerOpts(dims=dims, padding=padding)
    k, cin, mid, cout, se = 5, 8, 24, 12, 2
    block = MBConv(cin, cout, mid, k, stride, se_chs=se, opts=opts)
    assert isinstance(block.depthwise.conv, {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims])
    assert block.depthwise.conv.groups == mid
    assert _count(block) == (cin * mid + 2 * mid) + (mid * k**dims + 2 * mid) + (2 * mid * se + se + mid) + (
        mid * cout + 2 * cout)
    assert _run(block, cin, dims).shape == (2, cout, *_out_size(stride, dims))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_depthwise_separable_forward_backward(dims, stride):
    torch.manual_seed(0)
    k, cin, cout, se = 3, 8, 12, 2
    block = DepthwiseSeparable(cin, cout, k, stride, se_chs=se, opts=LayerOpts(dims=dims))
    assert block.expand is None
    assert _count(block) == (cin * k**dims + 2 * cin) + (2 * cin * se + se + cin) + (cin * cout + 2 * cout)
    assert _run(block, cin, dims).shape == (2, cout, *_out_size(stride, dims))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fused_mbconv_forward_backward(dims, stride):
    torch.manual_seed(0)
    k, cin, mid, cout, se = 3, 8, 32, 8, 2
    block = FusedMBConv(cin, cout, mid, k, stride, se_chs=se, opts=LayerOpts(dims=dims))
    assert block.expand.conv.kernel_size == (k,) * dims and block.expand.conv.groups == 1
    want = (cin * mid * k**dims + 2 * mid) + (2 * mid * se + se + mid) + (mid * cout + 2 * cout)
    assert _count(block) == want
    assert block.has_skip == (stride == 1)
    assert _run(block, cin, dims).shape == (2, cout, *_out_size(stride, dims))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_block_forward_backward(dims, stride):
    torch.manual_seed(0)
    block = ConvBlock(6, 6, 3, stride, has_skip=True, opts=LayerOpts(dims=dims))
    assert block.has_skip == (stride == 1)
    assert _run(block, 6, dims).shape == (2, 6, *_out_size(stride, dims))


def test_mbconv_validation():
    with pytest.raises(ValueError, match="invalid se_position='middle'"):
        MBConv(8, 8, 16, se_chs=2, se_position="middle")
    with pytest.raises(ValueError, match="invalid se_position='x'"):
        FusedMBConv(8, 8, 16, se_chs=2, se_position="x")
    with pytest.raises(ValueError, match="invalid mid_chs=16"):
        MBConv(8, 8, 16, expand=False)


# -- SE placement -----------------------------------------------------------------------------------------

def _randomise_bn(m: nn.Module) -> None:
    for bn in m.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_(0, 0.2)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_mbconv_se_position_changes_function_not_shape_or_size(dims):
    torch.manual_seed(0)
    opts = LayerOpts(dims=dims)
    after = MBConv(8, 8, 32, 3, 1, se_chs=2, se_position="after_dw", opts=opts)
    before = MBConv(8, 8, 32, 3, 1, se_chs=2, se_position="before_dw", opts=opts)
    _randomise_bn(after)
    before.load_state_dict(after.state_dict())  # same parameters, same names
    assert _count(before) == _count(after)
    after.eval()
    before.eval()
    x = torch.randn(2, 8, *SIZES[dims])
    with torch.no_grad():
        ya, yb = after(x), before(x)
        assert ya.shape == yb.shape == x.shape
        assert not torch.allclose(ya, yb, atol=1e-4)
        # before_dw: SE on the expanded map, then the depthwise conv
        want = before.project(before.depthwise(before.se(before.expand(x)))) + x
        torch.testing.assert_close(yb, want)
        want = after.project(after.se(after.depthwise(after.expand(x)))) + x
        torch.testing.assert_close(ya, want)


def test_fused_se_before_sits_on_block_input():
    torch.manual_seed(0)
    after = FusedMBConv(8, 8, 32, 3, 1, se_chs=2, se_position="after_dw")
    before = FusedMBConv(8, 8, 32, 3, 1, se_chs=2, se_position="before_dw")
    assert after.se.conv_reduce.in_channels == 32 and before.se.conv_reduce.in_channels == 8
    assert _count(after) - _count(before) == 2 * (32 - 8) * 2 + (32 - 8)
    before.eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(before(x), before.project(before.expand(before.se(x))) + x)


# -- the residual rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, args", [
    (MBConv, lambda i, o: (i, o, 4 * i)),
    (DepthwiseSeparable, lambda i, o: (i, o)),
    (FusedMBConv, lambda i, o: (i, o, 4 * i)),
])
def test_residual_only_for_stride1_and_equal_channels(cls, args):
    def make(i, o, stride, has_skip=True):
        return cls(*args(i, o), 3, stride, has_skip=has_skip)

    assert make(8, 8, 1).has_skip
    assert not make(8, 8, 2).has_skip
    assert not make(8, 16, 1).has_skip
    assert not make(8, 8, 1, has_skip=False).has_skip
    # behaviour: with the projection zeroed (BN in eval maps 0 -> 0) the block is x or 0
    x = torch.randn(2, 8, 6, 6)
    for has_skip, want in ((True, x), (False, torch.zeros_like(x))):
        block = make(8, 8, 1, has_skip=has_skip).eval()
        nn.init.zeros_(block.project.conv.weight)
        with torch.no_grad():
            torch.testing.assert_close(block(x), want)


def test_conv_block_skip_default_off():
    assert not ConvBlock(8, 8, 3, 1).has_skip
    assert ConvBlock(8, 8, 3, 1, has_skip=True).has_skip
    assert not ConvBlock(8, 16, 3, 1, has_skip=True).has_skip


def test_depthwise_separable_project_act():
    torch.manual_seed(0)
    block = DepthwiseSeparable(4, 6, 3, 1, project_act="relu").eval()
    _randomise_bn(block)
    with torch.no_grad():
        assert block(torch.randn(2, 4, 5, 5)).min() >= 0
    linear = DepthwiseSeparable(4, 6, 3, 1).eval()
    _randomise_bn(linear)
    with torch.no_grad():
        assert linear(torch.randn(2, 4, 5, 5)).min() < 0


def test_se_module_is_the_shared_class():
    assert isinstance(MBConv(8, 8, 16, se_chs=4).se, SqueezeExcite)
    assert MBConv(8, 8, 16).se is None


# -- drop path ------------------------------------------------------------------------------------------

def test_drop_path_identity_in_eval_and_at_zero():
    x = torch.randn(8, 3, 4)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    m = DropPath(0.5).eval()
    assert m(x) is x
    assert "p=0.5" in repr(m)


@pytest.mark.parametrize("shape", [(20000, 2, 3), (20000, 1, 2, 1, 2)])
def test_drop_path_per_sample_and_scaled(shape):
    torch.manual_seed(1234)
    p = 0.3
    x = torch.ones(shape)
    y = drop_path(x, p, training=True)
    flat = y.reshape(shape[0], -1)
    # whole samples: every element of a sample is the same
    assert torch.all(flat == flat[:, :1])
    values = flat[:, 0].unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / (1 - p))
    kept = (flat[:, 0] > 0).float().mean().item()
    assert kept == pytest.approx(1 - p, abs=0.02)  # binomial sd ~ 0.003
    assert flat.mean().item() == pytest.approx(1.0, abs=0.03)  # inverted scaling keeps the expectation
    # a random input is scaled per sample, not per element
    z = torch.randn(shape)
    torch.manual_seed(7)
    yz = drop_path(z, p, training=True)
    keep = (yz.reshape(shape[0], -1).abs().sum(1) > 0)
    torch.testing.assert_close(yz[keep], z[keep] / (1 - p))


def test_drop_path_module_validation():
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="drop_path"):
            DropPath(p)


def test_block_drop_path_drops_the_branch_only():
    torch.manual_seed(0)
    block = MBConv(8, 8, 32, 3, 1, se_chs=2, drop_path=0.5)
    assert isinstance(block.drop_path, DropPath) and block.drop_path.p == 0.5
    assert isinstance(MBConv(8, 16, 32, drop_path=0.5).drop_path, nn.Identity)  # no residual, no drop path
    _randomise_bn(block)
    x = torch.randn(64, 8, 5, 5)
    block.eval()
    with torch.no_grad():
        branch = block(x) - x  # eval: full branch, unscaled
        block.train()
        for bn in block.modules():  # keep BN in eval so that only drop path is stochastic
            if isinstance(bn, nn.BatchNorm2d):
                bn.eval()
        y = block(x)
    dropped = torch.isclose(y, x, atol=1e-6).flatten(1).all(1)
    assert 10 < dropped.sum() < 54
    torch.testing.assert_close(y[~dropped], x[~dropped] + 2 * branch[~dropped], rtol=1e-4, atol=1e-5)
