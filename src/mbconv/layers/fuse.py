"""Eval-time rewrites of the layers in place: BatchNorm folded into the conv before it, training-only modules
removed.

`fuse_bn(model)` returns a copy in which every conv -> BatchNorm pair of a `ConvNormAct` is one conv with a
bias: y = gamma * (Wx + b - mean) / sqrt(var + eps) + beta  ==  W'x + b'  with  W' = W * s, b' = (b - mean) * s +
beta, s = gamma / sqrt(var + eps). Valid in eval mode only (running statistics are frozen). Quantization, export
and the analysis tools all fold through this one function.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .blocks import DropPath
from .conv import ConvNormAct

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
DROPOUTS = (DropPath, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A new conv equal to `bn(conv(x))` in eval mode (float64 arithmetic, cast back)."""
    fused = copy.deepcopy(conv)
    w = conv.weight.double()
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    fused.weight.copy_((w * s.reshape(-1, *([1] * (w.ndim - 1)))).to(conv.weight.dtype))
    fused.bias = nn.Parameter(((b - bn.running_mean.double()) * s + bn.bias.double()).to(conv.weight.dtype))
    return fused


@torch.no_grad()
def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm of every `ConvNormAct` into its conv; returns an eval-mode model (a copy unless
    `inplace`). Outputs equal the unfused eval model up to float rounding."""
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    for mod in m.modules():
        if isinstance(mod, ConvNormAct) and isinstance(mod.bn, BATCH_NORMS):
            mod.conv = fold_conv_bn(mod.conv, mod.bn)
            mod.bn = nn.Identity()
    return m


def strip_training(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace drop path and dropout modules by Identity and switch to eval mode (a copy unless `inplace`)."""
    m = model if inplace else copy.deepcopy(model)
    for parent in list(m.modules()):
        for cname, child in list(parent.named_children()):
            if isinstance(child, DROPOUTS):
                setattr(parent, cname, nn.Identity())
    return m.eval()
