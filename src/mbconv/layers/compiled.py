"""The native depthwise kernels inside torch.compile: custom operators for a compiled training step on CPU.

Why: a training step compiled with torch.compile (inductor) runs every convolution through ATen, and for a
depthwise conv that means ATen's depthwise backward, the kernel issue 15 replaced in eager mode (2-48x its forward
on small maps). Eager mode takes `NativeDepthwiseFn` or `DepthwiseConvFunction`, autograd Functions holding ctypes
calls, which the compiler cannot put into a graph. Registered as custom operators (`torch.library.custom_op`) with
their shapes (`register_fake`) and gradient (`register_autograd`), the same kernels become single nodes of the
compiled forward and backward graphs, and inductor fuses the elementwise work (BN, activations, SE, residuals)
around them.

`mbconv::dw_conv` computes its forward with the native kernel where it beats oneDNN (`native_dw_pays`) and with
ATen's convolution elsewhere; its backward is the native input and weight gradients (`mbconv::dw_conv_input_grad`,
`mbconv::dw_conv_weight_grad`). Without the library the operators fall back to ATen's convolution and convolution
backward, so a graph compiled with them still runs. The bias is added outside the operator, where inductor fuses it.

Which layers take the operator (`compiled_dw_applies`): those where the eager step takes the native kernels
(`native_dw_pays`), and maps of more than COMPILED_ATEN_MAX_MAP pixels a side. In between (3-tap kernels on maps of
5-16 pixels a side) ATen's convolution and its backward stay in the graph: there they made the compiled tour step
faster, while on B0's larger maps they made its compiled step slower (docs/bench/depthwise.md, "The compiled
step's depthwise layers"). A map of one pixel whose output is one pixel reads a single tap per channel: there the
conv is traced as that per-channel multiply (`single_tap`), which inductor fuses with the BN after it.

When the layers use them (`compiled_training_step`): only while torch.compile traces a training step (not while
torch.export or the ONNX exporter traces, and never for inference), for float32 CPU tensors, with the kernels built
and switched on; compiled inference and export see the plain convolution, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .native import native_depthwise_on, native_library
from .native_depthwise import dw_backward_input, dw_backward_weight, dw_forward, native_dw_pays

__all__ = ["COMPILED_ATEN_MAX_MAP", "compiled_dw_applies", "compiled_dw_conv", "compiled_training_step",
           "dw_conv_layout", "library_ready", "single_tap"]

_aten = torch.ops.aten
# `compiled_dw_applies`: maps of more than this many pixels a side take the operator whatever the kernel (measured on
# the compiled steps of the tour model, 3-tap kernels on 8-16 px maps, and B0, on 7-112 px maps)
COMPILED_ATEN_MAX_MAP = 16
_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def dw_conv_layout(x: Tensor) -> torch.memory_format:
    """The memory format of the operators' outputs and input gradients: x's (channels-last where x is, else
    contiguous), fixed so that the fake shapes and the real results agree stride for stride."""
    fmt = _LAST.get(x.dim())
    return fmt if fmt is not None and x.is_contiguous(memory_format=fmt) else torch.contiguous_format


def _out_shape(x: Tensor, weight: Tensor, stride: list[int], padding: list[int]) -> list[int]:
    return [x.shape[0], x.shape[1], *((i + 2 * p - k) // s + 1
                                      for i, k, s, p in zip(x.shape[2:], weight.shape[2:], stride, padding))]


def _aten_backward(gy: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int],
                   mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    dims = x.dim() - 2
    return _aten.convolution_backward(gy, x, weight, None, stride, padding, [1] * dims, False, [0] * dims,
                                      weight.shape[0], [*mask, False])


def _native(x: Tensor) -> bool:
    """Whether the native kernels take `x` now (float32, 1-3 spatial axes, the library loaded)."""
    return x.dtype == torch.float32 and 3 <= x.dim() <= 5 and native_library() is not None


@torch.library.custom_op("mbconv::dw_conv", mutates_args=())
def dw_conv_op(x: Tensor, weight: Tensor, stride: list[int], padding: list[int]) -> Tensor:
    """Depthwise conv of `x` (N, C, *spatial) with `weight` (C, 1, *kernel), no bias, symmetric zero padding."""
    if _native(x) and native_dw_pays(x, weight.shape[2:]):
        y = dw_forward(x, weight, None, stride, padding)
    else:
        dims = x.dim() - 2
        y = _aten.convolution(x, weight, None, stride, padding, [1] * dims, False, [0] * dims, x.shape[1])
    return y.contiguous(memory_format=dw_conv_layout(x))


@dw_conv_op.register_fake
def _dw_conv_fake(x: Tensor, weight: Tensor, stride: list[int], padding: list[int]) -> Tensor:
    return x.new_empty(_out_shape(x, weight, stride, padding)).contiguous(memory_format=dw_conv_layout(x))


@torch.library.custom_op("mbconv::dw_conv_input_grad", mutates_args=())
def dw_conv_input_grad(gy: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int]) -> Tensor:
    """d loss / d x of `mbconv::dw_conv`, in x's layout."""
    if _native(x):
        gx = dw_backward_input(gy, x, weight, stride, padding)
    else:
        gx = _aten_backward(gy, x, weight, stride, padding, [True, False])[0]
    return gx.contiguous(memory_format=dw_conv_layout(x))


@dw_conv_input_grad.register_fake
def _dw_conv_input_grad_fake(gy: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int]
                             ) -> Tensor:
    return x.new_empty(x.shape).contiguous(memory_format=dw_conv_layout(x))


@torch.library.custom_op("mbconv::dw_conv_weight_grad", mutates_args=())
def dw_conv_weight_grad(gy: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int]) -> Tensor:
    """d loss / d weight of `mbconv::dw_conv`, contiguous, shaped like `weight`."""
    if _native(x):
        gw = dw_backward_weight(gy, x, weight, stride, padding)
    else:
        gw = _aten_backward(gy, x, weight, stride, padding, [False, True])[1]
    return gw.contiguous()


@dw_conv_weight_grad.register_fake
def _dw_conv_weight_grad_fake(gy: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int]
                              ) -> Tensor:
    return weight.new_empty(weight.shape)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, weight, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding)


def _backward(ctx: torch.autograd.function.FunctionCtx, gy: Tensor) -> tuple:
    x, weight = ctx.saved_tensors
    stride, padding = ctx.geometry
    gx = dw_conv_input_grad(gy, x, weight, stride, padding) if ctx.needs_input_grad[0] else None
    gw = dw_conv_weight_grad(gy, x, weight, stride, padding) if ctx.needs_input_grad[1] else None
    return gx, gw, None, None


dw_conv_op.register_autograd(_backward, setup_context=_setup_context)


def compiled_training_step(x: Tensor, weight: Tensor) -> bool:
    """Whether a conv of `x` is traced by torch.compile for a float32 CPU training step (autograd recording, no
    autocast: the operators have no autocast rule), and not by torch.export: where the layers put our operators
    into the graph."""
    return (torch.compiler.is_compiling() and not torch.compiler.is_exporting() and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad) and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


@torch.compiler.assume_constant_result
def library_ready() -> bool:
    """Whether the native library is switched on and built, building it on first use. torch.compile calls it once
    while tracing and keeps the answer as a constant (it cannot trace a build), so a step compiled before anything
    else loaded the library still gets the operators; switched off later, the operators fall back to ATen."""
    return native_library() is not None


def single_tap(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]
               ) -> tuple[int, ...] | None:
    """The kernel index per axis of the one tap a depthwise conv reads when its input and output are one pixel
    (that pixel sits `padding` taps into the window), else None."""
    if any(n != 1 for n in size):
        return None
    if any(p >= k or (1 + 2 * p - k) // s + 1 != 1 for k, s, p in zip(kernel, stride, padding)):
        return None
    return tuple(padding)


def compiled_dw_applies(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int]) -> bool:
    """Whether a depthwise conv (dilation 1, numeric zero padding: the caller's checks) of `x` in a compiled
    training step is ours: 1-3 spatial axes, the depthwise kernels switched on and built, and a map where the
    native kernels pay (`native_dw_pays`), larger than COMPILED_ATEN_MAX_MAP a side, or of one tap read
    (`single_tap`)."""
    return (compiled_training_step(x, weight) and 3 <= x.dim() <= 5 and native_depthwise_on() and library_ready()
            and (native_dw_pays(x, weight.shape[2:]) or max(x.shape[2:]) > COMPILED_ATEN_MAX_MAP
                 or single_tap(x.shape[2:], weight.shape[2:], stride, padding) is not None))


def compiled_dw_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, ...],
                     padding: tuple[int, ...]) -> Tensor:
    """Depthwise conv through `mbconv::dw_conv`, or a per-channel multiply where one tap is read (`single_tap`); the
    bias added outside either (inductor fuses the add)."""
    per_channel = [1, -1, *([1] * (x.dim() - 2))]
    taps = single_tap(x.shape[2:], weight.shape[2:], stride, padding)
    if taps is not None:
        y = x * weight[(slice(None), 0, *taps)].view(per_channel)
    else:
        y = torch.ops.mbconv.dw_conv(x, weight, list(stride), list(padding))
    return y if bias is None else y + bias.view(per_channel)
