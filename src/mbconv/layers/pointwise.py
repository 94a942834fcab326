"""Pointwise (1x1) convolutions on small maps as matrix products, for training on CPU.

A 1x1 convolution with stride 1 and no padding is a matrix product over the channels. On maps of a few pixels
(SE squeeze/excite convs on 1x1 maps, expand/project convs of the late stages of a small network) ATen sends it
through oneDNN, whose per-call cost is 2-3x that of `F.linear` on the same numbers: SE convs on (64, C, 1, 1)
0.30-0.51 ms forward + backward vs 0.11-0.21 ms; channels_last 2x2 and 4x4 maps 0.52-0.83 vs 0.29-0.61 ms (one
thread). On 7x7 and 8x8 maps it still wins on every layer of the tour model and B0 (1.07-1.44x at one and two
threads); on 14x14 and 16x16 maps the two are even or either wins, and on the largest maps oneDNN does
(`benchmarks.depthwise --sections pointwise2d`). So the matrix product is used only up to `MAX_LINEAR_PIXELS`
pixels, and for spatial maps only when the input is channels_last (its channels are then the fastest axis, so the
product needs no copy).

1-D maps in the channels-last 1-D layout (layers/channels_last_1d.py, what the trainer's lean layers produce) take
`F.linear` at any length. Contiguous (N, C, L) maps (where `F.linear` would need a transposed copy) of 2 to
`MAX_MATMUL_LENGTH` values, with at most `MAX_MATMUL_WEIGHT` weights, take a batched matrix product W @ x
instead (`pointwise_matmul`: `torch.bmm` over the expanded weight), where oneDNN's conv1d is slower forward +
backward; on wider layers the product's batched weight gradient costs more (docs/bench/depthwise.md, "1-D pointwise
convs as matrix products").

`PointwiseConv1d/2d/3d` are nn.Conv1d/2d/3d subclasses (same parameters, state-dict keys, isinstance checks);
`fast_pointwise(model)` turns a model's plain 1x1 convs into them in place (the class only: parameters, their
objects and names are unchanged). During a CPU training step (module in training mode, grad enabled, not tracing,
exporting or inside a torch.func transform; a float32 step traced by torch.compile counts) they run `F.linear` or
W @ x; everything else, inference and gradients of a model in eval mode included, is nn.ConvNd's forward.
Results equal the convolution's up to float rounding (another summation order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .channels_last_1d import is_channels_last_1d
from .compiled import compiled_training_step
from .depthwise import TrainingForward, exporting_or_transforming, fx_proxy

__all__ = ["MAX_LINEAR_PIXELS", "MAX_MATMUL_LENGTH", "MAX_MATMUL_WEIGHT", "POINTWISE_CONV", "PointwiseConv1d",
           "PointwiseConv2d", "PointwiseConv3d", "fast_pointwise", "is_pointwise", "linear_applies", "linear_weight",
           "matmul_applies", "pointwise_matmul", "product_step_input", "training_step_input"]

# Largest map (pixels per sample) run as a matrix product: every 1x1 conv of the tour model and B0 on maps up to 8x8
# wins at one and two threads, 14x14 and 16x16 are mixed (benchmarks.depthwise --sections pointwise2d, eighth
# session; the first measurement, one thread, had 8x8 mixed and set 16)
MAX_LINEAR_PIXELS = 64
# Contiguous 1-D maps run as a batched matrix product W @ x (see the module docstring) up to this length and this
# weight size (in x out channels). Measured per layer (benchmarks.depthwise --sections pointwise1d, lengths 10-128):
# the product wins at every length up to 48 x 192 channels, is mixed at 64 x 256 and loses at 128 x 512, where its
# batched weight gradient (N x out x in values, summed over the batch) costs more than oneDNN's; lengths past 128
# were not measured.
MAX_MATMUL_LENGTH = 128
MAX_MATMUL_WEIGHT = 48 * 192

_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def is_pointwise(conv: nn.Module) -> bool:
    """A plain 1x1 convolution: kernel 1, stride 1, no padding, dilation 1, one group, zero padding mode."""
    return (isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in conv.kernel_size)
            and all(s == 1 for s in conv.stride) and not isinstance(conv.padding, str)
            and all(p == 0 for p in conv.padding) and all(d == 1 for d in conv.dilation) and conv.groups == 1
            and conv.padding_mode == "zeros")


def training_step_input(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a pointwise conv of `x` is a CPU float training step (autograd recording) that no tracer, compiler,
    exporter or torch.func transform is watching: where the products below may stand in for it."""
    return not fx_proxy(x) and (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
                                and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                                and x.dim() == weight.dim() and x.dim() >= 3) and not exporting_or_transforming()


def product_step_input(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where the products may stand in for the conv: an eager training step (`training_step_input`), or a float32
    CPU training step traced by torch.compile (`layers.compiled.compiled_training_step`: the compiled graph then
    holds the product, and inductor fuses the bias and the layout around it)."""
    return training_step_input(x, weight) or (compiled_training_step(x, weight) and x.dim() == weight.dim()
                                              and x.dim() >= 3)


def matmul_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a pointwise conv of `x` runs as the batched product W @ x: a training step (`product_step_input`)
    on a contiguous 1-D map of 2 to `MAX_MATMUL_LENGTH` values, with at most `MAX_MATMUL_WEIGHT` weights."""
    return (product_step_input(x, weight) and x.dim() == 3 and 1 < x.shape[2] <= MAX_MATMUL_LENGTH
            and weight.numel() <= MAX_MATMUL_WEIGHT and x.is_contiguous())  # an fx proxy's shape is no value


def pointwise_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 conv of a contiguous (N, Cin, L) `x` as the batched product W @ x: `torch.bmm` over the weight expanded
    along the batch (a view; torch.matmul's broadcasting would make transposed copies)."""
    y = torch.bmm(weight.flatten(1).expand(x.shape[0], -1, -1), x)
    return y if bias is None else y + bias.unsqueeze(1)


def linear_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a pointwise conv of `x` runs as `F.linear`: a map that is a single pixel or channels_last, in an eager
    training step (`training_step_input`) when it has at most `MAX_LINEAR_PIXELS` pixels (a channels-last 1-D map,
    layers/channels_last_1d.py, at any length), in a compiled one
    (`layers.compiled.compiled_training_step`) at any size: there inductor fuses the bias and the layout around
    the product, and with oneDNN's conv on the larger maps the compiled step was no faster (tour and B0, one
    uncommitted run each, docs/bench/depthwise.md "A compiled training step")."""
    if training_step_input(x, weight):
        if x.dim() == 3 and is_channels_last_1d(x):
            return True  # one (N * L, C) product at any length: no copy, beats oneDNN's conv1d (benchmarks.layout1d)
        if math.prod(x.shape[2:]) > MAX_LINEAR_PIXELS:
            return False
    elif not (compiled_training_step(x, weight) and x.dim() == weight.dim() and x.dim() >= 3):
        return False
    return math.prod(x.shape[2:]) == 1 or (x.dim() in _LAST and x.is_contiguous(memory_format=_LAST[x.dim()]))


def linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight (O, I, 1, ...) as the (O, I) matrix of `F.linear`, a view whose gradient comes back in the
    weight's own strides: through `flatten` for a contiguous weight, through the channels-last permutation for a
    channels-last one (`flatten`'s gradient would have contiguous strides there, which DDP copies into its buckets
    with a warning each step)."""
    if all(s == 1 for s in weight.stride()[2:]):
        return weight.flatten(1)
    return weight.permute(0, *range(2, weight.dim()), 1).reshape(weight.shape[0], -1)


class PointwiseForward(TrainingForward):
    """Mixin for the nn.ConvNd subclasses below: small-map training steps through `F.linear` (channels as the
    last axis), everything else through nn.ConvNd's forward."""

    @torch.jit.unused
    def eager_forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        weight = self.weight  # read once: a parametrization (fake quantization) computes it on access
        if self.training and linear_applies(input, weight):
            order = (0, *range(2, input.dim()), 1)  # channels last: a view for channels_last or 1-pixel maps
            back = (0, input.dim() - 1, *range(1, input.dim() - 1))
            return F.linear(input.permute(order), linear_weight(weight), self.bias).permute(back)
        if self.training and matmul_applies(input, weight):
            return pointwise_matmul(input, weight, self.bias)
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
