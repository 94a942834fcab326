"""Squeeze-and-Excitation for any dimensionality: global mean -> reduce conv -> act -> expand conv -> gate."""

from __future__ import annotations

import torch
from torch import nn

from .conv import CONV, create_act


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, 2 + self.dims)), keepdim=True)
        g = self.gate(self.conv_expand(self.act(self.conv_reduce(s))))
        return x.mul_(g) if self.inplace else x * g
