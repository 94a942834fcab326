"""Memory-lean training: recompute cheap elementwise results in backward instead of storing them.

What autograd keeps for one `ConvNormAct` (conv -> BN -> act) in plain PyTorch: the conv output (BN needs it)
and the BN output (the activation needs it), and the activation output (the next conv needs it): three
full-size tensors per layer. An MBConv block with SE also keeps the SE product x * g (the project conv's input).

- `BNActFn` / `BatchNormAct`: BN (batch statistics) + activation in one autograd node that saves only the BN
  input and the per-channel mean / inv-std; backward recomputes the BN output with one multiply-add and calls
  the native activation and BN backward kernels. The BN output is never stored, and the activation runs in
  place (one full tensor less to allocate and keep per layer).
- `GatedConvFn` / `GatedConv`: the SE gate multiply fused into the following 1x1 conv: y = conv(x * g) saves x
  and the (N, C, 1, ...) gate g, and recomputes x * g in backward. The SE product is never stored.
- `SiLUFn` / `MemoryEfficientSiLU`: SiLU that keeps only its input and recomputes the sigmoid in backward (native
  `F.silu` already does; this matters for composed x * sigmoid(x) swish, which stores both).
- `memory_efficient(model)` swaps these into any network built from the layer classes, in place, keeping every
  parameter and buffer name (state dicts and checkpoints are unchanged); `checkpoint_stages(model)` adds
  per-stage activation checkpointing (recompute each stage in backward; BN running statistics are updated once).

Gradients equal the plain model's up to float rounding (the recomputed BN output can differ in the last bit);
the forward outputs and BN running statistics are bitwise equal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .conv import ConvNormAct
from .se import SqueezeExcite

_aten = torch.ops.aten


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


class BatchNormAct(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any rank) followed by an activation, through `BNActFn` in training. Same parameter and buffer
    names as the BatchNorm it replaces; the activation module is kept (unregistered) as `act_module`."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, act: nn.Module) -> None:
        kind = _act_kind(act)
        if kind is None or not bn.affine:
            raise ValueError(f"BatchNormAct supports affine BN with {[k.__name__ for k in ACTS]}; got "
                             f"{type(act).__name__}, affine={bn.affine}")
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device, dtype=bn.weight.dtype)
        # the same Parameter and buffer objects: an optimizer built before the swap keeps working
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(self, name, getattr(bn, name))
        self.train(bn.training)
        self.kind = kind
        self.__dict__["act_module"] = act  # not a child: keeps the state-dict keys of the replaced pair

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or not self.track_running_stats
        if not batch_stats or not torch.is_grad_enabled():
            return self.act_module(super().forward(x))
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        rm = self.running_mean if self.track_running_stats and self.training else None
        rv = self.running_var if self.track_running_stats and self.training else None
        return BNActFn.apply(x, self.weight, self.bias, rm, rv, momentum, self.eps, self.kind)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.kind.__name__}"


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


class DeferredSE(SqueezeExcite):
    """A SqueezeExcite whose multiply is done by the following `GatedConv`: forward returns its input unchanged;
    `gate_values(x)` gives the gate. Same parameter names as the SqueezeExcite it replaces."""

    def __init__(self, se: SqueezeExcite) -> None:
        nn.Module.__init__(self)
        self.dims = se.dims
        self.conv_reduce, self.act, self.conv_expand, self.gate = se.conv_reduce, se.act, se.conv_expand, se.gate
        self.train(se.training)

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, 2 + self.dims)), keepdim=True)
        return self.gate(self.conv_expand(self.act(self.conv_reduce(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _ConvMixin:
    """Shared by the GatedConv classes: conv(x * se.gate_values(x)) through `GatedConvFn` when training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.__dict__["se_ref"].gate_values(x)
        if not torch.is_grad_enabled():
            return self._conv_forward(x * g, self.weight, self.bias)
        return GatedConvFn.apply(x, g, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class GatedConv1d(_ConvMixin, nn.Conv1d):
    pass


class GatedConv2d(_ConvMixin, nn.Conv2d):
    pass


class GatedConv3d(_ConvMixin, nn.Conv3d):
    pass


_GATED = {nn.Conv1d: GatedConv1d, nn.Conv2d: GatedConv2d, nn.Conv3d: GatedConv3d}


def _conv_base(conv: nn.Module) -> type | None:
    """The nn.Conv1d/2d/3d a conv module is (a `PointwiseConv2d` is an nn.Conv2d), or None."""
    return next((c for c in type(conv).__mro__ if c in _GATED), None)


def _gated_conv(conv: nn.Module, se: DeferredSE) -> nn.Module:
    new = _GATED[_conv_base(conv)](conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                             device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight, new.bias = conv.weight, conv.bias  # the same Parameter objects (optimizer state stays valid)
    new.__dict__["se_ref"] = se  # not a child: the SE's parameters stay under `se.`
    return new


# -- the swap --------------------------------------------------------------------------------------------------
def memory_efficient(model: nn.Module, bn_act: bool = True, se_gate: bool = True, silu: bool = True) -> nn.Module:
    """Swap the memory-lean functions into `model`, in place; returns it. Parameter and buffer names (and the
    Parameter objects) are kept, so optimizers, state dicts and checkpoints are unaffected.

    - bn_act: every `ConvNormAct` with an affine BatchNorm and a ReLU/ReLU6/SiLU/Hardswish activation gets a
      `BatchNormAct` as `.bn` and Identity as `.act` (BN without activation already stores only its input);
    - se_gate: every block whose SE output feeds its `.project` 1x1 conv directly (SE after the depthwise conv,
      or after a FusedMBConv's expansion) gets a `DeferredSE` and a `GatedConv` project conv;
    - silu: the remaining `nn.SiLU` modules become `MemoryEfficientSiLU`.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"memory_efficient needs an nn.Module, got {type(model).__name__}")
    if se_gate:
        for block in list(model.modules()):
            se, proj = getattr(block, "se", None), getattr(block, "project", None)
            if not isinstance(se, SqueezeExcite) or isinstance(se, DeferredSE) or not isinstance(proj, ConvNormAct):
                continue
            steps = tuple(getattr(block, "steps", ()))
            feeds_project = "se" in steps and steps[steps.index("se") + 1:][:1] == ("project",)  # from the layout
            if not feeds_project or not isinstance(proj.pad, nn.Identity):
                continue
            if _conv_base(proj.conv) is None or isinstance(proj.conv, _ConvMixin):
                continue
            deferred = DeferredSE(se)
            block.se = deferred
            proj.conv = _gated_conv(proj.conv, deferred)
    if bn_act:
        for mod in list(model.modules()):
            if isinstance(mod, ConvNormAct) and type(mod.bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) \
                    and mod.bn.affine and _act_kind(mod.act) is not None:
                mod.bn = BatchNormAct(mod.bn, mod.act)
                mod.act = nn.Identity()
    if silu:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.SiLU:
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
