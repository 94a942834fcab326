"""The blocks: MBConv (inverted residual), depthwise-separable, Fused-MBConv, conv block, and drop path.

One implementation serves 1-D, 2-D and 3-D data (`LayerOpts.dims`). Submodule names are the paper's words:
`expand` (1x1, or k x k when fused), `depthwise`, `se`, `project` (linear: no activation). Analysis tools
(cost, gates, pruning, quantisation) find these by name on any network built from these classes.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvNormAct, LayerOpts
from .layout import CREATION_ORDER, Step, block_layout, step_names
from .se import SqueezeExcite


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch: drop whole samples with prob. p and scale the kept by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)  # scale the (N, 1, ...) mask, not the full tensor: one full-size pass, not two


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


class Block(nn.Module):
    """A block run from its layout: the steps of `mbconv.layers.layout` in order, then the residual.

    One straight forward() for every block type: each step is a submodule named after it (`expand`, `depthwise`,
    `se`, `project`, `conv`); absent parts are `None`. `self.steps` is the forward order; `self.layout` the full
    description the analysis tools read.
    """

    def __init__(self, layout: tuple[Step, ...], has_skip: bool, drop_path: float, opts: LayerOpts | None,
                 absent: tuple[str, ...] = ()) -> None:
        super().__init__()
        opts = opts or LayerOpts()
        self.layout = layout
        self.steps = step_names(layout)
        by_name = {s.name: s for s in layout}
        for name in CREATION_ORDER:
            if name in by_name:
                setattr(self, name, build_step(by_name[name], opts))
            elif name in absent:
                setattr(self, name, None)
        first, last = layout[0], layout[-1]
        stride = max(s.stride for s in layout)
        self.has_skip = bool(has_skip) and stride == 1 and first.in_chs == last.out_chs
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0 else nn.Identity()
        self.inplace = False  # set by inference preparation: add the shortcut in place (no autograd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        for name in self.steps:
            x = getattr(self, name)(x)
        if self.has_skip:
            x = x.add_(shortcut) if self.inplace else self.drop_path(x) + shortcut
        return x


def build_step(step: Step, opts: LayerOpts) -> nn.Module:
    """The module of one layout step."""
    if step.kind == "se":
        return SqueezeExcite(step.in_chs, step.rd_chs, opts.dims, step.act, step.gate)
    return ConvNormAct(step.in_chs, step.out_chs, step.kernel, step.stride, groups=step.groups, act=step.act,
                       opts=opts)


class MBConv(Block):
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
        layout = block_layout("ir", in_chs, out_chs, mid_chs, kernel, stride, act, expand, se_chs, se_act,
                              se_gate, se_position, project_act)
        super().__init__(layout, has_skip, drop_path, opts, absent=("expand", "se"))
        self.se_position = se_position


class DepthwiseSeparable(MBConv):
    """Depthwise-separable conv (MobileNetV1 / MBConv with t = 1): k x k depthwise -> [SE] -> 1x1 pointwise.

    The same implementation as `MBConv` with no expansion conv; `project_act` adds an activation after the
    pointwise conv (MobileNetV1 style; off for the linear bottleneck of MobileNetV2/EfficientNet).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1, **kw) -> None:
        super().__init__(in_chs, out_chs, in_chs, kernel, stride, expand=False, **kw)


class FusedMBConv(Block):
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
        layout = block_layout("er", in_chs, out_chs, mid_chs, kernel, stride, act, True, se_chs, se_act, se_gate,
                              se_position)
        super().__init__(layout, has_skip, drop_path, opts, absent=("se",))
        self.se_position = se_position


class ConvBlock(Block):
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
        super().__init__(block_layout("cn", in_chs, out_chs, kernel=kernel, stride=stride, act=act), has_skip,
                         drop_path, opts)
