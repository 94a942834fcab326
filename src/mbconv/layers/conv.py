"""Convolution + normalisation + activation for 1-D, 2-D and 3-D data from one implementation.

The dimension is an argument (`dims`), never a copied class: the torch classes are looked up in small tables.
'same' padding follows TensorFlow: for stride 1 it is the symmetric (k-1)//2 padding; for stride > 1 the pad is
computed from the input size with Python integers, so a traced or exported graph holds a constant Pad op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .depthwise import DEPTHWISE_CONV

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def create_act(name: str | None) -> nn.Module:
    """An activation module by name ('swish' is SiLU; 'hard_*' are the MobileNetV3 piecewise versions)."""
    table = {
        None: nn.Identity, "identity": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU,
        "silu": nn.SiLU, "hard_swish": nn.Hardswish, "sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid,
        "gelu": nn.GELU,
    }
    if name not in table:
        raise ValueError(f"invalid act={name!r}: expected one of {sorted(k for k in table if k)}")
    return table[name]()


@dataclass(frozen=True)
class LayerOpts:
    """Options shared by every conv layer of a network: dimensionality, padding convention, BN constants."""

    dims: int = 2
    padding: str = "symmetric"  # 'symmetric' (k-1)//2 | 'same' (TensorFlow SAME)
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.dims, int) or isinstance(self.dims, bool) or self.dims not in CONV:
            raise ValueError(f"invalid dims={self.dims!r}: expected 1, 2 or 3")
        if self.padding not in ("symmetric", "same"):
            raise ValueError(f"invalid padding={self.padding!r}: expected 'symmetric' or 'same'")


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for one spatial axis: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePad(nn.Module):
    """Asymmetric TF-SAME padding for strided convs; pads are plain ints, so export sees constants."""

    def __init__(self, kernel: int, stride: int, dims: int) -> None:
        super().__init__()
        self.kernel, self.stride, self.dims = kernel, stride, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size in reversed(x.shape[-self.dims:]):  # F.pad wants the last axis first
            pads.extend(tf_same_pads(int(size), self.kernel, self.stride))
        if not any(pads):
            return x
        return F.pad(x, pads)


class StaticPad(nn.Module):
    """A fixed (asymmetric) pad, the F.pad list last axis first: a `SamePad` resolved for one input size."""

    def __init__(self, pads: list[int]) -> None:
        super().__init__()
        self.pads = [int(p) for p in pads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)

    def extra_repr(self) -> str:
        return f"pads={self.pads}"


class ConvNormAct(nn.Module):
    """conv -> batch norm -> activation, for any `dims`. `.conv`, `.bn`, `.act` are public for surgery."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        opts: LayerOpts | None = None,
        norm: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        opts = opts or LayerOpts()
        for name, v in (("in_chs", in_chs), ("out_chs", out_chs), ("kernel", kernel), ("stride", stride)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"invalid {name}={v!r}: must be a positive integer")
        if in_chs % groups or out_chs % groups:
            raise ValueError(f"invalid groups={groups}: must divide in_chs={in_chs} and out_chs={out_chs}")
        # TF SAME is the symmetric (k-1)//2 pad for stride 1 and odd k; otherwise it depends on the input size.
        dynamic = opts.padding == "same" and (stride > 1 or kernel % 2 == 0)
        self.pad = SamePad(kernel, stride, opts.dims) if dynamic else nn.Identity()
        padding = 0 if dynamic else (kernel - 1) // 2
        # depthwise layers get the nn.ConvNd subclass with the fast CPU training backward (layers/depthwise.py)
        conv_cls = DEPTHWISE_CONV[opts.dims] if groups == in_chs == out_chs else CONV[opts.dims]
        self.conv = conv_cls(in_chs, out_chs, kernel, stride, padding, groups=groups, bias=bias)
        self.bn = NORM[opts.dims](out_chs, eps=opts.norm_eps, momentum=opts.norm_momentum) if norm else nn.Identity()
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


def init_weights_tf(module: nn.Module) -> None:
    """TensorFlow EfficientNet init: conv normal(0, sqrt(2 / fan_out)) with fan_out = k^D * out / groups (so a
    depthwise kernel has fan_out k^D, as TF and timm's fix_group_fanout); dense uniform +-1/sqrt(out);
    BN weight 1, bias 0; biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            r = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -r, r)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def hooked(module: nn.Module) -> bool:
    """Whether `module` has forward (pre-)hooks: a fast path that bypasses its call would skip them."""
    return bool(module._forward_hooks or module._forward_pre_hooks)
