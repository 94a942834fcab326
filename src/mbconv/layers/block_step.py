"""An inverted-residual block's training step as one autograd node: [1x1 expand -> BN -> act] -> depthwise -> BN
-> act -> [SE] -> 1x1 project -> BN [-> act], on float32 CPU maps with their channels last, its forward and its
backward each one call into the native library (block_step.c), which runs the block's kernels (bn_act.c, dw_conv.c,
se.c) and its matrix products (the BLAS sgemm torch.mm calls: MKL's in PyTorch's x86 wheels) in a straight line.

Why: on the small maps of a training step the block's module path costs more in Python than in arithmetic. A
block there is about a dozen module calls, each with its routing checks, and five autograd Functions whose
wrappers check and convert their arguments again; measured on the tour model at batch 64, its sixteen blocks took
44 ms forward + backward through the modules and 30 ms with the same kernels called in a straight line from Python
(tenth session). Called one by one from Python, those kernels and products still cost about 0.5 ms per block at
batch 2 in wrappers, allocations and ctypes calls; in C the tour step went from x2.0 to x2.3 timm's (twelfth
session; docs/bench/depthwise.md). The layers' shapes are checked once per block (`block_step_parts`), the
depthwise geometry and the C side's sizes cached per shape.

What it computes is what the lean module path computes, layer for layer: the same kernels, products and running
statistics updates (the caller passes each BN's running statistics and momentum, its batch counter advanced, as
`bn_step_args` gives them); outputs and gradients equal up to float rounding (the project BN always takes the
native kernel, which the module path leaves to ATen below 2^14 elements). The residual and drop path stay with the
caller (`Block.forward`'s), so their random draws are the module path's. Differentiable once.

Where: `block_step_applies` - a training step (the caller checks autograd, tracing and the like: memory.py's
`lean_applies`), native kernels switched on (`use_native`, `use_native_block`, and the switches of the parts it
runs: `use_native_depthwise`, `use_native_se`, `use_fast_backward`) with the BLAS sgemm found
(`native_sgemm_found`), a 4-D float32 input in the kernels' rows layout, and a block of exactly these parts:
`ConvNormAct`s with plain 1x1 / depthwise convs (no bias, numeric padding, dilation 1, no pad module), affine
training-mode BatchNorms and activations the kernels know, an SE of `NATIVE_SE_ACTS` after the depthwise conv,
nothing hooked or parametrized. Subclasses count only when they declare `block_step_safe = True` (same function,
another path: memory.py's lean classes).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .conv import ConvNormAct, hooked
from .depthwise import DepthwiseConv2d, cached_plan, fast_backward_enabled
from .native import (
    NATIVE_ACT_NAMES,
    NATIVE_ACTS,
    bn_act_layout,
    native_block_on,
    native_depthwise_on,
    native_library,
    native_se_on,
    native_sgemm_found,
)
from .native_depthwise import dw_geometry
from .native_se import NATIVE_SE_ACTS
from .pointwise import PointwiseConv2d
from .se import SqueezeExcite

__all__ = ["BlockParts", "BlockStepFn", "block_step", "block_step_applies", "block_step_parts", "bn_step_args"]

# conv classes that compute nn.Conv2d's function (the kernel choice aside); exact types: a parametrized conv
# has a class of its own
_CONVS = (nn.Conv2d, PointwiseConv2d, DepthwiseConv2d)
_STEPS = {("expand", "depthwise", "se", "project"), ("depthwise", "se", "project"), ("expand", "depthwise", "project"),
          ("depthwise", "project")}


def bn_step_args(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
    """(running mean, running var, momentum) for one training-mode call of `bn`, its batch counter advanced,
    exactly as `nn.BatchNorm`'s forward does (None, None when it keeps no running statistics)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    track = bn.training and bn.track_running_stats
    if track:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative average, as nn.BatchNorm
            momentum = 1.0 / float(bn.num_batches_tracked)
    rm, rv = (bn.running_mean, bn.running_var) if track else (None, None)
    return rm, rv, momentum


def _safe(module: nn.Module, base: type) -> bool:
    """`module` computes what `base`'s forward computes: the class itself, or a subclass that says so."""
    return type(module) is base or (isinstance(module, base) and getattr(type(module), "block_step_safe", False))


def _f32(*ts: torch.Tensor | None) -> bool:
    return all(t is not None and t.dtype is torch.float32 and t.is_cpu and t.is_contiguous() for t in ts)


def _conv_norm_act_parts(m: nn.Module, depthwise: bool) -> tuple | None:
    """(conv, conv weight, BN, BN weight, BN bias, kernel activation code) of a `ConvNormAct` the node computes, else
    None: exact classes throughout (a parametrized module, e.g. fake-quantized, has a class of its own, so these
    checks also exclude parametrizations), nothing hooked, float32 contiguous. Each part is read once: the caller
    passes these on (a module attribute costs a dictionary walk, and a block has a few dozen)."""
    if not _safe(m, ConvNormAct) or hooked(m) or type(m.pad) is not nn.Identity:
        return None
    conv, bn, act = m.conv, m.bn, m.act
    if type(conv) not in _CONVS or conv.bias is not None or hooked(conv) or isinstance(conv.padding, str) \
            or conv.padding_mode != "zeros" or conv.dilation != (1, 1):
        return None
    if depthwise:
        if not conv.groups == conv.in_channels == conv.out_channels:
            return None
    elif conv.groups != 1 or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0):
        return None
    if type(bn) is not nn.BatchNorm2d or not bn.affine or not bn.training or hooked(bn) \
            or type(act) not in NATIVE_ACT_NAMES or hooked(act):
        return None
    w, bw, bb = conv.weight, bn.weight, bn.bias
    if not _f32(w, bw, bb, bn.running_mean, bn.running_var):
        return None
    return conv, w, bn, bw, bb, NATIVE_ACTS[NATIVE_ACT_NAMES[type(act)]]


def _se_parts(se: nn.Module) -> tuple | None:
    """(reduce weight, reduce bias, expand weight, expand bias, activation code, gate code) of an SE the node
    computes, else None (as `_conv_norm_act_parts`)."""
    if not _safe(se, SqueezeExcite) or hooked(se) or se.inplace or se.dims != 2:
        return None
    r, e, act, gate = se.conv_reduce, se.conv_expand, se.act, se.gate
    if not (type(r) in _CONVS and type(e) in _CONVS and r.kernel_size == e.kernel_size == (1, 1)
            and r.groups == e.groups == 1 and type(act) in NATIVE_SE_ACTS and type(gate) in NATIVE_SE_ACTS
            and not (hooked(r) or hooked(e) or hooked(act) or hooked(gate))):
        return None
    ws = (r.weight, r.bias, e.weight, e.bias)
    return (*ws, NATIVE_SE_ACTS[type(act)], NATIVE_SE_ACTS[type(gate)]) if _f32(*ws) else None


def block_step_parts(block: nn.Module, x: torch.Tensor) -> tuple | None:
    """What `block_step` needs of `block` when `BlockStepFn` computes its layers (all but the residual) on `x` in
    this training step (see the module docstring), else None: per step expand / depthwise / SE / project its parts
    (None for a step the block does not have). The caller has checked that a lean Function may run at all
    (autograd on, no tracing)."""
    steps = block.steps
    if not (native_block_on() and native_depthwise_on() and fast_backward_enabled() and x.dim() == 4
            and x.dtype is torch.float32 and x.shape[0] > 0 and bn_act_layout(x) == "rows"
            and tuple(steps) in _STEPS and native_sgemm_found()) or ("se" in steps and not native_se_on()):
        return None  # a switch that takes a part off its native kernel takes the block off the node too
    if getattr(block, "se_position", "after_dw") != "after_dw" or getattr(block, "inplace", False) \
            or x.shape[0] * x.shape[2] * x.shape[3] >= 2**31:  # sgemm's sizes are 32-bit ints
        return None
    parts = {name: _se_parts(getattr(block, name)) if name == "se"
             else _conv_norm_act_parts(getattr(block, name), name == "depthwise") for name in steps}
    if any(v is None for v in parts.values()):
        return None
    return tuple(parts.get(name) for name in ("expand", "depthwise", "se", "project"))


def block_step_applies(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether `BlockStepFn` computes `block`'s layers on `x` in this training step (`block_step_parts`)."""
    return block_step_parts(block, x) is not None


@dataclass
class BlockParts:
    """What `BlockStepFn` needs besides the differentiable tensors: per BN (expand or None, depthwise, project) its
    kernel activation code, eps and (running mean, running var, momentum) from `bn_step_args`; the depthwise
    stride and padding; the SE's (activation, gate) codes or None."""

    acts: tuple[int | None, int, int]
    eps: tuple[float | None, float, float]
    stats: tuple[Any, Any, Any]
    stride: tuple[int, int]
    padding: tuple[int, int]
    se_acts: tuple[int, int] | None


def block_step(block: nn.Module, x: torch.Tensor, parts: tuple | None = None) -> torch.Tensor:
    """`block`'s layers on `x` (everything but the residual) through `BlockStepFn`, BN running statistics and batch
    counters updated as the modules would. `parts` is `block_step_parts(block, x)` (computed here when not given),
    which must not be None."""
    e, d, se, p = block_step_parts(block, x) if parts is None else parts
    conv = d[0]
    args = BlockParts(acts=(None if e is None else e[5], d[5], p[5]),
                      eps=(None if e is None else e[2].eps, d[2].eps, p[2].eps),
                      stats=(None if e is None else bn_step_args(e[2]), bn_step_args(d[2]), bn_step_args(p[2])),
                      stride=conv.stride, padding=conv.padding, se_acts=None if se is None else se[4:])
    return BlockStepFn.apply(args, x, *((None,) * 3 if e is None else (e[1], e[3], e[4])), d[1], d[3], d[4],
                             *((None,) * 4 if se is None else se[:4]), p[1], p[3], p[4])


# -- the C side (block_step.c), its sizes and pointers --------------------------------------------------------------
@functools.lru_cache(maxsize=512)
def _dims(dims: tuple[int, ...]) -> tuple[Any, int, int]:
    """(block_step.c's dims array, workspace floats, backward scratch floats) for a block's sizes (see
    block_step.c), cached: a training step meets the same few every step."""
    arr = (ctypes.c_long * len(dims))(*dims)
    lib = native_library()
    return arr, lib.mbconv_block_workspace(arr), lib.mbconv_block_scratch(arr)


def _check(err: int, x: torch.Tensor) -> None:
    """block_step.c's return code as a one-line error."""
    if err == 1:
        raise MemoryError(f"block step: out of memory for a kernel's scratch (input {tuple(x.shape)})")
    if err:
        raise RuntimeError("block step: the native library has no BLAS sgemm (native_sgemm_found)")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class BlockStepFn(torch.autograd.Function):
    """The block's layers as one autograd node (see the module docstring), forward and backward each one call into
    block_step.c. Inputs: `BlockParts`, x, then expand (conv weight, BN weight, BN bias; None without expansion),
    depthwise (the same three), SE (reduce weight and bias, expand weight and bias; None without SE), project (the
    same three)."""

    @staticmethod
    def forward(ctx: Any, parts: BlockParts, x: torch.Tensor, we: torch.Tensor | None, e_w: torch.Tensor | None,
                e_b: torch.Tensor | None, wd: torch.Tensor, d_w: torch.Tensor, d_b: torch.Tensor,
                r_w: torch.Tensor | None, r_b: torch.Tensor | None, x_w: torch.Tensor | None,
                x_b: torch.Tensor | None, wp: torch.Tensor, p_w: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
        n, c_in, h, w = x.shape
        c_mid, c_out = wd.shape[0], wp.shape[0]
        # the kernel cropped to its live taps where the map is smaller than it reaches (a 5x5 kernel on a 1x1 map
        # has one): the kernels then loop over and sum only those; the dead taps' gradient is zero
        plan = cached_plan((h, w), tuple(wd.shape[2:]), parts.stride, parts.padding)
        crop = plan.tap_slices() if plan.cropped and plan.symmetric else None
        wk, pad = (wd, parts.padding) if crop is None else (wd[crop].contiguous(), plan.conv_padding)
        out_shape, geom = dw_geometry((n, c_mid, h, w), tuple(wk.shape), parts.stride, pad)
        h2, w2 = out_shape[2:]
        acts, se_acts = parts.acts, parts.se_acts or (0, 0)
        key = (n, h, w, c_in, c_mid, int(we is not None), h2, w2, c_out, 0 if r_w is None else r_w.shape[0],
               acts[0] or 0, acts[1], acts[2], *se_acts)
        dims, ws_floats, _ = _dims(key)
        ws = torch.empty(ws_floats)
        out = torch.empty((n, c_out, h2, w2), memory_format=torch.channels_last)
        (erm, erv, emom), (drm, drv, dmom), (prm, prv, pmom) = (s or (None, None, 0.0) for s in parts.stats)
        ptrs = (ctypes.c_void_p * 22)(
            x.data_ptr(), _ptr(we), _ptr(e_w), _ptr(e_b), _ptr(erm), _ptr(erv), wk.data_ptr(), d_w.data_ptr(),
            d_b.data_ptr(), _ptr(drm), _ptr(drv), _ptr(r_w), _ptr(r_b), _ptr(x_w), _ptr(x_b), wp.data_ptr(),
            p_w.data_ptr(), p_b.data_ptr(), _ptr(prm), _ptr(prv), ws.data_ptr(), out.data_ptr())
        sc = (ctypes.c_float * 6)(parts.eps[0] or 0.0, parts.eps[1], parts.eps[2], emom, dmom, pmom)
        _check(native_library().mbconv_block_forward(dims, geom, ptrs, sc, torch.get_num_threads()), x)
        ctx.parts, ctx.key, ctx.geom, ctx.dw = parts, key, geom, (crop, wd.shape, wd.stride())
        # everything through save_for_backward (saved-tensor hooks, e.g. activation checkpointing, see them all)
        ctx.save_for_backward(x, ws, we, e_w, e_b, wk, d_w, d_b, r_w, r_b, x_w, x_b, wp, p_w, p_b)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        saved = ctx.saved_tensors
        x, ws, weights = saved[0], saved[1], saved[2:]
        dims, _, scratch_floats = _dims(ctx.key)
        if gy.dtype is not torch.float32 or not gy.is_contiguous(memory_format=torch.channels_last):
            gy = gy.to(torch.float32).contiguous(memory_format=torch.channels_last)  # e.g. an expanded gradient
        scratch = torch.empty(scratch_floats)
        gx = torch.empty_like(x)
        # each gradient in its parameter's strides (DDP copies one that differs into its bucket, and warns)
        grads = [None if t is None else torch.empty_like(t) for t in weights]
        ptrs = (ctypes.c_void_p * 29)(
            gy.data_ptr(), x.data_ptr(), ws.data_ptr(), scratch.data_ptr(),
            *(_ptr(t) for i, t in enumerate(weights) if i not in (7, 9)),  # the SE's biases: not read
            gx.data_ptr(), *(_ptr(t) for t in grads))
        _check(native_library().mbconv_block_backward(dims, ctx.geom, ptrs, torch.get_num_threads()), x)
        crop, full_shape, full_stride = ctx.dw  # the forward ran the kernel cropped where `crop` says
        if crop is not None:
            full = torch.empty_strided(full_shape, full_stride).zero_()
            full[crop] = grads[3]
            grads[3] = full
        return (None, gx, *grads)
