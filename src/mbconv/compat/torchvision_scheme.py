"""torchvision's names: `efficientnet_b0..b7`, `efficientnet_v2_s/m/l`, `mobilenet_v2`, `mobilenet_v3_large/small`.

torchvision nests plain `Sequential`s, so a module's name is its position: `features.0` is the stem and the
last `features` entry the head conv (each a Conv2dNormActivation: `.0` conv, `.1` BN). Blocks sit at
- EfficientNet/V2: `features.{stage + 1}.{j}.block.{K}` (per stage, as ours),
- MobileNetV3: `features.{n}.block.{K}` (flat: n = block index + 1; the 1x1 conv stage is a bare
  Conv2dNormActivation `features.{n}`),
- MobileNetV2: `features.{n}.conv.{K}` (flat), its linear projection split into a Conv2d `conv.{K}` and a BN
  `conv.{K + 1}`,
where K counts the block's steps in forward order (SE included: `.fc1`/`.fc2`), i.e. our layout's step index.
The classifier is `classifier.1` after a Dropout; MobileNetV3's head conv is a Linear, `classifier.0`, and its
classifier `classifier.3`.

Structural differences from our zoo entries (each twin's `overrides`): BN eps 1e-3 and momentum 0.01 in B5-B7
and MobileNetV3, eps 1e-3 in V2 (momentum 0.1); dropout 0.3/0.4 in V2-M/L; stochastic depth 0.2 in every
EfficientNet ("row" mode: per sample, scaled by 1/(1-p), linear in the block index, as our drop path; training
only). Padding is symmetric (k-1)//2, as our non-tf_ models; the SE widths equal ours (input // 4 in
EfficientNet, make_divisible(expanded // 4, 8) in MobileNetV3).
"""

from __future__ import annotations

import re
from collections.abc import Collection

from ..spec import NetSpec, plan_blocks, plan_layout
from .keymap import KeyMap, Scheme, Twin

__all__ = ["TORCHVISION", "TORCHVISION_LAYOUTS", "key_map"]

TORCHVISION_LAYOUTS = ("efficientnet", "mobilenet_v2", "mobilenet_v3")


def key_map(spec: NetSpec, layout: str) -> KeyMap:
    """Module map {ours: torchvision's} for `MBConvNet(spec)` as torchvision's `layout` class nests it
    ('efficientnet' for B0-B7 and V2, 'mobilenet_v2', 'mobilenet_v3')."""
    if layout not in TORCHVISION_LAYOUTS:
        raise ValueError(f"invalid torchvision layout {layout!r}: expected one of {TORCHVISION_LAYOUTS}")
    m: dict[str, str] = {"stem.conv": "features.0.0", "stem.bn": "features.0.1"}
    index_in_stage: dict[int, int] = {}
    plans = plan_blocks(spec)
    for p in plans:
        j = index_in_stage.get(p.stage, 0)
        index_in_stage[p.stage] = j + 1
        ours = f"stages.{p.stage}.{j}"
        if layout == "efficientnet":
            theirs = f"features.{p.stage + 1}.{j}.block"
        elif layout == "mobilenet_v3":
            theirs = f"features.{p.index + 1}" + ("" if p.block == "cn" else ".block")
        else:
            theirs = f"features.{p.index + 1}.conv"
        steps = plan_layout(p, spec)
        if layout == "mobilenet_v3" and p.block == "cn":  # a bare Conv2dNormActivation
            m.update({f"{ours}.conv.conv": f"{theirs}.0", f"{ours}.conv.bn": f"{theirs}.1"})
            continue
        for k, s in enumerate(steps):
            if s.kind == "se":
                m.update({f"{ours}.se.conv_reduce": f"{theirs}.{k}.fc1", f"{ours}.se.conv_expand": f"{theirs}.{k}.fc2"})
            elif layout == "mobilenet_v2" and s.name == "project":  # Conv2d and BN as two entries
                m.update({f"{ours}.project.conv": f"{theirs}.{k}", f"{ours}.project.bn": f"{theirs}.{k + 1}"})
            else:
                m.update({f"{ours}.{s.name}.conv": f"{theirs}.{k}.0", f"{ours}.{s.name}.bn": f"{theirs}.{k}.1"})
    last = (len(spec.stages) if layout == "efficientnet" else len(plans)) + 1
    linear: frozenset[str] = frozenset()
    if spec.head_type == "conv":
        m.update({"head.conv": f"features.{last}.0", "head.bn": f"features.{last}.1", "classifier": "classifier.1"})
    elif spec.head_type == "pool_conv" and layout == "mobilenet_v3":
        m.update({"head.conv": "classifier.0", "classifier": "classifier.3"})
        linear = frozenset({"head.conv"})
    else:
        raise ValueError(f"torchvision's {layout} has no head_type={spec.head_type!r}")
    return KeyMap(m, linear)


def detect(keys: Collection[str]) -> str | None:
    """The torchvision layout of a state dict ('efficientnet', 'mobilenet_v2', 'mobilenet_v3'), else None."""
    if "features.0.0.weight" not in keys:
        return None
    if any(re.match(r"features\.\d+\.\d+\.block\.", k) for k in keys):
        return "efficientnet"
    if any(re.match(r"features\.\d+\.block\.", k) for k in keys):
        return "mobilenet_v3"
    if any(re.match(r"features\.\d+\.conv\.", k) for k in keys):
        return "mobilenet_v2"
    return None


_SD = {"drop_path_rate": 0.2}  # torchvision's stochastic_depth_prob
_TF_BN = {"norm_eps": 1e-3, "norm_momentum": 0.01}
TWINS = tuple(
    [Twin(f"efficientnet_b{i}", f"efficientnet_b{i}", _SD, f"torchvision:efficientnet_b{i}",
          f"efficientnet_b{i} with stochastic depth 0.2 (training only)") for i in range(5)]
    + [Twin(f"efficientnet_b{i}", f"efficientnet_b{i}", {**_TF_BN, **_SD}, f"torchvision:efficientnet_b{i}",
            f"efficientnet_b{i} with BN eps 1e-3, momentum 0.01; stochastic depth 0.2") for i in range(5, 8)]
    + [Twin(f"efficientnet_v2_{v}", f"efficientnetv2_{v}", {"norm_eps": 1e-3, **_SD, "drop_rate": d},
            f"torchvision:efficientnet_v2_{v}",
            f"efficientnetv2_{v} with BN eps 1e-3; dropout {d}; stochastic depth 0.2")
       for v, d in (("s", 0.2), ("m", 0.3), ("l", 0.4))]
    + [Twin("mobilenet_v2", "mobilenetv2_100", {}, "torchvision:mobilenet_v2", "mobilenetv2_100 as it is")]
    + [Twin(f"mobilenet_v3_{v}", f"mobilenetv3_{v}_100", _TF_BN, f"torchvision:mobilenet_v3_{v}",
            f"mobilenetv3_{v}_100 with BN eps 1e-3, momentum 0.01") for v in ("large", "small")]
)

TORCHVISION = Scheme("torchvision", detect, key_map, TWINS)
