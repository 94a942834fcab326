"""Pointwise (1x1) convolutions on small maps as matrix products, for training on CPU.

A 1x1 convolution with stride 1 and no padding is a matrix product over the channels. On maps of a few pixels
(SE squeeze/excite convs on 1x1 maps, expand/project convs of the late stages of a small network) ATen sends it
through oneDNN, whose per-call cost is 2-3x that of `F.linear` on the same numbers: SE convs on (64, C, 1, 1)
0.30-0.51 ms forward + backward vs 0.11-0.21 ms; channels_last 2x2 and 4x4 maps 0.52-0.83 vs 0.29-0.61 ms (one
thread). On larger maps oneDNN is as fast or faster (16x16: 2.1 vs 5.1 ms), so the matrix product is used only up
to `MAX_LINEAR_PIXELS` pixels, and for spatial maps only when the input is channels_last (its channels are then
the fastest axis, so the product needs no copy).

`PointwiseConv1d/2d/3d` are nn.Conv1d/2d/3d subclasses (same parameters, state-dict keys, isinstance checks);
`fast_pointwise(model)` turns a model's plain 1x1 convs into them in place (the class only: parameters, their
objects and names are unchanged). During a CPU training step (module in training mode, grad enabled, not tracing,
compiling, exporting or inside a torch.func transform) they run `F.linear`; everything else, inference and
gradients of a model in eval mode included, is nn.ConvNd's forward.
Results equal the convolution's up to float rounding (another summation order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .depthwise import TrainingForward, exporting_or_transforming, fx_proxy

__all__ = ["MAX_LINEAR_PIXELS", "PointwiseConv1d", "PointwiseConv2d", "PointwiseConv3d", "fast_pointwise",
           "is_pointwise", "linear_applies"]

# Largest map (pixels per sample) run as a matrix product; measured on the tour model at one thread
# (docs/bench/depthwise.md): 4x4 and smaller win, 8x8 is mixed, 16x16 loses.
MAX_LINEAR_PIXELS = 16

_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def is_pointwise(conv: nn.Module) -> bool:
    """A plain 1x1 convolution: kernel 1, stride 1, no padding, dilation 1, one group, zero padding mode."""
    return (isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in conv.kernel_size)
            and all(s == 1 for s in conv.stride) and not isinstance(conv.padding, str)
            and all(p == 0 for p in conv.padding) and all(d == 1 for d in conv.dilation) and conv.groups == 1
            and conv.padding_mode == "zeros")


def linear_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a pointwise conv of `x` runs as `F.linear`: a CPU float training step (autograd recording) on a map
    of at most `MAX_LINEAR_PIXELS` pixels that is a single pixel or channels_last."""
    if fx_proxy(x) or not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
                           and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                           and x.dim() == weight.dim() and x.dim() >= 3) or exporting_or_transforming():
        return False
    pixels = math.prod(x.shape[2:])
    if pixels > MAX_LINEAR_PIXELS:
        return False
    return pixels == 1 or (x.dim() in _LAST and x.is_contiguous(memory_format=_LAST[x.dim()]))


class PointwiseForward(TrainingForward):
    """Mixin for the nn.ConvNd subclasses below: small-map training steps through `F.linear` (channels as the
    last axis), everything else through nn.ConvNd's forward."""

    @torch.jit.unused
    def eager_forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        weight = self.weight  # read once: a parametrization (fake quantization) computes it on access
        if self.training and linear_applies(input, weight):
            order = (0, *range(2, input.dim()), 1)  # channels last: a view for channels_last or 1-pixel maps
            back = (0, input.dim() - 1, *range(1, input.dim() - 1))
            return F.linear(input.permute(order), weight.flatten(1), self.bias).permute(back)
        return self._conv_forward(input, weight, self.bias)


class PointwiseConv1d(PointwiseForward, nn.Conv1d):
    """nn.Conv1d whose small-map training step is a matrix product (see the module docstring)."""


class PointwiseConv2d(PointwiseForward, nn.Conv2d):
    """nn.Conv2d whose small-map training step is a matrix product (see the module docstring)."""


class PointwiseConv3d(PointwiseForward, nn.Conv3d):
    """nn.Conv3d whose small-map training step is a matrix product (see the module docstring)."""


POINTWISE_CONV = {nn.Conv1d: PointwiseConv1d, nn.Conv2d: PointwiseConv2d, nn.Conv3d: PointwiseConv3d}


def fast_pointwise(model: nn.Module) -> int:
    """Turn every plain (exactly nn.Conv1d/2d/3d, no subclass) pointwise conv of `model` into its
    `PointwiseConvNd`, in place; returns how many. Only the class changes: parameters, buffers, hooks and names
    stay, so optimizers, state dicts, checkpoints and export are unaffected."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"fast_pointwise needs an nn.Module, got {type(model).__name__}")
    n = 0
    for mod in model.modules():
        cls = POINTWISE_CONV.get(type(mod))
        if cls is not None and is_pointwise(mod):
            mod.__class__ = cls
            n += 1
    return n
