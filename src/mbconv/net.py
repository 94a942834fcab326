"""MBConvNet: stem, stages, head and classifier built from a `NetSpec`, with multi-scale features."""

from __future__ import annotations

import torch
from torch import nn

from .layers import (
    ConvBlock,
    ConvNormAct,
    DepthwiseSeparable,
    FusedMBConv,
    LayerOpts,
    MBConv,
    init_weights_tf,
)
from .spec import BlockPlan, NetSpec, feature_levels, plan_blocks


def build_block(p: BlockPlan, spec: NetSpec, opts: LayerOpts) -> nn.Module:
    """The module for one planned block (its layout: `mbconv.spec.plan_layout`)."""
    se = dict(se_chs=p.se_chs, se_act=spec.se_act, se_gate=spec.se_gate, se_position=spec.se_position)
    common = dict(act=p.act, has_skip=p.has_skip, drop_path=p.drop_path, opts=opts)
    if p.block == "cn":
        return ConvBlock(p.in_chs, p.out_chs, p.kernel, p.stride, **common)
    if p.block == "er":
        return FusedMBConv(p.in_chs, p.out_chs, p.mid_chs, p.kernel, p.stride, **se, **common)
    if p.block == "ds":
        return DepthwiseSeparable(p.in_chs, p.out_chs, p.kernel, p.stride, **se, **common)
    return MBConv(p.in_chs, p.out_chs, p.mid_chs, p.kernel, p.stride, expand=p.has_expand, **se, **common)


class MBConvNet(nn.Module):
    """An MBConv-family network (EfficientNet, MobileNetV2/V3, 1-D/2-D/3-D custom nets) from one `NetSpec`.

    Layout: `stem` -> `stages[i][j]` -> `head` -> global mean pool -> `dropout` -> `classifier`.
    For `head_type='pool_conv'` (MobileNetV3) the head conv (with bias, no BN) runs after pooling.
    """

    def __init__(self, spec: NetSpec, init: str = "tf") -> None:
        super().__init__()
        self.spec = spec
        self.opts = LayerOpts(spec.dims, spec.padding, spec.norm_eps, spec.norm_momentum)
        self.plans = plan_blocks(spec)
        self.stem = ConvNormAct(spec.in_chans, spec.stem_chs, spec.stem_kernel, spec.stem_stride, act=spec.act,
                                opts=self.opts)
        stages: list[list[nn.Module]] = [[] for _ in spec.stages]
        for p in self.plans:
            stages[p.stage].append(build_block(p, spec, self.opts))
        self.stages = nn.Sequential(*[nn.Sequential(*s) for s in stages])
        last = spec.stages[-1].out_chs
        if spec.head_type == "conv":
            self.head: nn.Module = ConvNormAct(last, spec.head_chs, 1, act=spec.act, opts=self.opts)
        elif spec.head_type == "pool_conv":
            self.head = ConvNormAct(last, spec.head_chs, 1, act=spec.act, opts=self.opts, norm=False, bias=True)
        else:
            self.head = nn.Identity()
        self.num_features = spec.features_chs
        self.dropout = nn.Dropout(spec.drop_rate)
        self.classifier = nn.Linear(self.num_features, spec.num_classes)
        self.inplace = False  # set by `mbconv.inference.prepare_inference(inplace=True)`
        self.feature_info = [dict(f, module=f"stages.{f['stage']}") for f in feature_levels(spec)]
        if init == "tf":
            init_weights_tf(self)
        elif init != "torch":
            raise ValueError(f"invalid init={init!r}: expected 'tf' or 'torch'")

    # -- shapes ----------------------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that names the problem when `x` cannot be this network's input."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
        want = 2 + self.spec.dims
        if x.ndim != want:
            layout = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}[self.spec.dims]
            raise ValueError(f"input of rank {x.ndim} (shape {tuple(x.shape)}): this {self.spec.dims}-D network "
                             f"expects rank {want} {layout}")
        if x.shape[1] != self.spec.in_chans:
            raise ValueError(f"input has {x.shape[1]} channels (shape {tuple(x.shape)}): the network expects "
                             f"in_chans={self.spec.in_chans}")
        if min(x.shape[2:]) < 1 or x.shape[0] < 1:
            raise ValueError(f"input shape {tuple(x.shape)} has an empty axis")

    # -- forward ---------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and (conv) head: the feature map before pooling."""
        self.check_input(x)
        x = self.stages(self.stem(x))
        return self.head(x) if self.spec.head_type == "conv" else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.spec.head_type == "pool_conv":  # keepdim: no reshape ops in an exported graph
            x = self.head(x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)).flatten(1)
        else:
            x = self.pool(x)
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and torch.is_grad_enabled():  # in-place activations and adds need autograd off
            with torch.no_grad():
                return self.forward_head(self.forward_features(x))
        return self.forward_head(self.forward_features(x))

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at each reduction level (after the last stage of that level), for dense tasks.

        `self.feature_info` gives the channels and reduction of each returned map.
        """
        self.check_input(x)
        taps = {f["stage"] for f in self.feature_info}
        out = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in taps:
                out.append(x)
        return out

    def blocks(self) -> list[nn.Module]:
        """All blocks in forward order (aligned with `self.plans`)."""
        return [b for s in self.stages for b in s]
