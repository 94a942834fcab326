"""timm's names for the modules of an `MBConvNet`: EfficientNet (B, Lite, V2) and MobileNetV2/V3.

timm names modules by layer position inside a block (`conv_pw`, `bn1`, `conv_dw`, `bn2`, ...), so the same
word means different layers in different block types: `conv_pw` is the expansion conv of an InvertedResidual
but the projection of a DepthwiseSeparableConv, and `bn2` follows the depthwise conv in one and the projection
in the other. The mapping is therefore derived from the network's structure (each block's layout: its conv
steps in forward order, BNs numbered in that order), never guessed from key names alone. Both directions use the
same table, so `mbconv_to_timm_state_dict(timm_to_mbconv_state_dict(sd, spec), spec) == sd`.

timm's model names are our zoo names, conventions included (`tf_` = TF 'same' padding and BN eps 1e-3), so the
scheme has no twins to check: the name the user picks is the model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from ..spec import BlockPlan, NetSpec, plan_blocks, plan_layout
from .keymap import KeyMap, Scheme

__all__ = ["TIMM", "TIMM_CONV_NAMES", "mbconv_to_timm_state_dict", "module_name_map", "timm_block_class",
           "timm_to_mbconv_state_dict"]

# timm's name for each conv step of our layouts, by timm block class.
TIMM_CONV_NAMES = {
    "ConvBnAct": {"conv": "conv"},
    "EdgeResidual": {"expand": "conv_exp", "project": "conv_pwl"},
    "DepthwiseSeparableConv": {"depthwise": "conv_dw", "project": "conv_pw"},  # TF's MBConv1
    "InvertedResidual": {"expand": "conv_pw", "depthwise": "conv_dw", "project": "conv_pwl"},
}


def timm_block_class(p: BlockPlan) -> str:
    """The timm block class that holds planned block `p`."""
    if p.block == "cn":
        return "ConvBnAct"
    if p.block == "er":
        return "EdgeResidual"
    return "InvertedResidual" if p.has_expand else "DepthwiseSeparableConv"


def module_name_map(spec: NetSpec) -> dict[str, str]:
    """Module-path map {ours: timm's} for every module of `MBConvNet(spec)` that holds parameters or buffers
    (e.g. 'stages.1.0.depthwise.bn' -> 'blocks.1.0.bn2')."""
    m: dict[str, str] = {"stem.conv": "conv_stem", "stem.bn": "bn1"}
    index_in_stage: dict[int, int] = {}
    for p in plan_blocks(spec):
        # timm numbers blocks inside each stage of its arch_def, exactly as our `stages[i][j]`.
        j = index_in_stage.get(p.stage, 0)
        index_in_stage[p.stage] = j + 1
        ours, theirs = f"stages.{p.stage}.{j}", f"blocks.{p.stage}.{j}"
        layout = plan_layout(p, spec)
        convs = TIMM_CONV_NAMES[timm_block_class(p)]
        layers: dict[str, str] = {}
        for i, s in enumerate(st for st in layout if st.kind == "conv"):  # timm numbers its BNs in conv order
            layers.update({f"{s.name}.conv": convs[s.name], f"{s.name}.bn": f"bn{i + 1}"})
        if any(st.kind == "se" for st in layout):
            layers.update({"se.conv_reduce": "se.conv_reduce", "se.conv_expand": "se.conv_expand"})
        m.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in layers.items()})
    if spec.head_type == "conv":  # EfficientNet: conv -> BN -> act before pooling
        m.update({"head.conv": "conv_head", "head.bn": "bn2"})
    elif spec.head_type == "pool_conv":  # MobileNetV3: conv with bias after pooling, no BN
        m["head.conv"] = "conv_head"
    m["classifier"] = "classifier"
    return m


def timm_to_mbconv_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: NetSpec
) -> dict[str, torch.Tensor]:
    """Rename a timm EfficientNet/MobileNetV2/V3 state dict to `MBConvNet(spec)` keys (tensors are shared,
    not copied). Keys that belong to no module of `spec` keep their timm name."""
    return KeyMap(module_name_map(spec)).to_ours(state_dict)


def mbconv_to_timm_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: NetSpec
) -> dict[str, torch.Tensor]:
    """The inverse of `timm_to_mbconv_state_dict`: `MBConvNet(spec)` keys to timm's."""
    return KeyMap(module_name_map(spec)).to_theirs(state_dict)


def detect(keys: Collection[str]) -> str | None:
    """'' for a timm EfficientNet/MobileNet state dict, else None."""
    return "" if "conv_stem.weight" in keys and any(k.startswith("blocks.") for k in keys) else None


TIMM = Scheme("timm", detect, lambda spec, variant: KeyMap(module_name_map(spec)),
              conventions=())
