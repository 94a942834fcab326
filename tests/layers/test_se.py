"""Squeeze-and-excitation for 1-D/2-D/3-D: formula, shapes, gradients, parameter count, gate hook; the SE as one
autograd node (`SqueezeExciteFn`) equal to the module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mbconv.layers import SqueezeExcite
from mbconv.layers.se import SqueezeExciteFn, fused_se_applies

SIZES = {1: (10,), 2: (5, 6), 3: (3, 4, 5)}


def _manual(se: SqueezeExcite, x: torch.Tensor, act, gate) -> torch.Tensor:
    """x * gate(W2 act(W1 mean(x) + b1) + b2), written out with matrices."""
    dims = x.ndim - 2
    s = x.mean(dim=tuple(range(2, x.ndim)))                       # (N, C)
    w1 = se.conv_reduce.weight.reshape(se.conv_reduce.out_channels, -1)
    w2 = se.conv_expand.weight.reshape(se.conv_expand.out_channels, -1)
    h = act(s @ w1.T + se.conv_reduce.bias)
    g = gate(h @ w2.T + se.conv_expand.bias)                      # (N, C)
    return x * g.reshape(*g.shape, *([1] * dims))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_se_forward_backward_matches_formula(dims):
    torch.manual_seed(0)
    se = SqueezeExcite(12, 3, dims=dims, act="swish", gate="sigmoid")
    assert isinstance(se.conv_reduce, {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims])
    x = torch.randn(2, 12, *SIZES[dims], requires_grad=True)
    y = se(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, _manual(se, x, nn.functional.silu, torch.sigmoid))
    y.sum().backward()
    assert x.grad is not None and se.conv_reduce.weight.grad.abs().sum() > 0
    assert se.conv_expand.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_se_hard_gate_and_relu(dims):
    torch.manual_seed(1)
    se = SqueezeExcite(16, 8, dims=dims, act="relu", gate="hard_sigmoid")
    x = 3 * torch.randn(2, 16, *SIZES[dims])
    torch.testing.assert_close(se(x), _manual(se, x, torch.relu, nn.functional.hardsigmoid))


def test_se_gates_each_channel_by_one_factor_in_unit_interval():
    torch.manual_seed(0)
    se = SqueezeExcite(8, 2, dims=2)
    x = torch.rand(3, 8, 4, 4) + 0.5  # positive, so the ratio is well defined
    ratio = se(x) / x
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-6)
    assert ratio.min() > 0 and ratio.max() < 1
    # the gate differs between samples: it depends on the input
    assert not torch.allclose(ratio[0, :, 0, 0], ratio[1, :, 0, 0])


def test_se_parameter_count_and_validation():
    se = SqueezeExcite(96, 4, dims=3)
    assert sum(p.numel() for p in se.parameters()) == 96 * 4 + 4 + 4 * 96 + 96
    with pytest.raises(ValueError, match="rd_chs=0"):
        SqueezeExcite(8, 0)
    with pytest.raises(ValueError, match="invalid act='mish'"):
        SqueezeExcite(8, 2, act="mish")


def test_se_gate_is_hookable():
    se = SqueezeExcite(6, 2, dims=1)
    seen = []
    se.gate.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    se(torch.randn(4, 6, 9))
    assert len(seen) == 1 and seen[0].shape == (4, 6, 1)


# -- the SE as one autograd node (SqueezeExciteFn, run by memory.LeanSqueezeExcite) ------------------------------
def _fused(se: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    r, e = se.conv_reduce, se.conv_expand
    return SqueezeExciteFn.apply(x, r.weight, r.bias, e.weight, e.bias, (type(se.act), type(se.gate)))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("act,gate", [("swish", "sigmoid"), ("relu", "hard_sigmoid"), ("relu", "sigmoid")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_se_equals_the_module_in_float64(dims, act, gate, channels_last):
    """Output and every gradient (input, both convs' weights and biases) equal autograd's through the module, to
    float64 rounding; the output keeps the input's layout."""
    if channels_last and dims == 1:
        pytest.skip("no channels-last format for 1-D maps")
    torch.manual_seed(dims)
    se = SqueezeExcite(12, 4, dims=dims, act=act, gate=gate).double()
    x = 2 * torch.randn(3, 12, *SIZES[dims], dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format={2: torch.channels_last, 3: torch.channels_last_3d}[dims])
    gy = torch.randn_like(x)
    results = []
    for fn in (se, lambda t: _fused(se, t)):
        se.zero_grad()
        xi = x.clone().requires_grad_()
        y = fn(xi)
        y.backward(gy)
        results.append([y.detach(), xi.grad] + [p.grad.clone() for p in se.parameters()])
    assert fused_se_applies(se)
    assert results[1][0].stride() == results[0][0].stride()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_se_partial_gradients_and_once_differentiable():
    torch.manual_seed(0)
    se = SqueezeExcite(8, 2, dims=2)
    for p in se.conv_reduce.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 8, 3, 3)  # no input gradient wanted
    _fused(se, x).sum().backward()
    assert se.conv_reduce.weight.grad is None and se.conv_expand.weight.grad is not None
    xi = torch.randn(2, 8, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(_fused(se, xi).square().sum(), xi, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()


def test_fused_se_applies_only_to_what_it_computes_exactly():
    se = SqueezeExcite(8, 2, dims=2)
    assert fused_se_applies(se)
    se.act.register_forward_hook(lambda *a: None)  # a hook inside must see its call
    assert not fused_se_applies(se)
    se = SqueezeExcite(8, 2, dims=2, act="gelu")  # an activation it has no backward for
    assert not fused_se_applies(se)
    se = SqueezeExcite(8, 2, dims=2)
    torch.nn.utils.parametrize.register_parametrization(se.conv_reduce, "weight", nn.Identity())
    assert not fused_se_applies(se)
