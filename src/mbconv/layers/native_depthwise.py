"""Depthwise convolution in native kernels (`dw_conv.c`, built with the BN kernels by layers/native.py): forward,
input gradient and weight gradient of a float32 CPU depthwise conv, any stride, zero padding, 1-D to 3-D.

Why: on small maps every ATen convolution call costs of the order of 0.1 ms whatever its size (oneDNN's
dispatch), and a depthwise conv's backward through `DepthwiseConvFunction` is two or three such calls plus flips,
pads and folds; the kernels here are plain loops, one call each, that hold a block of 16 channels in a vector
register while the taps accumulate. They are not faster everywhere: on large maps with 3-tap kernels oneDNN's
forward (and the backward built from it) wins, so `DepthwiseForward` takes `NativeDepthwiseFn` only where
`native_dw_pays` (measured per layer in docs/bench/depthwise.md, "Depthwise convolution in native kernels").

The kernels read channels-last tensors (a 1-D map as (N, L, C), the layout of layers/channels_last_1d.py); a
contiguous N, C, spatial input is transposed to that and the output back (kernels along the rows of contiguous
planes, tried first, ran slower than both transpositions plus these on MNIST-1D's maps). Results equal ATen's up
to float rounding (another summation order; the weight gradient sums in double over runs of float).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd import forward_ad

from .channels_last_1d import is_channels_last_1d
from .native import (
    in_param_layout,
    native_depthwise_on,
    native_enabled,
    native_library,
    require_native_library,
    use_native_depthwise,
)

__all__ = ["NATIVE_DW_MAX_MAP", "NATIVE_DW_MAX_MAP_3D", "NATIVE_DW_MAX_MAP_K5", "NativeDepthwiseFn",
           "dw_backward_input", "dw_backward_weight", "dw_forward", "dw_geometry", "native_dw_applies",
           "native_dw_pays", "use_native_depthwise"]

# `native_dw_pays`: the largest map side (pixels) on which the kernels win for every kernel size, and the largest
# on which they win for kernels of 5 taps or more per axis (docs/bench/depthwise.md).
NATIVE_DW_MAX_MAP = 4
NATIVE_DW_MAX_MAP_K5 = 56
# 3-D maps: a 3x3x3 kernel is 27 taps, and the kernels won on every layer of the 3-D benchmark net (4-16 a side,
# 3-tap kernels; larger 3-D maps were not measured)
NATIVE_DW_MAX_MAP_3D = 16

_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _to_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` (N, C, *spatial) with its channels last in memory: the tensor itself for channels-last 2-D / 3-D, else a
    channels-last copy; for 1-D a contiguous (N, L, C) copy."""
    if t.dim() == 3:
        return t.transpose(1, 2).contiguous()
    return t.contiguous(memory_format=_LAST[t.dim()])


def _is_last(t: torch.Tensor) -> bool:
    """Whether `t` has its channels last in memory (channels_last 2-D / 3-D, or the 1-D layout of
    layers/channels_last_1d.py): the kernels then read and write it as it is."""
    if t.dim() == 3:
        return not t.is_contiguous() and is_channels_last_1d(t)
    return t.dim() in _LAST and t.is_contiguous(memory_format=_LAST[t.dim()])


def _from_rows(rows: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A kernel output (as `_empty_rows` makes it) as (N, C, *spatial): channels-last if `channels_last` (the
    input's layout; for 1-D a view of the (N, L, C) rows), else contiguous."""
    if rows.dim() == 3:
        return rows.transpose(1, 2) if channels_last else rows.transpose(1, 2).contiguous()
    return rows if channels_last else rows.contiguous()


def _geometry(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int]
              ) -> tuple[tuple[int, ...], Any]:
    """(output shape, the C kernels' geometry array) for depthwise conv(x, weight) with symmetric `padding`; a
    one-line ValueError for shapes that do not match."""
    return dw_geometry(tuple(x.shape), tuple(weight.shape), tuple(stride), tuple(padding))


@functools.lru_cache(maxsize=512)
def dw_geometry(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], stride: tuple[int, ...],
                padding: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
    """(output shape, the C kernels' geometry array: read-only, shared) for a depthwise conv of an input of
    `x_shape` (N, C, *spatial) with a weight of `weight_shape` (C, 1, *kernel), `stride` and symmetric `padding`;
    cached per shape (a training step meets the same few shapes every step, and building the array cost more than
    a small layer's kernel). A one-line ValueError for shapes that do not match."""
    dims = len(x_shape) - 2
    c = x_shape[1]
    if tuple(weight_shape[:2]) != (c, 1) or len(weight_shape) != len(x_shape) or len(stride) != dims \
            or len(padding) != dims:
        raise ValueError(f"invalid depthwise geometry: input {x_shape}, weight {weight_shape}, "
                         f"stride {stride}, padding {padding}")
    ins, ks = list(x_shape[2:]), list(weight_shape[2:])
    if min(stride) < 1 or min(padding) < 0 or min(ins) < 1 or \
            min((i + 2 * p - k) // s + 1 for i, k, s, p in zip(ins, ks, stride, padding)) < 1:
        raise ValueError(f"invalid depthwise geometry: input {x_shape}, kernel {tuple(ks)}, stride "
                         f"{stride}, padding {padding} give an empty output")
    outs = [(i + 2 * p - k) // s + 1 for i, k, s, p in zip(ins, ks, stride, padding)]
    ones, zeros = [1] * (3 - dims), [0] * (3 - dims)  # unused leading axes: size 1, stride 1, no padding
    values = [x_shape[0], c, *ones, *ins, *ones, *outs, *ones, *ks, *ones, *stride, *zeros, *padding]
    return (x_shape[0], c, *outs), (ctypes.c_long * len(values))(*values)


def _checked(x: torch.Tensor, fn: str) -> Any:
    if x.dtype != torch.float32 or x.device.type != "cpu" or not 3 <= x.dim() <= 5:
        raise ValueError(f"{fn}: input must be a float32 CPU tensor (N, C, *spatial) with 1-3 spatial axes, got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}")
    return require_native_library(fn)


def _rows_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight as the kernels take it: PyTorch's (C, 1, *kernel), contiguous float32 (they transpose it)."""
    if weight.dtype != torch.float32:
        raise ValueError(f"depthwise weight must be float32, got {weight.dtype}")
    return weight.detach().contiguous()


def _empty_rows(shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised kernel output for an (N, C, *spatial) shape: (N, L, C) for 1-D, else channels-last."""
    if len(shape) == 3:
        return torch.empty(shape[0], shape[2], shape[1], dtype=torch.float32)
    return torch.empty(shape, dtype=torch.float32, memory_format=_LAST[len(shape)])


def _dw_kernel_forward(lib: Any, xr: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geom: Any,
                      out_shape: Sequence[int]) -> torch.Tensor:
    """The forward kernel call alone (its arguments not checked: `dw_forward` and `NativeDepthwiseFn` check
    them): `xr` channels-last, `w` the contiguous float32 weight, `geom` from `dw_geometry`; the output in rows."""
    y = _empty_rows(out_shape)
    b = None if bias is None else bias.detach().contiguous()
    if lib.mbconv_dw_forward(geom, xr.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(),
                             torch.get_num_threads()):
        raise MemoryError("dw_forward: out of memory for the transposed weight")
    return y


def _dw_kernel_input_grad(lib: Any, gyr: torch.Tensor, w: torch.Tensor, geom: Any, in_shape: Sequence[int]
                         ) -> torch.Tensor:
    """The input-gradient kernel call alone (see `_dw_kernel_forward`): `gyr` channels-last."""
    gx = _empty_rows(in_shape)
    if lib.mbconv_dw_backward_input(geom, gyr.data_ptr(), w.data_ptr(), gx.data_ptr(), torch.get_num_threads()):
        raise MemoryError("dw_backward_input: out of memory for the index tables")
    return gx


def _dw_kernel_weight_grad(lib: Any, gyr: torch.Tensor, xr: torch.Tensor, geom: Any, weight: torch.Tensor
                          ) -> torch.Tensor:
    """The weight-gradient kernel call alone (see `_dw_kernel_forward`): shaped like `weight`."""
    gw = torch.empty(weight.shape, dtype=torch.float32)  # [C][taps], as the kernel writes it
    if lib.mbconv_dw_backward_weight(geom, gyr.data_ptr(), xr.data_ptr(), gw.data_ptr(), torch.get_num_threads()):
        raise MemoryError(f"dw_backward_weight: out of memory for the per-thread sums of {gw.numel()} taps")
    return in_param_layout(gw, weight)


def dw_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
               padding: Sequence[int]) -> torch.Tensor:
    """Depthwise conv of `x` (N, C, *spatial) with `weight` (C, 1, *kernel), optional `bias` (C,), symmetric zero
    `padding`; the output in x's layout (channels-last, or contiguous)."""
    lib = _checked(x, "dw_forward")
    out_shape, geom = _geometry(x, weight, stride, padding)
    if bias is not None and (bias.numel() != x.shape[1] or bias.dtype != torch.float32):
        raise ValueError(f"dw_forward: bias must be {x.shape[1]} float32 values, got {bias.dtype} "
                         f"{tuple(bias.shape)}")
    xr, w = _to_rows(x), _rows_weight(weight)  # named: the kernel reads them
    return _from_rows(_dw_kernel_forward(lib, xr, w, bias, geom, out_shape), _is_last(x))


def _backward_args(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                   padding: Sequence[int], fn: str) -> tuple[Any, Any, torch.Tensor]:
    """(library, geometry, gy in rows) for a gradient call, after the checks (one line each)."""
    lib = _checked(x, fn)
    out_shape, geom = _geometry(x, weight, stride, padding)
    if tuple(gy.shape) != tuple(out_shape):
        raise ValueError(f"{fn}: gradient of shape {tuple(gy.shape)} for an output of {tuple(out_shape)}")
    return lib, geom, _to_rows(gy.float())


def dw_backward_input(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                      padding: Sequence[int]) -> torch.Tensor:
    """d loss / d x of `dw_forward(x, weight, ...)` from the output gradient `gy`, in x's layout."""
    lib, geom, gyr = _backward_args(gy, x, weight, stride, padding, "dw_backward_input")
    w = _rows_weight(weight)  # named: the kernel reads it
    return _from_rows(_dw_kernel_input_grad(lib, gyr, w, geom, x.shape), _is_last(x))


def dw_backward_weight(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                       padding: Sequence[int]) -> torch.Tensor:
    """d loss / d weight of `dw_forward(x, weight, ...)`, shaped like `weight`."""
    lib, geom, gyr = _backward_args(gy, x, weight, stride, padding, "dw_backward_weight")
    return _dw_kernel_weight_grad(lib, gyr, _to_rows(x), geom, weight)


def native_dw_pays(x: torch.Tensor, kernel: Sequence[int]) -> bool:
    """Whether the kernels beat `DepthwiseConvFunction` / ATen on this layer (per-layer measurements,
    docs/bench/depthwise.md): maps of 2 to NATIVE_DW_MAX_MAP pixels a side for any kernel, maps up to
    NATIVE_DW_MAX_MAP_K5 a side for kernels of 5 or more taps per axis, and 3-D maps up to NATIVE_DW_MAX_MAP_3D
    a side, and channels-last 1-D maps of any length: with no transposes to pay they beat the best path on a
    contiguous map at every length measured, 40-1000, kernels of 3 and 5 (`benchmarks.layout1d`). On one-pixel
    maps the per-channel multiply of `DepthwiseConvFunction` is as fast."""
    side = max(x.shape[2:])
    if side <= 1:
        return False
    if x.dim() == 3 and _is_last(x):
        return True
    if x.dim() == 5 and side <= NATIVE_DW_MAX_MAP_3D:
        return True
    return side <= NATIVE_DW_MAX_MAP or (min(kernel) >= 5 and side <= NATIVE_DW_MAX_MAP_K5)


def native_dw_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a training step's depthwise conv of `x` runs `NativeDepthwiseFn`: switched on, float32 input and
    weight, a shape where it pays, no forward-mode dual input (the Function defines no jvp), the kernels built and
    on. The caller has checked the rest (a depthwise conv with dilation 1, numeric zero padding, nothing
    tracing)."""
    return (native_depthwise_on() and x.dtype == torch.float32 and weight.dtype == torch.float32 and 3 <= x.dim() <= 5
            and native_dw_pays(x, weight.shape[2:]) and forward_ad.unpack_dual(x).tangent is None
            and native_enabled())


class NativeDepthwiseFn(torch.autograd.Function):
    """y = depthwise conv(x, weight, bias) through the native kernels. Saves x in the kernels' layout (x itself when
    it is channels-last; for a contiguous x the transposed copy, so backward transposes only its gradient) and the
    weight. A double backward (create_graph), or a backward run after the kernels were switched off, takes ATen's
    convolution backward instead."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, ...],
                padding: tuple[int, ...]) -> torch.Tensor:
        lib = _checked(x, "NativeDepthwiseFn")
        out_shape, geom = _geometry(x, weight, stride, padding)
        xr, w = _to_rows(x), _rows_weight(weight)
        y = _dw_kernel_forward(lib, xr, w, bias, geom, out_shape)
        ctx.save_for_backward(xr, weight)
        ctx.conf = (tuple(stride), tuple(padding), bias is not None, tuple(x.shape), _is_last(x))
        return _from_rows(y, _is_last(x))

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        xr, weight = ctx.saved_tensors
        stride, padding, has_bias, x_shape, channels_last = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x_view = xr.transpose(1, 2) if xr.dim() == 3 else xr  # (N, L, C) storage seen as (N, C, L)
        lib = native_library()
        # create_graph needs a differentiable backward; a library switched off since the forward has none to give
        if torch.is_grad_enabled() or lib is None:
            dims = xr.dim() - 2
            gx, gw, gb = torch.ops.aten.convolution_backward(
                gy, x_view, weight, [weight.shape[0]] if has_bias else None, list(stride), list(padding),
                [1] * dims, False, [0] * dims, weight.shape[0], [need_x, need_w, has_bias and need_b])
            return gx, gw, gb, None, None
        _, geom = _geometry(x_view, weight, stride, padding)
        gyr = _to_rows(gy.float())
        gx = gw = gb = None
        if need_x:
            w = _rows_weight(weight)
            gx = _from_rows(_dw_kernel_input_grad(lib, gyr, w, geom, x_shape), channels_last)
        if need_w:
            gw = _dw_kernel_weight_grad(lib, gyr, xr, geom, weight)
        if has_bias and need_b:
            gb = gy.sum(dim=(0, *range(2, gy.dim())))
        return gx, gw, gb, None, None
