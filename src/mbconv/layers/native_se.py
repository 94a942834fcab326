"""Squeeze-and-Excitation in native kernels (`se.c`, built with the other kernels by layers/native.py): the training
step of a `SqueezeExcite` as one call forward and one backward, on maps with their channels last.

Why: `SqueezeExciteFn` (layers/se.py) already makes the SE one autograd node, but its forward and backward are
still about twenty ATen calls, most on (N, C) values, where each call's fixed cost (10-60 us on this project's
2-core machine) is the whole cost; on the tour model the SE was about a fifth of the training step. The kernels
do the same arithmetic per sample: the mean, the MLP on that sample's channels, the gated output; in backward the
gate's gradient sum(gy * x), the MLP's gradients, gx = gy * g + d(mean) / pixels.

Where: float32 CPU maps in the kernels' "rows" layout (`bn_act_layout`: channels-last 2-D / 3-D maps, the
channels-last 1-D layout of layers/channels_last_1d.py, one-pixel maps), activation and gate among
`NATIVE_SE_ACTS`, float32 CPU weights. Anything else (contiguous N, C, H, W maps, float64, another activation)
stays on `SqueezeExciteFn`. Results equal PyTorch's up to float rounding (other summation orders; map sums in
double over runs of float).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .native import bn_act_layout, native_enabled, native_se_on, require_native_library, use_native_se

__all__ = ["NATIVE_SE_ACTS", "NativeSqueezeExciteFn", "native_se_applies", "se_backward", "se_forward",
           "use_native_se"]

# activation / gate module type -> se.c's code
NATIVE_SE_ACTS: dict[type, int] = {nn.SiLU: 0, nn.ReLU: 1, nn.Sigmoid: 2, nn.Hardsigmoid: 3}


def _param_ok(t: torch.Tensor | None, numel: int) -> bool:
    return t is not None and t.dtype is torch.float32 and t.is_cpu and t.is_contiguous() and t.numel() == numel


def native_se_applies(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                      b2: torch.Tensor | None, acts: tuple[type, type]) -> bool:
    """Whether `NativeSqueezeExciteFn` should compute the SE of `x` with these reduce / expand weights (R, C, 1...)
    and (C, R, 1...), biases and (activation, gate) types: `x` float32 in the rows layout, every weight and bias a
    contiguous float32 CPU tensor of the right size, both activations known, the kernels switched on
    (`use_native_se`, `use_native`) and built. Measured faster than `SqueezeExciteFn` on every SE layer of the tour
    model and B0, one-pixel maps included (`benchmarks.se`)."""
    if not native_se_on() or x.dtype is not torch.float32 or acts[0] not in NATIVE_SE_ACTS \
            or acts[1] not in NATIVE_SE_ACTS:
        return False
    c, r = x.shape[1], w1.shape[0]
    return (x.shape[0] > 0 and bn_act_layout(x) == "rows" and _param_ok(w1, r * c) and _param_ok(w2, r * c)
            and _param_ok(b1, r) and _param_ok(b2, c) and native_enabled())


def _lib(x: torch.Tensor, fn: str) -> Any:
    if x.dtype != torch.float32 or bn_act_layout(x) != "rows":
        raise ValueError(f"{fn}: input must be a float32 CPU map with its channels last (channels_last, the "
                         f"channels-last 1-D layout or one pixel), got {x.dtype} {tuple(x.shape)} on {x.device}")
    return require_native_library(fn)


def _checked_weights(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                     fn: str) -> int:
    """The squeeze width R, after checking that the weights fit `x`'s C channels (one line naming the argument)."""
    c = x.shape[1]
    r = w1.shape[0] if isinstance(w1, torch.Tensor) and w1.dim() else 0
    for name, t, numel in (("w1", w1, r * c), ("b1", b1, r), ("w2", w2, r * c), ("b2", b2, c)):
        if not isinstance(t, torch.Tensor) or not _param_ok(t, numel) or r < 1:
            got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else repr(t)
            raise ValueError(f"{fn}: {name} must be a contiguous float32 CPU tensor of {numel} values for {c} "
                             f"channels squeezed to {r}, got {got}")
    if w2.shape[0] != c:
        raise ValueError(f"{fn}: w2 must have {c} rows (one per channel), got {tuple(w2.shape)}")
    return r


def _codes(acts: tuple[type, type], fn: str) -> tuple[int, int]:
    for a in acts:
        if a not in NATIVE_SE_ACTS:
            raise ValueError(f"{fn}: unknown activation {a.__name__}: expected one of "
                             f"{', '.join(t.__name__ for t in NATIVE_SE_ACTS)}")
    return NATIVE_SE_ACTS[acts[0]], NATIVE_SE_ACTS[acts[1]]


def se_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
               acts: tuple[type, type]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(x * gate(w2 act(w1 mean(x) + b1) + b2), the (N, C) / (N, R) values `se_backward` takes: mean, hidden
    pre-activation, hidden, gate pre-activation, gate)."""
    lib = _lib(x, "se_forward")
    r = _checked_weights(x, w1, b1, w2, b2, "se_forward")
    act, gate = _codes(acts, "se_forward")
    return _se_kernel_forward(lib, act, gate, x, w1, b1, w2, b2, r, torch.get_num_threads())


def _se_kernel_forward(lib: Any, act: int, gate: int, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                      w2: torch.Tensor, b2: torch.Tensor, reduced: int, threads: int
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`se_forward`'s kernel call, its arguments checked: `act` and `gate` are values of NATIVE_SE_ACTS,
    `reduced` the squeeze width."""
    n, c = x.shape[:2]
    y = torch.empty_like(x)
    s, z, g = (torch.empty(n, c) for _ in range(3))
    h, a = torch.empty(n, reduced), torch.empty(n, reduced)
    err = lib.mbconv_se_forward(act, gate, x.data_ptr(), y.data_ptr(), n, math.prod(x.shape[2:]), c, reduced,
                                w1.data_ptr(), b1.data_ptr(), w2.data_ptr(), b2.data_ptr(), s.data_ptr(),
                                h.data_ptr(), a.data_ptr(), z.data_ptr(), g.data_ptr(), threads)
    if err:
        raise MemoryError(f"se_forward: out of memory for the scratch of {c} channels")
    return y, (s, h, a, z, g)


def se_backward(gy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor, acts: tuple[type, type], saved: tuple[torch.Tensor, ...],
                needs: tuple[bool, ...] = (True,) * 5) -> tuple[torch.Tensor | None, ...]:
    """Gradients (x, w1, b1, w2, b2) of `se_forward`'s output from the output gradient `gy` and its saved
    values; `needs` says which are wanted (None for the others; x's is always computed)."""
    lib = _lib(x, "se_backward")
    r = _checked_weights(x, w1, b1, w2, b2, "se_backward")
    act, gate = _codes(acts, "se_backward")
    if gy.shape != x.shape:
        raise ValueError(f"se_backward: gradient of shape {tuple(gy.shape)} for an input of shape {tuple(x.shape)}")
    if gy.dtype != torch.float32 or gy.stride() != x.stride():  # e.g. an expanded or NCHW gradient
        gy = torch.empty_like(x).copy_(gy)
    return _se_kernel_backward(lib, act, gate, gy, x, w1, b1, w2, b2, r, saved, needs, torch.get_num_threads())


def _se_kernel_backward(lib: Any, act: int, gate: int, gy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor,
                       b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, reduced: int,
                       saved: tuple[torch.Tensor, ...], needs: tuple[bool, ...], threads: int
                       ) -> tuple[torch.Tensor | None, ...]:
    """`se_backward`'s kernel call, its arguments checked (`gy` already in x's layout)."""
    n, c = x.shape[:2]
    gx = torch.empty_like(x)
    gw1, gb1, gw2, gb2 = (torch.empty_like(t) if need else None for t, need in zip((w1, b1, w2, b2), needs[1:]))
    ptrs = [None if t is None else t.data_ptr() for t in (gw1, gb1, gw2, gb2)]
    err = lib.mbconv_se_backward(act, gate, gy.data_ptr(), x.data_ptr(), gx.data_ptr(), n, math.prod(x.shape[2:]),
                                 c, reduced, w1.data_ptr(), w2.data_ptr(), *(t.data_ptr() for t in saved), *ptrs,
                                 threads)
    if err:
        raise MemoryError(f"se_backward: out of memory for the scratch of {c} channels")
    return gx, gw1, gb1, gw2, gb2


class NativeSqueezeExciteFn(torch.autograd.Function):
    """x * gate(W2 act(W1 mean(x) + b1) + b2) through the native kernels, for inputs `native_se_applies` to: one
    autograd node that saves x, the weights and the (N, C) / (N, R) values of the forward. Differentiable once (a
    double backward raises)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                acts: tuple[type, type]) -> torch.Tensor:
        y, saved = se_forward(x, w1, b1, w2, b2, acts)
        ctx.save_for_backward(x, w1, b1, w2, b2, *saved)
        ctx.acts = acts
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        x, w1, b1, w2, b2, *saved = ctx.saved_tensors
        grads = se_backward(gy, x, w1, b1, w2, b2, ctx.acts, tuple(saved), tuple(ctx.needs_input_grad[:5]))
        return (*grads, None)
