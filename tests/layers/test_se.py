"""Squeeze-and-excitation for 1-D/2-D/3-D: formula, shapes, gradients, parameter count, gate hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mbconv.layers import SqueezeExcite

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
