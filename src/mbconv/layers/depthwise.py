"""Depthwise convolution (groups == in == out channels) with its own backward, for training on CPU.

ATen's CPU depthwise backward costs 5-15x its forward for 5-tap kernels, and for any kernel on 1x1 / 2x2 maps
(channels_last; far more in NCHW). `DepthwiseConv1d/2d/3d` are nn.Conv1d/2d/3d subclasses (same parameters,
state-dict keys, isinstance checks, surgery and export); during a CPU training step, for shapes where the rule
below leaves ATen, they run `DepthwiseConvFunction`. Eager CPU calls without autograd (evaluation, calibration)
run the cropped kernel where it pays (`crop_pays_for_inference`: maps of one pixel, strided NCHW maps smaller than
the kernel), which ATen runs 10-300x slower. A training step traced by torch.compile takes the native depthwise
kernels as graph operators (layers/compiled.py); compiled inference, tracing, torch.export, ONNX export, torch.func
transforms and every other call see the plain `F.convNd`.

`DepthwiseConvFunction`:
- crops the kernel to the taps that ever touch the input (a 5-tap kernel on a 1x1 map has one live tap, on a
  2x2 map three), with padding adjusted so the output is unchanged: the forward and both gradients run a
  smaller convolution and the dead taps get a zero gradient, exactly what they would get from ATen; a single
  live tap is a per-channel multiply;
- grad_input (`input_grad_method`): for stride 1 the forward convolution of grad_output with the flipped kernel;
  for stride > 1 ATen's input gradient;
- grad_weight (`weight_grad_method`): ATen where its kernel is fast, one product-sum per live tap for a single
  tap or tiny channels_last maps, else one depthwise convolution with batch x channels folded into the groups
  and grad_output as the per-group kernel, summed over the batch.
The rule and the measurements behind it: docs/bench/depthwise.md (`benchmarks/depthwise.py --sections methods`).

`use_fast_backward(False)` (a context manager) or `set_fast_backward(False)` switches back to ATen's backward and
ATen's full-kernel inference, for benchmarks and checks on the same weights.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import compiled_dw_applies, compiled_dw_conv
from .native_depthwise import NativeDepthwiseFn, native_dw_applies

CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
LAST_FORMAT = {2: torch.channels_last, 3: torch.channels_last_3d}

WEIGHT_GRAD_METHODS = ("aten", "fold", "taps")
INPUT_GRAD_METHODS = ("aten", "flip")

_state = {"enabled": True}


# -- the switch ------------------------------------------------------------------------------------------------
def fast_backward_enabled() -> bool:
    """Whether depthwise layers use `DepthwiseConvFunction` when training (the default) or ATen's backward."""
    return _state["enabled"]


def set_fast_backward(enabled: bool) -> bool:
    """Switch the depthwise backward for the whole process; returns the previous setting."""
    if not isinstance(enabled, bool):
        raise ValueError(f"invalid enabled={enabled!r}: expected True or False")
    previous, _state["enabled"] = _state["enabled"], enabled
    return previous


@contextlib.contextmanager
def use_fast_backward(enabled: bool = True) -> Iterator[None]:
    """Within the block, depthwise layers use our backward (True) or ATen's (False); restored on exit."""
    previous = set_fast_backward(enabled)
    try:
        yield
    finally:
        set_fast_backward(previous)


# -- geometry: which taps are live -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthwisePlan:
    """The convolution actually run for one input size: per spatial axis the live taps [lo, hi) of the kernel,
    the input padding (before, after) for that cropped kernel (after < 0 drops unread trailing input), and
    whether symmetric conv padding (`conv_padding`) gives the same output as that padding."""

    taps: tuple[tuple[int, int], ...]
    pads: tuple[tuple[int, int], ...]
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    stride: tuple[int, ...]
    cropped: bool
    symmetric: bool

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.taps)

    @property
    def conv_padding(self) -> tuple[int, ...]:
        return tuple(p[0] for p in self.pads) if self.symmetric else (0,) * len(self.pads)

    def tap_slices(self) -> tuple[slice, ...]:
        """Index of the live taps in a (C, 1, *kernel) weight."""
        return (slice(None), slice(None), *(slice(lo, hi) for lo, hi in self.taps))


def plan_depthwise(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                   padding: Sequence[int]) -> DepthwisePlan:
    """The cropped convolution equal to a depthwise conv (dilation 1, symmetric zero `padding`) on `in_size`."""
    if not len(in_size) == len(kernel) == len(stride) == len(padding):
        raise ValueError(f"invalid geometry: in_size={tuple(in_size)}, kernel={tuple(kernel)}, "
                         f"stride={tuple(stride)}, padding={tuple(padding)} must have one entry per axis")
    taps, pads, out = [], [], []
    for n, k, s, p in zip(in_size, kernel, stride, padding):
        o = (n + 2 * p - k) // s + 1
        if o < 1:
            raise ValueError(f"invalid input size {tuple(in_size)} for kernel={tuple(kernel)} "
                             f"padding={tuple(padding)}: the output would be empty")
        # output i reads input i*s + t - p: tap t is live if that lies in [0, n) for some output i
        lo, hi = max(0, p - (o - 1) * s), min(k, p + n)
        if lo >= hi:  # every tap reads padding only (stride > kernel): keep the kernel, nothing to gain
            lo, hi = 0, k
        before = p - lo
        after = (o - 1) * s + (hi - lo) - n - before
        taps.append((lo, hi))
        pads.append((before, after))
        out.append(o)
    # symmetric padding `before` on both sides gives the same output if the extra right padding is < stride
    symmetric = all(0 <= b - a < s for (b, a), s in zip(pads, stride))
    cropped = any((lo, hi) != (0, k) for (lo, hi), k in zip(taps, kernel))
    return DepthwisePlan(tuple(taps), tuple(pads), tuple(in_size), tuple(out), tuple(stride), cropped, symmetric)


cached_plan = functools.lru_cache(maxsize=512)(plan_depthwise)  # for hashable (tuple) arguments


def pad_input(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """`x` with explicit zero padding (before, after) per spatial axis; negative `after` drops trailing input."""
    flat = [v for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
    return F.pad(x, flat) if any(flat) else x


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D/5-D tensor laid out channels_last (and not also plain contiguous)."""
    fmt = LAST_FORMAT.get(x.dim() - 2)
    return fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt)


# -- the per-shape rules ---------------------------------------------------------------------------------------
def weight_grad_method(plan: DepthwisePlan, channels_last: bool = False) -> str:
    """'taps' (one product-sum per live tap) for a single live tap, or channels_last maps of <= 2 per axis;
    'aten' where ATen's kernel is fast: 1-D/2-D kernels of <= 3 taps on maps of >= 4 per axis, and strided 3-D
    (where the fold's dilated 3-D conv is slow); 'fold' (one depthwise conv over batch x channel groups)
    otherwise. Measured in docs/bench/depthwise.md (one thread)."""
    if math.prod(plan.kernel) == 1 or (channels_last and max(plan.in_size) <= 2):
        return "taps"
    if len(plan.kernel) == 3:
        return "aten" if any(s > 1 for s in plan.stride) else "fold"
    if max(plan.kernel) <= 3 and min(plan.in_size) >= 4:
        return "aten"
    return "fold"


def own_backward(plan: DepthwisePlan, channels_last: bool = False) -> bool:
    """Whether `DepthwiseConvFunction` differs from ATen for this plan: a cropped kernel or a weight gradient not
    by ATen. Otherwise the module runs plain nn.ConvNd (the Function's Python costs ~0.07 ms a layer)."""
    return plan.cropped or weight_grad_method(plan, channels_last) != "aten"


def input_grad_method(plan: DepthwisePlan, channels_last: bool = False) -> str:
    """'flip' (forward conv of grad_output with the flipped kernel) for stride 1, else ATen's input gradient
    (faster here than a zero-inserted or per-phase stride-1 conv); also ATen's where ATen computes the weight
    gradient, so that one ATen call gives both (a conv call's fixed cost is of the order of a small layer)."""
    if all(s == 1 for s in plan.stride) and weight_grad_method(plan, channels_last) != "aten":
        return "flip"
    return "aten"


# -- the gradients ---------------------------------------------------------------------------------------------
def dw_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int] | int,
            padding: Sequence[int] | int) -> torch.Tensor:
    """Depthwise F.convNd; a single-tap kernel as a per-channel multiply (ATen sends 1x1 depthwise convs with
    batch < 16 on one thread to its slow per-group kernel: 27 ms for 8 x 96 x 56 x 56, 1.4 ms as a multiply)."""
    dims = x.dim() - 2
    if any(k != 1 for k in w.shape[2:]):
        return CONV_FN[dims](x, w, bias, stride, padding, 1, x.shape[1])
    stride = (stride,) * dims if isinstance(stride, int) else tuple(stride)
    padding = (padding,) * dims if isinstance(padding, int) else tuple(padding)
    xs = pad_input(x, [(p, p) for p in padding])
    if any(st != 1 for st in stride):
        xs = xs[(slice(None), slice(None), *(slice(None, None, st) for st in stride))]
    y = xs * w.reshape(1, -1, *[1] * dims)
    return y if bias is None else y + bias.reshape(1, -1, *[1] * dims)


def conv_input(x: torch.Tensor, plan: DepthwisePlan) -> torch.Tensor:
    """The tensor the cropped conv reads with `plan.conv_padding`: `x` itself or `x` padded explicitly."""
    return x if plan.symmetric else pad_input(x, plan.pads)


def folded_input(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """`x` (N, C, *S) zero-padded by `pads` as one sample of N*C channels (n major), in one copy. channels_last
    input gives a channels_last (1, N*C, *S) whose batch stride is the whole tensor: oneDNN took a 10-30x slower
    kernel for the same layout reached by unsqueezing an (N*C, *S) view."""
    n, ch, sizes = x.shape[0], x.shape[1], x.shape[2:]
    padded = [size + b + a for size, (b, a) in zip(sizes, pads)]
    src = x[(slice(None), slice(None), *(slice(0, size + min(a, 0)) for size, (_, a) in zip(sizes, pads)))]
    dst = tuple(slice(b, b + size + min(a, 0)) for size, (b, a) in zip(sizes, pads))
    if is_channels_last(x):
        buf = x.new_zeros(1, *padded, n, ch)
        buf[(0, *dst)] = src.movedim(0, -1).movedim(0, -1)  # (*S, N, C)
        return buf.reshape(1, *padded, n * ch).movedim(-1, 1)
    return pad_input(x, pads).reshape(1, n * ch, *padded)


def aten_grads(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, plan: DepthwisePlan, need_x: bool,
               need_w: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """ATen's (grad_input, grad_weight) of the cropped conv, each only if asked for."""
    dims = x.dim() - 2
    gx, gw, _ = torch.ops.aten.convolution_backward(grad_out, conv_input(x, plan), w, None, list(plan.stride),
                                                    list(plan.conv_padding), [1] * dims, False, [0] * dims,
                                                    x.shape[1], [need_x, need_w, False])
    if gx is not None and not plan.symmetric:  # drop the explicit padding again
        gx = pad_input(gx, [(-b, -a) for b, a in plan.pads])
    return gx, gw


def input_grad(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, plan: DepthwisePlan,
               method: str) -> torch.Tensor:
    """d loss / d x for the cropped conv (weight `w` already cropped to the live taps)."""
    dims = x.dim() - 2
    if method == "flip":
        if any(s != 1 for s in plan.stride):
            raise ValueError(f"invalid method='flip' for stride={plan.stride}: it needs stride 1")
        # x[u] receives g[u + before - t] * w[t]: a conv of g (padded k-1-before, n-o+before) with w flipped
        gpads = [(k - 1 - b, n - o + b) for k, (b, _), n, o in zip(plan.kernel, plan.pads, plan.in_size,
                                                                   plan.out_size)]
        wf = w.flip(list(range(2, 2 + dims)))
        if all(a == b >= 0 for a, b in gpads):
            return dw_conv(grad_out, wf, None, 1, tuple(a for a, _ in gpads))
        return dw_conv(pad_input(grad_out, gpads), wf, None, 1, 0)
    if method == "aten":
        return aten_grads(grad_out, x, w, plan, True, False)[0]
    raise ValueError(f"invalid method={method!r}: expected one of {INPUT_GRAD_METHODS}")


def weight_grad(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, plan: DepthwisePlan,
                method: str) -> torch.Tensor:
    """d loss / d w for the cropped conv, shaped like the cropped weight `w` (C, 1, *plan.kernel)."""
    dims, n, ch = x.dim() - 2, x.shape[0], x.shape[1]
    if method == "aten":
        return aten_grads(grad_out, x, w, plan, False, True)[1]
    if method == "fold":
        # dW[c, t] = sum_b sum_i xp[b, c, i*s + t] g[b, c, i]: a conv over (b, c) groups whose kernel is g,
        # dilated by the stride, reduced over b
        gk = grad_out.reshape(n * ch, 1, *grad_out.shape[2:])
        o = CONV_FN[dims](folded_input(x, plan.pads), gk, None, 1, 0, plan.stride, n * ch)
        o = o[(slice(None), slice(None), *(slice(0, k) for k in plan.kernel))]
        return o.reshape(n, ch, *plan.kernel).sum(0).unsqueeze(1)
    xp = pad_input(x, plan.pads)  # exactly (o - 1) * s + k long per axis
    if method == "taps":
        red = (0, *range(2, 2 + dims))
        out = grad_out.new_empty(ch, *plan.kernel)
        for tap in itertools.product(*(range(k) for k in plan.kernel)):
            view = xp[(slice(None), slice(None), *(slice(t, t + (o - 1) * s + 1, s) for t, o, s in
                                                   zip(tap, plan.out_size, plan.stride)))]
            out[(slice(None), *tap)] = (view * grad_out).sum(red)
        return out.unsqueeze(1)
    raise ValueError(f"invalid method={method!r}: expected one of {WEIGHT_GRAD_METHODS}")


class DepthwiseConvFunction(torch.autograd.Function):
    """y = depthwise conv(x, weight, bias) with the cropped forward and the per-shape backward above, plus a `jvp`
    for forward-mode AD. Old-style (forward takes ctx): a `setup_context` Function binds its arguments through
    inspect.signature on every call (+40 us per layer measured); torch.func transforms get the plain conv
    instead (`geometry_applies`)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, ...], padding: tuple[int, ...]) -> torch.Tensor:
        plan = cached_plan(tuple(x.shape[2:]), tuple(weight.shape[2:]), stride, padding)
        w = weight[plan.tap_slices()] if plan.cropped else weight
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.plan, ctx.padding, ctx.has_bias = plan, padding, bias is not None
        return dw_conv(conv_input(x, plan), w, bias, plan.stride, plan.conv_padding)

    @staticmethod
    def jvp(ctx: Any, x_t: torch.Tensor | None, w_t: torch.Tensor | None, b_t: torch.Tensor | None,
            *_: Any) -> torch.Tensor:
        """Forward-mode derivative: the conv is bilinear in (x, weight), so dy = conv(dx, w) + conv(x, dw) + db."""
        x, weight = ctx.saved_tensors
        conv, stride, padding, ch = CONV_FN[x.dim() - 2], ctx.plan.stride, ctx.padding, x.shape[1]
        if x_t is None and w_t is None:  # a bias tangent only
            return conv(x, torch.zeros_like(weight), b_t, stride, padding, 1, ch)
        out = conv(x_t, weight, b_t, stride, padding, 1, ch) if x_t is not None else None
        if w_t is not None:
            t = conv(x, w_t, b_t if out is None else None, stride, padding, 1, ch)
            out = t if out is None else out + t
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        plan: DepthwisePlan = ctx.plan
        w = weight[plan.tap_slices()] if plan.cropped else weight
        last = is_channels_last(x)
        if last and not grad_out.is_contiguous(memory_format=LAST_FORMAT[x.dim() - 2]):
            grad_out = grad_out.contiguous(memory_format=LAST_FORMAT[x.dim() - 2])  # the layout the rule assumes
        gx = gw = gb = None
        need_x, need_w = ctx.needs_input_grad[:2]
        wm, im = weight_grad_method(plan, last), input_grad_method(plan, last)
        if need_x and need_w and wm == im == "aten":
            gx, gw_live = aten_grads(grad_out, x, w, plan, True, True)  # one ATen call for both
        else:
            gx = input_grad(grad_out, x, w, plan, im) if need_x else None
            gw_live = weight_grad(grad_out, x, w, plan, wm) if need_w else None
        if need_w:
            if plan.cropped:
                gw = weight.new_zeros(weight.shape)
                gw[plan.tap_slices()] = gw_live
            else:
                gw = gw_live
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum((0, *range(2, grad_out.dim())))
        return gx, gw, gb, None, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
                   padding: Sequence[int]) -> torch.Tensor:
    """Depthwise conv (dilation 1, zero `padding` per axis) of a batched (N, C, *S) `x` through
    `DepthwiseConvFunction`; `weight` is (C, 1, *kernel)."""
    dims = x.dim() - 2
    if dims not in CONV_FN or weight.shape[:2] != (x.shape[1], 1) or weight.dim() != x.dim():
        raise ValueError(f"invalid depthwise shapes: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return DepthwiseConvFunction.apply(x, weight, bias, tuple(stride), tuple(padding))


# -- the modules -----------------------------------------------------------------------------------------------
def is_depthwise(conv: nn.Module) -> bool:
    """An nn.ConvNd whose every channel is its own group (groups == in == out channels)."""
    return isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and \
        conv.groups == conv.in_channels == conv.out_channels


def exporting_or_transforming() -> bool:
    """True while torch.jit, torch.compile / torch.export or the ONNX exporter traces the model, inside a
    torch.func transform (vjp, vmap, jacrev, ...), or under a torch dispatch mode (FlopCounterMode, FakeTensorMode:
    analysis tools see the network's nominal ops, not our faster equivalents)."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
                or functorch_active() or dispatch_mode_active())


def functorch_active() -> bool:
    """Whether a torch.func transform is running (torch has no public query; True if the query is missing, so
    an unknown torch takes the plain conv)."""
    query = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if query is None else bool(query())


def kernel_geometry(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `conv(x)` is a batched depthwise conv with dilation 1 and numeric zero padding: what every kernel of
    ours computes."""
    return (x.dim() == weight.dim() and is_depthwise(conv) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and all(d == 1 for d in conv.dilation))


def geometry_applies(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether our eager kernels cover `conv(x)` at all: switch on, a CPU float input, `kernel_geometry`, and
    nothing tracing, compiling, exporting or transforming the call."""
    return (_state["enabled"] and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and kernel_geometry(conv, x, weight) and not exporting_or_transforming())


def fx_proxy(x: object) -> bool:
    """Whether `x` is a torch.fx symbolic-tracing proxy (its shape and flags are not values: such calls take the
    plain op before anything reads them)."""
    return isinstance(x, torch.fx.Proxy)


def dispatch_mode_active() -> bool:
    """Whether a TorchDispatchMode is on the stack (torch has no public query; True if the query is missing)."""
    query = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return True if query is None else query() > 0


def crop_pays_for_inference(plan: DepthwisePlan, channels_last: bool = False) -> bool:
    """Whether a call without autograd should run the cropped kernel instead of ATen's full one: one live tap
    (maps of one pixel: a per-channel multiply; ATen took 53 ms for 256 x 576 at 1x1 with a 5x5 kernel, the
    multiply 0.15 ms), or a strided NCHW kernel with dead taps (256 x 336 at 2x2, 5x5 stride 2: 29.6 vs 0.3 ms).
    Elsewhere (3x3 live taps of a 5x5 kernel on 2x2 maps) the two take the same time within the crop's own
    padding cost, so ATen's runs. Measured in docs/bench/depthwise.md (section "Inference on small maps")."""
    return plan.cropped and (math.prod(plan.kernel) == 1
                             or (not channels_last and any(s > 1 for s in plan.stride)))


class TrainingForward:
    """Mixin for nn.ConvNd subclasses whose training step takes another kernel: TorchScript compiles the plain
    convolution; eager calls go to the subclass's `eager_forward` (marked `@torch.jit.unused`)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.ConvNd's argument name)
        if torch.jit.is_scripting():
            return self._conv_forward(input, self.weight, self.bias)
        return self.eager_forward(input)


class DepthwiseForward(TrainingForward):
    """Mixin for the nn.ConvNd subclasses below: training steps go through `DepthwiseConvFunction` where it
    changes something (`own_backward`), calls without autograd through the cropped kernel where that pays
    (`crop_pays_for_inference`); everything else is nn.ConvNd's forward."""

    @torch.jit.unused
    def eager_forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        weight = self.weight  # read once: a parametrization (fake quantization) computes it on access
        if fx_proxy(input):
            return self._conv_forward(input, weight, self.bias)
        if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad):
            if torch.compiler.is_compiling() and kernel_geometry(self, input, weight) \
                    and compiled_dw_applies(input, weight, self.stride, self.padding):
                # a training step traced by torch.compile: the native kernels as graph operators (layers/compiled)
                return compiled_dw_conv(input, weight, self.bias, self.stride, self.padding)
            if geometry_applies(self, input, weight):
                if native_dw_applies(input, weight):
                    return NativeDepthwiseFn.apply(input, weight, self.bias, self.stride, self.padding)
                plan = self.plan_for(input)
                if plan is not None and own_backward(plan, is_channels_last(input)):
                    # shapes are the module's own: straight to the Function (its Python adds up over a net)
                    return DepthwiseConvFunction.apply(input, weight, self.bias, self.stride, self.padding)
        elif not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and input.dim() == weight.dim() \
                and min(input.shape[2:], default=0) < max(self.kernel_size):
            # without autograd only maps smaller than the kernel have dead taps; the cheap tests come first so
            # that inference on ordinary maps (and on small ones where cropping does not pay) costs nothing extra
            plan = self.plan_for(input)
            if plan is not None and crop_pays_for_inference(plan, is_channels_last(input)) \
                    and geometry_applies(self, input, weight):
                return dw_conv(conv_input(input, plan), weight[plan.tap_slices()], self.bias, plan.stride,
                               plan.conv_padding)
        return self._conv_forward(input, weight, self.bias)

    def plan_for(self, input: torch.Tensor) -> DepthwisePlan | None:  # noqa: A002
        """The cached live-tap plan for this input's spatial size; None where none applies (string padding, an
        input too small for the kernel: nn.ConvNd then raises its usual error)."""
        if isinstance(self.padding, str):
            return None
        try:
            return cached_plan(tuple(input.shape[2:]), self.kernel_size, self.stride, self.padding)
        except ValueError:
            return None


class DepthwiseConv1d(DepthwiseForward, nn.Conv1d):
    """nn.Conv1d whose depthwise training step uses `DepthwiseConvFunction` (see the module docstring)."""


class DepthwiseConv2d(DepthwiseForward, nn.Conv2d):
    """nn.Conv2d whose depthwise training step uses `DepthwiseConvFunction` (see the module docstring)."""


class DepthwiseConv3d(DepthwiseForward, nn.Conv3d):
    """nn.Conv3d whose depthwise training step uses `DepthwiseConvFunction` (see the module docstring)."""


DEPTHWISE_CONV = {1: DepthwiseConv1d, 2: DepthwiseConv2d, 3: DepthwiseConv3d}
