"""Memory-lean training: recompute cheap elementwise results in backward instead of storing them.

What autograd keeps for one `ConvNormAct` (conv -> BN -> act) in plain PyTorch: the conv output (BN needs it)
and the BN output (the activation needs it), and the activation output (the next conv needs it): three
full-size tensors per layer. An MBConv block with SE also keeps the SE product x * g (the project conv's input).

- `BNActFn`: BN (batch statistics) + activation in one autograd node that saves only the BN input and the
  per-channel mean / inv-std; backward recomputes the BN output with one multiply-add and calls the native
  activation and BN backward kernels. The BN output is never stored, and the activation runs in place (one full
  tensor less to allocate and keep per layer).
- `NativeBNActFn`: the same node through the fused C kernels of `layers/native.py` (statistics, apply, and a
  two-pass backward in native code; the BN output recomputed there too). `LeanConvNormAct` takes it first, on any
  map size where the kernels are built and faster (`native_applies`), with no activation as well (a project
  conv's BN); it is not subject to the size rule below, because it is faster than PyTorch's ops, not only leaner.
- `GatedConvFn`: the SE gate multiply fused into the following 1x1 conv: y = conv(x * g) saves x and the
  (N, C, 1, ...) gate g, and recomputes x * g in backward. The SE product is never stored.
- `LeanSqueezeExcite`: a SqueezeExcite whose training step is `SqueezeExciteFn` (layers/se.py), one autograd node
  with a written-out backward (faster per layer, not leaner: it saves what autograd saves), on any size.
- The block step (`layers/block_step.py`): on maps below `min_numel` a lean block runs all its layers as one
  autograd node (`BlockStepFn`, the native kernels and matrix products in a straight line): not leaner, faster,
  because on small maps the layers' Python cost more than their arithmetic. Blocks without SE become lean blocks
  for it (kind "block").
- `SiLUFn` / `MemoryEfficientSiLU`: SiLU that keeps only its input and recomputes the sigmoid in backward (native
  `F.silu` already does; this matters for composed x * sigmoid(x) swish, which stores both).
- `lean_layers(model)`, the `Trainer`'s default, applies the first two and the SE node with the model's structure
  untouched. Only classes change (`ConvNormAct` -> `LeanConvNormAct`, an MBConv-type block with SE before its
  project conv -> `LeanMBConv` / `LeanDepthwiseSeparable` / `LeanFusedMBConv`, `SqueezeExcite` ->
  `LeanSqueezeExcite`, a subclass with the same submodules), like `fast_pointwise`: `.bn`, `.act`, the SE's
  convs and `.project.conv` stay the plain modules, so BN folding, pruning surgery, quantization hooks and export
  see the ordinary network, and a replaced or hooked submodule simply takes the plain path.
- `memory_efficient(model)` is the explicit switch: `lean_layers` with every layer lean (`min_numel=0`) and the
  BN+activation / SE-gate kinds chosen separately, plus `MemoryEfficientSiLU` for the other `nn.SiLU` modules
  (a class-for-class swap too). It used to replace modules (`BatchNormAct`, `DeferredSE`, `GatedConv2d`), which
  broke `fuse_bn` and pruning surgery; now the structure, names and Parameter objects are kept and `.bn`, `.act`,
  `.se` and `.project.conv` stay the plain modules.
- `checkpoint_stages(model)` adds per-stage activation checkpointing (recompute each stage in backward; BN running
  statistics are updated once).

The size rule (`min_numel`): the Functions' saving is a full tensor per layer, their cost Python autograd
overhead and a recomputation. On small maps the step is short and memory is not the limit, so the overhead
shows (the tour model's step was about a fifth slower with every layer lean); on large maps (B0 at 224 px) the
cost is lost in the kernels and the saved tensors are what sets the peak. So a layer takes the lean Function only
when its input has at least `min_numel` elements (`LEAN_MIN_NUMEL` for `lean_layers`, 0 = always for
`memory_efficient`), and otherwise the plain ops - the same outputs, gradients and running statistics either way.
Eval mode, no-grad, autocast, tracing, compile, export and forward-mode AD always take the plain ops.

Gradients equal the plain model's up to float rounding (the recomputed BN output can differ in the last bit);
through `BNActFn` the forward outputs and BN running statistics are bitwise equal, through `NativeBNActFn` equal
up to float rounding (other summation order). The Functions are differentiable once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.utils.checkpoint import checkpoint

from .block_step import block_step, block_step_parts, bn_step_args
from .blocks import DepthwiseSeparable, FusedMBConv, MBConv
from .channels_last_1d import channels_last_1d_on, to_channels_last_1d
from .conv import ConvNormAct, hooked
from .depthwise import exporting_or_transforming, fx_proxy
from .native import NATIVE_ACT_NAMES, bn_act_backward, bn_act_forward, bn_act_pays, native_enabled
from .native_se import NativeSqueezeExciteFn, native_se_applies
from .se import SqueezeExcite, SqueezeExciteFn, fused_se_applies

__all__ = ["ACTS", "LEAN_BLOCK", "LEAN_KINDS", "LEAN_MIN_NUMEL", "LEAN_MODES", "NATIVE_ACT_NAMES", "BNActFn",
           "GatedConvFn", "LeanBlockForward", "LeanConvNormAct", "LeanDepthwiseSeparable", "LeanFusedMBConv",
           "LeanMBConv", "LeanSqueezeExcite", "MemoryEfficientSiLU", "NativeBNActFn", "SiLUFn", "checkpoint_stages",
           "lean_applies", "lean_layers", "memory_efficient", "native_applies"]

_aten = torch.ops.aten

# Smallest input (elements) that `lean_layers` sends through the lean Functions; measured on this project's
# training steps at one thread (docs/bench/depthwise.md): below it the Functions' Python overhead and
# recomputation cost time the memory saving does not repay; above it they cost nothing measurable.
LEAN_MIN_NUMEL = 2**20


# `TrainConfig.memory_lean` -> the `lean_layers` threshold: size rule, every layer, none (plain classes)
LEAN_MODES: dict[str, int | None] = {"auto": LEAN_MIN_NUMEL, "on": 0, "off": None}

# What `lean_layers` can make lean: BN + activation (`LeanConvNormAct`), SE gate + project conv (the lean blocks),
# the SE as one autograd node (`LeanSqueezeExcite`), MBConv-type blocks without SE (lean blocks for the block step)
LEAN_KINDS: tuple[str, ...] = ("bn_act", "se_gate", "se", "block")


def lean_applies(x: torch.Tensor, min_numel: int) -> bool:
    """Whether a lean Function should run on `x`: autograd recording, at least `min_numel` elements, and no
    autocast, tracing, compile, export, torch.func transform or forward-mode dual input (those see the plain ops)."""
    return (not fx_proxy(x) and torch.is_grad_enabled() and x.numel() >= min_numel
            and not torch.is_autocast_enabled(x.device.type) and not exporting_or_transforming()
            and forward_ad.unpack_dual(x).tangent is None)  # forward-mode AD: the Functions define no jvp


# -- activations: in-place forward from the pre-activation, backward from the pre-activation -------------------
def _silu_bwd(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _aten.silu_backward(g, x)


# Backward functions write the input gradient over the recomputed pre-activation `x` (elementwise, so aliasing
# is safe): one full-size allocation less per layer in backward.
_Fwd = Callable[[torch.Tensor], torch.Tensor]
_Bwd = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ACTS: dict[type, tuple[_Fwd, _Bwd]] = {
    nn.SiLU: (lambda y: F.silu(y, inplace=True), lambda g, x: _aten.silu_backward.grad_input(g, x, grad_input=x)),
    nn.ReLU: (lambda y: F.relu(y, inplace=True),
              lambda g, x: _aten.threshold_backward.grad_input(g, x, 0, grad_input=x)),
    nn.ReLU6: (lambda y: F.hardtanh(y, 0.0, 6.0, inplace=True),
               lambda g, x: _aten.hardtanh_backward.grad_input(g, x, 0.0, 6.0, grad_input=x)),
    nn.Hardswish: (lambda y: F.hardswish(y, inplace=True), lambda g, x: x.copy_(_aten.hardswish_backward(g, x))),
}


def _act_kind(act: nn.Module) -> type | None:
    """The ACTS key of an activation module (exact type: subclasses may change the function)."""
    return type(act) if type(act) in ACTS else None


# -- SiLU ----------------------------------------------------------------------------------------------------
class SiLUFn(torch.autograd.Function):
    """y = x * sigmoid(x); saves x only, recomputes sigmoid(x) in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.silu(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _silu_bwd(g, x)


class MemoryEfficientSiLU(nn.SiLU):
    """`nn.SiLU` through `SiLUFn` (same output, keeps only the input for backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SiLUFn.apply(x) if torch.is_grad_enabled() and x.requires_grad else F.silu(x)


# -- BN + activation -----------------------------------------------------------------------------------------
class BNActFn(torch.autograd.Function):
    """act(batch_norm(x)) in training mode; saves x, weight, bias and the batch mean / inv-std (the BN output is
    recomputed in backward). Updates the running statistics exactly like `F.batch_norm`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, momentum: float, eps: float, kind: type) -> torch.Tensor:
        y, mean, invstd = _aten.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        y = ACTS[kind][0](y)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps, ctx.kind = eps, kind
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = weight * invstd
        z = torch.addcmul((bias - mean * scale).reshape(shape), x, scale.reshape(shape))  # BN output, recomputed
        gz = ACTS[ctx.kind][1](gy, z)  # written over z
        del z
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gx, gw, gb = _aten.native_batch_norm_backward(gz, x, weight, None, None, mean, invstd, True, ctx.eps, mask)
        return gx, gw, gb, None, None, None, None, None


def bn_act_apply(bn: nn.modules.batchnorm._BatchNorm, kind: type, x: torch.Tensor) -> torch.Tensor:
    """act(bn(x)) with batch statistics through `BNActFn`, the running statistics and batch counter updated
    exactly as `nn.BatchNorm`'s forward does."""
    rm, rv, momentum = bn_step_args(bn)
    return BNActFn.apply(x, bn.weight, bn.bias, rm, rv, momentum, bn.eps, kind)


# -- BN + activation in the native kernels (layers/native.py; NATIVE_ACT_NAMES, the activations they take) --------


class NativeBNActFn(torch.autograd.Function):
    """act(batch_norm(x)) in training mode through the fused native kernels: one autograd node that saves x and
    the batch mean / inv-std (the BN output is recomputed in backward, never stored). Updates the running
    statistics like `F.batch_norm`. Differentiable once (a double backward raises)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, momentum: float, eps: float, act: str) -> torch.Tensor:
        y, mean, rstd = bn_act_forward(x, weight, bias, running_mean, running_var, momentum, eps, act)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.act = act
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        affine = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        gx, gw, gb = bn_act_backward(gy, x, weight, bias, mean, rstd, ctx.act, affine_grads=affine)
        return gx, gw, gb, None, None, None, None, None


def native_applies(x: torch.Tensor, bn: nn.Module, act: str) -> bool:
    """Whether `NativeBNActFn` should run act(bn(x)): where a lean Function may run at all (`lean_applies`), on a
    float32 CPU input the kernels take and are faster on (`bn_act_pays`), with float32 CPU parameters and
    statistics, more than one value per channel (else nn.BatchNorm's own error is the right answer), and the
    kernels switched on and built."""
    return (lean_applies(x, 0) and bn_act_pays(x, act) and x.numel() > x.shape[1]
            and all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous())
                    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
            and native_enabled())


def native_bn_act_apply(bn: nn.modules.batchnorm._BatchNorm, act: str, x: torch.Tensor) -> torch.Tensor:
    """act(bn(x)) with batch statistics through `NativeBNActFn`, running statistics and batch counter updated as
    `nn.BatchNorm` updates them."""
    rm, rv, momentum = bn_step_args(bn)
    return NativeBNActFn.apply(x, bn.weight, bn.bias, rm, rv, momentum, bn.eps, act)


# -- SE gate fused into the next 1x1 conv ------------------------------------------------------------------------
class GatedConvFn(torch.autograd.Function):
    """y = conv(x * g) for a gate g of shape (N, C, 1, ...): saves x and g, recomputes x * g in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple, padding: tuple, dilation: tuple, groups: int) -> torch.Tensor:
        xg = x * g
        y = _aten.convolution(xg, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)
        ctx.save_for_backward(x, g, weight)
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else list(bias.shape))
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        x, g, weight = ctx.saved_tensors
        stride, padding, dilation, groups, bias_sizes = ctx.conf
        xg = x * g
        need_in = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        mask = [need_in, ctx.needs_input_grad[2], bias_sizes is not None and ctx.needs_input_grad[3]]
        gxg, gw, gb = _aten.convolution_backward(gy, xg, weight, bias_sizes, stride, padding, dilation, False,
                                                 [0] * len(stride), groups, mask)
        gx = gg = None
        if ctx.needs_input_grad[1]:  # d/dg of sum(gxg * x * g): reuse the x * g buffer for the product
            gg = torch.mul(gxg, x, out=xg).sum(dim=tuple(range(2, x.ndim)), keepdim=True)
        del xg
        if ctx.needs_input_grad[0]:
            gx = gxg.mul_(g)
        return gx, gg, gw, gb, None, None, None, None


def gate_values(se: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    """The (N, C, 1, ...) gate a SqueezeExcite multiplies `x` by (its forward without the multiply)."""
    return se.excite(x.mean(dim=tuple(range(2, 2 + se.dims)), keepdim=True))


class LeanSqueezeExcite(SqueezeExcite):
    """A `SqueezeExcite` whose training step is one autograd node (`SqueezeExciteFn`, layers/se.py: two full-size
    passes in backward instead of five, one node instead of about ten) on inputs where a lean Function may run
    (`lean_applies`, any size: it is faster, not leaner); everything else, and a hooked SE, SqueezeExcite's
    forward. Only the class differs (`lean_layers` swaps it in place)."""

    block_step_safe = True  # computes SqueezeExcite's function (layers/block_step.py may run it in a block's node)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused_forward(x) if self.fused_applies(x) else super().forward(x)

    def fused_applies(self, x: torch.Tensor) -> bool:
        """Training mode, no in-place inference multiply, no hooks on the SE, `lean_applies`, and an SE the Function
        computes exactly (`fused_se_applies`: plain convs, known activation and gate, no hooks inside)."""
        return (self.training and not self.inplace and not hooked(self) and lean_applies(x, 0)
                and fused_se_applies(self))

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`NativeSqueezeExciteFn` where the native kernels take `x` (`native_se_applies`), else `SqueezeExciteFn`."""
        r, e, acts = self.conv_reduce, self.conv_expand, (type(self.act), type(self.gate))
        w1, b1, w2, b2 = r.weight, r.bias, e.weight, e.bias
        fn = NativeSqueezeExciteFn if native_se_applies(x, w1, b1, w2, b2, acts) else SqueezeExciteFn
        return fn.apply(x, w1, b1, w2, b2, acts)


def gated_conv_apply(conv: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """conv(x * g) through `GatedConvFn` (x * g recomputed in backward, not stored)."""
    return GatedConvFn.apply(x, g, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


# -- the class swap: what the Trainer applies, and memory_efficient with every layer lean -----------------------
def check_min_numel(min_numel: Any) -> int:
    """`min_numel` if it is an integer >= 0, else a ValueError naming it."""
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ValueError(f"invalid min_numel={min_numel!r}: must be an integer >= 0")
    return min_numel


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _lean_bn_kind(bn: nn.Module, act: nn.Module) -> type | None:
    """The activation's type when `act(bn(.))` can run as one Function: a plain affine BatchNorm using batch
    statistics and an activation of ACTS (`BNActFn`) or NATIVE_ACT_NAMES (`NativeBNActFn`, which also takes
    Identity), neither hooked (quantizer or recording hooks must see their call); else None."""
    if type(bn) not in _PLAIN_BN or not bn.affine or not (bn.training or not bn.track_running_stats):
        return None
    kind = type(act) if type(act) in ACTS or type(act) in NATIVE_ACT_NAMES else None
    return None if kind is None or hooked(bn) or hooked(act) else kind


class LeanConvNormAct(ConvNormAct):
    """A `ConvNormAct` whose BN + activation, in a training step, run as one autograd node that recomputes the BN
    output in backward instead of storing it: `NativeBNActFn` (the fused native kernels, layers/native.py) on any
    input they take, else `BNActFn` on an input of at least `min_numel` elements. Everything else - small maps
    without the native kernels, eval mode, frozen (eval-mode) BN, no grad, autocast, export, compile, TorchScript,
    a replaced or hooked `.bn` / `.act` - is ConvNormAct's forward. Only the class differs (`lean_layers` swaps it
    in place)."""

    min_numel = LEAN_MIN_NUMEL  # no annotation: TorchScript cannot read a postponed one
    block_step_safe = True  # computes ConvNormAct's function (layers/block_step.py may run it in a block's node)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pad(x))
        if torch.jit.is_scripting():
            return self.act(self.bn(y))
        return self.norm_act(y)

    @torch.jit.unused
    def norm_act(self, y: torch.Tensor) -> torch.Tensor:
        """act(bn(y)): through `NativeBNActFn` where it applies (`native_applies`: no `min_numel`, the fused
        kernels beat PyTorch's ops on small maps too), else through `BNActFn` on inputs of at least `min_numel`."""
        kind = _lean_bn_kind(self.bn, self.act)
        if kind is not None and kind in NATIVE_ACT_NAMES:
            if y.dim() == 3 and channels_last_1d_on() and lean_applies(y, 0) and native_enabled():
                # 1-D maps go channels-last (one copy where the conv gave them contiguous): the layers after this
                # one read them without transposing (layers/channels_last_1d.py)
                y = to_channels_last_1d(y)
            if native_applies(y, self.bn, NATIVE_ACT_NAMES[kind]):
                return native_bn_act_apply(self.bn, NATIVE_ACT_NAMES[kind], y)
        if kind is None or kind not in ACTS or not lean_applies(y, self.min_numel):
            return self.act(self.bn(y))
        return bn_act_apply(self.bn, kind, y)


def _fusable_project(proj: nn.Module) -> nn.Module | None:
    """The conv of a block's `project` step when conv(x * g) can run as `GatedConvFn`, else None."""
    if not isinstance(proj, ConvNormAct) or not isinstance(proj.pad, nn.Identity) or hooked(proj):
        return None
    conv = proj.conv
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or hooked(conv) or isinstance(conv.padding, str) \
            or conv.padding_mode != "zeros":
        return None
    return conv


class LeanBlockForward:
    """Mixin for the block classes: in a training step, on maps whose expanded size is below `min_numel` elements,
    the whole block as one autograd node where it applies (`block_step_parts`, layers/block_step.py); on larger maps
    an SE that feeds the project conv directly is fused into it (`GatedConvFn`: the SE product x * g is recomputed in
    backward, not stored); otherwise, and always for a replaced or hooked SE / project, `Block.forward`."""

    min_numel = LEAN_MIN_NUMEL  # no annotation: TorchScript cannot read a postponed one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.steps
        if not self.training or self.inplace or torch.jit.is_scripting():
            return super().forward(x)
        parts = block_step_parts(self, x) if "depthwise" in steps and lean_applies(x, 0) \
            and x.numel() // x.shape[1] * self.depthwise.conv.in_channels < self.min_numel else None
        if parts is not None:
            # maps below the size where the gated project below applies: the whole block as one node
            y = block_step(self, x, parts)
            return self.drop_path(y) + x if self.has_skip else y
        if "se" not in steps:
            return super().forward(x)
        shortcut, i = x, 0
        while i < len(steps):
            fused = self._gated_project(x) if steps[i] == "se" and steps[i + 1:i + 2] == ("project",) else None
            if fused is None:
                x = getattr(self, steps[i])(x)
                i += 1
            else:
                x, i = fused, i + 2
        if self.has_skip:  # Block.forward's residual (training never adds in place)
            x = self.drop_path(x) + shortcut
        return x

    def _gated_project(self, x: torch.Tensor) -> torch.Tensor | None:
        se, proj = self.se, self.project
        if type(se) not in (SqueezeExcite, LeanSqueezeExcite) or se.inplace or hooked(se) \
                or not lean_applies(x, self.min_numel):
            return None
        conv = _fusable_project(proj)
        if conv is None:
            return None
        y = gated_conv_apply(conv, x, gate_values(se, x))
        return proj.norm_act(y) if isinstance(proj, LeanConvNormAct) else proj.act(proj.bn(y))


class LeanMBConv(LeanBlockForward, MBConv):
    """`MBConv` as one autograd node on small maps, its SE product fused into the project conv on large ones (see
    `LeanBlockForward`)."""


class LeanDepthwiseSeparable(LeanBlockForward, DepthwiseSeparable):
    """`DepthwiseSeparable` as one autograd node on small maps, its SE product fused into the project conv on large
    ones."""


class LeanFusedMBConv(LeanBlockForward, FusedMBConv):
    """`FusedMBConv` with the SE product fused into the project conv on large maps."""


LEAN_BLOCK: dict[type, type] = {MBConv: LeanMBConv, DepthwiseSeparable: LeanDepthwiseSeparable,
                                FusedMBConv: LeanFusedMBConv}
_LEAN_TO_PLAIN = {**{v: k for k, v in LEAN_BLOCK.items()}, LeanConvNormAct: ConvNormAct,
                  LeanSqueezeExcite: SqueezeExcite}


def lean_layers(model: nn.Module, min_numel: int | None = LEAN_MIN_NUMEL,
                kinds: Sequence[str] = LEAN_KINDS) -> int:
    """Make `model`'s large-map training layers memory-lean, in place, by class only (see the module docstring);
    returns how many modules are lean. Every `ConvNormAct` with a plain affine BatchNorm and a ReLU / ReLU6 / SiLU
    / Hardswish (or no activation: those take only the native kernels) becomes a `LeanConvNormAct` (kind
    "bn_act"), every MBConv / DepthwiseSeparable / FusedMBConv block
    whose SE feeds its project conv a `LeanBlockForward` class (kind "se_gate"); each takes its Function on inputs
    of at least `min_numel` elements (0: always), and below that size the block step (layers/block_step.py), as
    does every MBConv / DepthwiseSeparable block without SE (kind "block"). Every `SqueezeExcite` becomes a
    `LeanSqueezeExcite` (kind "se", one autograd node on any size: a block's SE fused into its project conv on
    large maps takes that path).
    `kinds` chooses which plain classes are swapped. Submodules, parameters (the same objects), buffers, names and
    hooks are unchanged. Again on a lean model it sets the new threshold; `min_numel=None` turns the classes back
    into the plain ones.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"lean_layers needs an nn.Module, got {type(model).__name__}")
    if min_numel is not None:
        check_min_numel(min_numel)
    if isinstance(kinds, str) or not set(kinds) <= set(LEAN_KINDS):
        raise ValueError(f"invalid kinds={kinds!r}: must be a sequence drawn from {LEAN_KINDS}")
    bn_act, se_gate, se_node, block = "bn_act" in kinds, "se_gate" in kinds, "se" in kinds, "block" in kinds
    n = 0
    for mod in model.modules():
        cls = type(mod)
        if min_numel is None:
            if cls in _LEAN_TO_PLAIN:
                mod.__class__ = _LEAN_TO_PLAIN[cls]
                mod.__dict__.pop("min_numel", None)
            continue
        if bn_act and cls is ConvNormAct and type(mod.bn) in _PLAIN_BN and mod.bn.affine \
                and (_act_kind(mod.act) is not None or type(mod.act) in NATIVE_ACT_NAMES):
            mod.__class__ = LeanConvNormAct
        elif se_gate and cls in LEAN_BLOCK and "se" in mod.steps and \
                tuple(mod.steps[mod.steps.index("se") + 1:][:1]) == ("project",):
            mod.__class__ = LEAN_BLOCK[cls]
        elif block and cls in (MBConv, DepthwiseSeparable) and "se" not in mod.steps:
            mod.__class__ = LEAN_BLOCK[cls]
        elif se_node and cls is SqueezeExcite:
            mod.__class__ = LeanSqueezeExcite
        if isinstance(mod, (LeanConvNormAct, LeanBlockForward)):
            mod.min_numel = min_numel
        n += isinstance(mod, (LeanConvNormAct, LeanBlockForward, LeanSqueezeExcite))
    return n


def memory_efficient(model: nn.Module, bn_act: bool = True, se_gate: bool = True, silu: bool = True,
                     min_numel: int = 0) -> nn.Module:
    """Make every layer of `model` memory-lean, in place; returns it. The class-only mechanism of `lean_layers`,
    so the structure, parameter and buffer names, Parameter objects and submodule types are kept (optimizers,
    state dicts, checkpoints, `fuse_bn`, pruning surgery, quantizer hooks and export are unaffected).

    - bn_act: every `ConvNormAct` with an affine BatchNorm and a ReLU/ReLU6/SiLU/Hardswish activation becomes a
      `LeanConvNormAct` (BN without activation already stores only its input);
    - se_gate: every block whose SE output feeds its `.project` conv directly (SE after the depthwise conv, or
      after a FusedMBConv's expansion) becomes a `LeanBlockForward` class;
    - silu: the other `nn.SiLU` modules become `MemoryEfficientSiLU` (a lean `ConvNormAct`'s `.act` stays the
      `nn.SiLU` its `BNActFn` recognises);
    - min_numel: the lean layers take their Function only on inputs of at least this many elements, the plain
      ops otherwise (0: always, the default).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"memory_efficient needs an nn.Module, got {type(model).__name__}")
    check_min_numel(min_numel)
    kinds = tuple(k for k, on in (("bn_act", bn_act), ("se_gate", se_gate)) if on)
    if kinds:
        lean_layers(model, min_numel, kinds=kinds)
    if silu:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.SiLU and not (name == "act" and isinstance(parent, LeanConvNormAct)):
                    setattr(parent, name, MemoryEfficientSiLU())
    return model


# -- activation checkpointing ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """During checkpoint recomputation: BN momentum 0 (running statistics untouched, batch counter restored)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, n) in zip(bns, saved):
            m.momentum = mom
            m.num_batches_tracked.copy_(n)


class CheckpointedSequential(nn.Sequential):
    """An nn.Sequential recomputed in backward (torch.utils.checkpoint, non-reentrant); same names as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        return checkpoint(super().forward, x, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), _frozen_bn_stats(self)))


def checkpoint_stages(model: nn.Module, stages: Sequence[int] | None = None) -> nn.Module:
    """Per-stage activation checkpointing on `model.stages[i]` (all stages by default), in place; returns the
    model. Stores only each stage's input during the forward; trades one extra forward of the stage for its
    activation memory."""
    seqs = getattr(model, "stages", None)
    if not isinstance(seqs, nn.Sequential):
        raise ValueError(f"checkpoint_stages needs a model with an nn.Sequential `.stages`; got "
                         f"{type(model).__name__}")
    idx = range(len(seqs)) if stages is None else stages
    for i in idx:
        if not isinstance(i, int) or not 0 <= i < len(seqs):
            raise ValueError(f"invalid stage index {i!r}: the model has {len(seqs)} stages")
        s = seqs[i]
        if type(s) is nn.Sequential:
            s.__class__ = CheckpointedSequential  # same modules and names; only forward changes
        elif not isinstance(s, CheckpointedSequential):
            raise ValueError(f"stage {i} is a {type(s).__name__}, not a plain nn.Sequential")
    return model
