"""The blocks: MBConv (inverted residual), depthwise-separable, Fused-MBConv, conv block, and drop path.

One implementation serves 1-D, 2-D and 3-D data (`LayerOpts.dims`). Submodule names are the paper's words:
`expand` (1x1, or k x k when fused), `depthwise`, `se`, `project` (linear: no activation). Analysis tools
(cost, gates, pruning, quantisation) find these by name on any network built from these classes.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvNormAct, LayerOpts
from .se import SqueezeExcite


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch: drop whole samples with prob. p and scale the kept by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of `drop_path` (per-sample, inverted scaling, works for any rank)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"invalid drop_path={p!r}: must be in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand -> BN -> act] -> k x k depthwise -> BN -> act -> [SE] -> 1x1 project -> BN.

    With `mid_chs == in_chs` and `expand=False` there is no expansion conv (TF's MBConv1, i.e. a depthwise-
    separable conv). `se_position='before_dw'` moves the squeeze-excite in front of the depthwise conv (on the
    expanded channels) instead of after it. The residual is used when `has_skip` (the caller checks stride 1
    and in == out).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        kernel: int = 3,
        stride: int = 1,
        expand: bool = True,
        act: str = "swish",
        se_chs: int = 0,
        se_act: str | None = None,
        se_gate: str = "sigmoid",
        se_position: str = "after_dw",
        has_skip: bool = True,
        drop_path: float = 0.0,
        project_act: str | None = None,
        opts: LayerOpts | None = None,
    ) -> None:
        super().__init__()
        opts = opts or LayerOpts()
        if se_position not in ("after_dw", "before_dw"):
            raise ValueError(f"invalid se_position={se_position!r}: expected 'after_dw' or 'before_dw'")
        if not expand and mid_chs != in_chs:
            raise ValueError(f"invalid mid_chs={mid_chs}: without an expansion conv it must equal in_chs={in_chs}")
        self.se_position = se_position
        self.has_skip = has_skip and stride == 1 and in_chs == out_chs
        self.expand = ConvNormAct(in_chs, mid_chs, 1, act=act, opts=opts) if expand else None
        self.depthwise = ConvNormAct(mid_chs, mid_chs, kernel, stride, groups=mid_chs, act=act, opts=opts)
        self.se = SqueezeExcite(mid_chs, se_chs, opts.dims, se_act or act, se_gate) if se_chs else None
        self.project = ConvNormAct(mid_chs, out_chs, 1, act=project_act, opts=opts)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.expand is not None:
            x = self.expand(x)
        if self.se is not None and self.se_position == "before_dw":
            x = self.se(x)
        x = self.depthwise(x)
        if self.se is not None and self.se_position == "after_dw":
            x = self.se(x)
        x = self.project(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class DepthwiseSeparable(MBConv):
    """Depthwise-separable conv (MobileNetV1 / MBConv with t = 1): k x k depthwise -> [SE] -> 1x1 pointwise.

    The same implementation as `MBConv` with no expansion conv; `project_act` adds an activation after the
    pointwise conv (MobileNetV1 style; off for the linear bottleneck of MobileNetV2/EfficientNet).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1, **kw) -> None:
        super().__init__(in_chs, out_chs, in_chs, kernel, stride, expand=False, **kw)


class FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2): k x k conv expand -> BN -> act -> [SE] -> 1x1 project -> BN.

    The k x k expansion conv plays the depthwise conv's spatial role, so `se_position='before_dw'` puts the SE
    in front of it, on the block input.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        kernel: int = 3,
        stride: int = 1,
        act: str = "swish",
        se_chs: int = 0,
        se_act: str | None = None,
        se_gate: str = "sigmoid",
        se_position: str = "after_dw",
        has_skip: bool = True,
        drop_path: float = 0.0,
        opts: LayerOpts | None = None,
    ) -> None:
        super().__init__()
        opts = opts or LayerOpts()
        if se_position not in ("after_dw", "before_dw"):
            raise ValueError(f"invalid se_position={se_position!r}: expected 'after_dw' or 'before_dw'")
        self.se_position = se_position
        self.has_skip = has_skip and stride == 1 and in_chs == out_chs
        self.expand = ConvNormAct(in_chs, mid_chs, kernel, stride, act=act, opts=opts)
        se_on = in_chs if se_position == "before_dw" else mid_chs
        self.se = SqueezeExcite(se_on, se_chs, opts.dims, se_act or act, se_gate) if se_chs else None
        self.project = ConvNormAct(mid_chs, out_chs, 1, act=None, opts=opts)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.se is not None and self.se_position == "before_dw":
            x = self.se(x)
        x = self.expand(x)
        if self.se is not None and self.se_position == "after_dw":
            x = self.se(x)
        x = self.project(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class ConvBlock(nn.Module):
    """A plain k x k conv -> BN -> act block, with an optional residual (EfficientNetV2's first stage)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int = 3,
        stride: int = 1,
        act: str = "swish",
        has_skip: bool = False,
        drop_path: float = 0.0,
        opts: LayerOpts | None = None,
    ) -> None:
        super().__init__()
        self.has_skip = has_skip and stride == 1 and in_chs == out_chs
        self.conv = ConvNormAct(in_chs, out_chs, kernel, stride, act=act, opts=opts)
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.drop_path(y) + x if self.has_skip else y
