"""Squeeze-and-Excitation for any dimensionality: global mean -> reduce conv -> act -> expand conv -> gate.

`SqueezeExciteFn` is the training step of a `SqueezeExcite` as one autograd node (memory.LeanSqueezeExcite, which
`lean_layers` swaps in, calls it). Autograd records the plain module as about ten nodes (mean, two convs, two
activations, views, multiply), and their backward makes full-size passes for the multiply's two gradients, for
the mean's gradient (expanded and divided) and for adding the two gradients of x. The Function's backward makes
two: the gate's gradient sum(gy * x) over the map, then gx = gy * g + d(squeeze) / pixels in one fused op; the
MLP's gradients in between are matrix products on (N, C) values, written out (an inner autograd graph, tried
first, cost more in the reentrant engine call than the fusion saved).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .conv import CONV, create_act, hooked

__all__ = ["SE_ACTS", "SqueezeExcite", "SqueezeExciteFn", "fused_se_applies"]


class SqueezeExcite(nn.Module):
    """Channel gating `x * gate(W2 act(W1 mean(x)))` (Hu et al. 2018).

    `rd_chs` is the squeeze width, computed by the caller (TF EfficientNet: block input * 0.25; MobileNetV3:
    expanded/4 rounded to 8). The gate module is `self.gate`, so analysis tools record gate values with a
    forward hook on it, on any network that uses this class.
    """

    def __init__(self, chs: int, rd_chs: int, dims: int = 2, act: str = "swish", gate: str = "sigmoid") -> None:
        super().__init__()
        if rd_chs < 1 or chs < 1:
            raise ValueError(f"invalid SE widths chs={chs}, rd_chs={rd_chs}: must be >= 1")
        self.dims = dims
        self.conv_reduce = CONV[dims](chs, rd_chs, 1, bias=True)
        self.act = create_act(act)
        self.conv_expand = CONV[dims](rd_chs, chs, 1, bias=True)
        self.gate = create_act(gate)
        self.inplace = False  # set by inference preparation: multiply the gated input in place (no autograd)

    def excite(self, s: torch.Tensor) -> torch.Tensor:
        """The gate for a squeezed (N, C, 1, ...) input: gate(conv_expand(act(conv_reduce(s))))."""
        return self.gate(self.conv_expand(self.act(self.conv_reduce(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, 2 + self.dims)), keepdim=True)
        g = self.excite(s)
        return x.mul_(g) if self.inplace else x * g


# activation / gate module type -> (forward, backward from (grad, input, output)) for `SqueezeExciteFn`
_aten = torch.ops.aten
SE_ACTS: dict[type, tuple[Callable[[torch.Tensor], torch.Tensor],
                          Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    nn.SiLU: (F.silu, lambda g, x, y: _aten.silu_backward(g, x)),
    nn.ReLU: (F.relu, lambda g, x, y: _aten.threshold_backward(g, y, 0)),
    nn.Sigmoid: (torch.sigmoid, lambda g, x, y: _aten.sigmoid_backward(g, y)),
    nn.Hardsigmoid: (F.hardsigmoid, lambda g, x, y: _aten.hardsigmoid_backward(g, x)),
}


def fused_se_applies(se: SqueezeExcite) -> bool:
    """Whether `SqueezeExciteFn` computes `se` exactly: its reduce / expand convs plain 1x1 convolutions with bias
    (a subclass that only changes the kernel choice, like `PointwiseConvNd`, counts; a parametrized or hooked one
    does not), its activation and gate of `SE_ACTS`, and no hooks on any of them."""
    convs, acts = (se.conv_reduce, se.conv_expand), (se.act, se.gate)
    return (all(isinstance(c, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not parametrize.is_parametrized(c)
                and c.bias is not None and c.groups == 1 and all(k == 1 for k in c.kernel_size) for c in convs)
            and all(type(a) in SE_ACTS for a in acts)
            and not any(hooked(m) for m in (*convs, *acts)))


class SqueezeExciteFn(torch.autograd.Function):
    """x * gate(W2 act(W1 mean(x) + b1) + b2) as one autograd node, for a `SqueezeExcite` that `fused_se_applies`
    to; `acts` are its (activation, gate) module types. Saves x and the (N, C) squeeze, hidden values and gate;
    the backward is written out (two full-size passes, then matrix products on (N, C) values). Differentiable once
    (a double backward raises)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                acts: tuple[type, type]) -> torch.Tensor:
        n, c = x.shape[:2]
        s = x.mean(dim=tuple(range(2, x.dim()))).view(n, c)
        w1, w2 = w1.view(w1.shape[0], c), w2.view(c, w2.shape[1])
        h = torch.addmm(b1, s, w1.t())
        a = SE_ACTS[acts[0]][0](h)
        z = torch.addmm(b2, a, w2.t())
        g = SE_ACTS[acts[1]][0](z)
        ctx.save_for_backward(x, s, h, a, z, g, w1, w2)
        ctx.acts = acts
        return x * g.view(n, c, *(1,) * (x.dim() - 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple:
        x, s, h, a, z, g, w1, w2 = ctx.saved_tensors
        n, c = x.shape[:2]
        bshape = (n, c, *(1,) * (x.dim() - 2))
        gg = torch.mul(gy, x).sum(dim=tuple(range(2, x.dim()))).view(n, c)
        gz = SE_ACTS[ctx.acts[1]][1](gg, z, g)
        gh = SE_ACTS[ctx.acts[0]][1](gz @ w2, h, a)
        gx = gw1 = gb1 = gw2 = gb2 = None
        if ctx.needs_input_grad[0]:
            gx = torch.addcmul((gh @ w1).div_(x[0, 0].numel()).view(bshape), gy, g.view(bshape))
        if ctx.needs_input_grad[1]:
            gw1 = (gh.t() @ s).view(w1.shape[0], c, *(1,) * (x.dim() - 2))
        if ctx.needs_input_grad[3]:
            gw2 = (gz.t() @ a).view(c, a.shape[1], *(1,) * (x.dim() - 2))
        gb1 = gh.sum(0) if ctx.needs_input_grad[2] else None
        gb2 = gz.sum(0) if ctx.needs_input_grad[4] else None
        return gx, gw1, gb1, gw2, gb2, None
