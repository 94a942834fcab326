"""Named specs: EfficientNet B0-B8/L2 (+ tf_ variants), Lite0-4, EfficientNetV2 S/M/L, MobileNetV2/V3, and the
1-D/3-D families of `mbconv.zoo_nd`; `get_spec`, `create_model` and `list_models` look names up here.

Every B-model is compound-scaled from the single B0 spec by the official (width, depth, resolution) triple;
parameter counts equal timm's same-named models (tests/test_zoo.py checks every entry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .efficientnet import EFFICIENTNET_B0_BLOCKS, EFFICIENTNET_PARAMS, efficientnet_b0_spec
from .net import MBConvNet
from .scaling import scale_spec
from .spec import NetSpec, parse_arch
from .zoo_nd import ND_MODELS

LITE_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2), "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3), "lite4": (1.4, 1.8, 300, 0.3),
}
# The paper's table (params in millions, FLOPs = multiply-adds in billions), for side-by-side reports.
PAPER_B_SERIES: dict[str, tuple[float, float]] = {
    "b0": (5.3, 0.39), "b1": (7.8, 0.70), "b2": (9.2, 1.0), "b3": (12, 1.8), "b4": (19, 4.2), "b5": (30, 9.9),
    "b6": (43, 19), "b7": (66, 37),
}

TF_BN = dict(norm_eps=1e-3, norm_momentum=0.01)  # TF BN momentum 0.99 == PyTorch 0.01
TF_STYLE = dict(padding="same", **TF_BN)


def efficientnet_spec(variant: str, tf: bool = False) -> NetSpec:
    w, d, r, drop = EFFICIENTNET_PARAMS[variant]
    base = efficientnet_b0_spec()
    if tf:
        base = dataclasses.replace(base, **TF_STYLE)
    spec = scale_spec(base, w, d, r, drop_rate=drop)
    return dataclasses.replace(spec, name=("tf_" if tf else "") + f"efficientnet_{variant}")


def efficientnet_lite_spec(variant: str, tf: bool = False) -> NetSpec:
    """Lite: no SE, ReLU6, stem/head and first/last stage depth fixed (TF's int8-friendly variant)."""
    w, d, r, drop = LITE_PARAMS[variant]
    arch = [[b.replace("_se0.25", "")] for b in EFFICIENTNET_B0_BLOCKS]
    base = NetSpec(stages=parse_arch(arch), name="efficientnet_lite", act="relu6", fix_stem=True,
                   head_scaling="fixed", fix_first_last_depth=True, resolution=224,
                   **(TF_STYLE if tf else {}))
    spec = scale_spec(base, w, d, r, drop_rate=drop)
    return dataclasses.replace(spec, name=("tf_" if tf else "") + f"efficientnet_{variant}")


V2_ARCH: dict[str, tuple[list[str], int, int, int]] = {  # blocks, stem, head, eval resolution
    "s": (["cn_r2_k3_s1_c24_skip", "er_r4_k3_s2_e4_c48", "er_r4_k3_s2_e4_c64", "ir_r6_k3_s2_e4_c128_se0.25",
           "ir_r9_k3_s1_e6_c160_se0.25", "ir_r15_k3_s2_e6_c256_se0.25"], 24, 1280, 384),
    "m": (["cn_r3_k3_s1_c24_skip", "er_r5_k3_s2_e4_c48", "er_r5_k3_s2_e4_c80", "ir_r7_k3_s2_e4_c160_se0.25",
           "ir_r14_k3_s1_e6_c176_se0.25", "ir_r18_k3_s2_e6_c304_se0.25", "ir_r5_k3_s1_e6_c512_se0.25"],
          24, 1280, 480),
    "l": (["cn_r4_k3_s1_c32_skip", "er_r7_k3_s2_e4_c64", "er_r7_k3_s2_e4_c96", "ir_r10_k3_s2_e4_c192_se0.25",
           "ir_r19_k3_s1_e6_c224_se0.25", "ir_r25_k3_s2_e6_c384_se0.25", "ir_r7_k3_s1_e6_c640_se0.25"],
          32, 1280, 480),
}


def efficientnetv2_spec(variant: str, tf: bool = False) -> NetSpec:
    blocks, stem, head, res = V2_ARCH[variant]
    return NetSpec(stages=parse_arch([[b] for b in blocks]), name=("tf_" if tf else "") + f"efficientnetv2_{variant}",
                   stem_chs=stem, head_chs=head, act="swish", se_base="in", resolution=res,
                   drop_rate=0.2, **(TF_STYLE if tf else {}))


MOBILENETV2_ARCH = ["ds_r1_k3_s1_c16", "ir_r2_k3_s2_e6_c24", "ir_r3_k3_s2_e6_c32", "ir_r4_k3_s2_e6_c64",
                    "ir_r3_k3_s1_e6_c96", "ir_r3_k3_s2_e6_c160", "ir_r1_k3_s1_e6_c320"]


def mobilenetv2_spec(width: float) -> NetSpec:
    base = NetSpec(stages=parse_arch([[b] for b in MOBILENETV2_ARCH]), name="mobilenetv2", act="relu6",
                   stem_chs=32, head_chs=1280, head_scaling="max", drop_rate=0.2, resolution=224)
    return dataclasses.replace(scale_spec(base, width), name=f"mobilenetv2_{round(width * 100):03d}")


MOBILENETV3_ARCH = {
    "large": ([["ds_r1_k3_s1_c16_nre"], ["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
               ["ir_r3_k5_s2_e3_c40_se0.25_nre"],
               ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
               ["ir_r2_k3_s1_e6_c112_se0.25"], ["ir_r3_k5_s2_e6_c160_se0.25"], ["cn_r1_k1_s1_c960"]], 1280),
    "small": ([["ds_r1_k3_s2_c16_se0.25_nre"], ["ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"],
               ["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"], ["ir_r2_k5_s1_e3_c48_se0.25"],
               ["ir_r3_k5_s2_e6_c96_se0.25"], ["cn_r1_k1_s1_c576"]], 1024),
}


def mobilenetv3_spec(variant: str, tf: bool = False) -> NetSpec:
    """MobileNetV3: hard-swish, SE on expanded channels (/4, rounded to 8) with ReLU and hard-sigmoid gate,
    head conv after pooling (with bias, no BN)."""
    arch, head = MOBILENETV3_ARCH[variant]
    return NetSpec(stages=parse_arch(arch), name=("tf_" if tf else "") + f"mobilenetv3_{variant}_100",
                   stem_chs=16, head_chs=head, head_type="pool_conv", head_scaling="fixed", act="hard_swish",
                   se_base="mid", se_divisor=8, se_act="relu", se_gate="hard_sigmoid", drop_rate=0.2,
                   resolution=224, **(TF_STYLE if tf else {}))


def _registry() -> dict[str, Callable[[], NetSpec]]:
    reg: dict[str, Callable[[], NetSpec]] = {}
    for v in EFFICIENTNET_PARAMS:
        reg[f"efficientnet_{v}"] = lambda v=v: efficientnet_spec(v)
        reg[f"tf_efficientnet_{v}"] = lambda v=v: efficientnet_spec(v, tf=True)
    for v in LITE_PARAMS:
        reg[f"efficientnet_{v}"] = lambda v=v: efficientnet_lite_spec(v)
        reg[f"tf_efficientnet_{v}"] = lambda v=v: efficientnet_lite_spec(v, tf=True)
    for v in V2_ARCH:
        reg[f"efficientnetv2_{v}"] = lambda v=v: efficientnetv2_spec(v)
        reg[f"tf_efficientnetv2_{v}"] = lambda v=v: efficientnetv2_spec(v, tf=True)
    for w in (0.5, 1.0, 1.4):
        reg[f"mobilenetv2_{round(w * 100):03d}"] = lambda w=w: mobilenetv2_spec(w)
    for v in MOBILENETV3_ARCH:
        reg[f"mobilenetv3_{v}_100"] = lambda v=v: mobilenetv3_spec(v)
        reg[f"tf_mobilenetv3_{v}_100"] = lambda v=v: mobilenetv3_spec(v, tf=True)
    reg.update(ND_MODELS)  # the 1-D and 3-D families
    return reg


_MODELS = _registry()


def register_model(name: str, fn: Callable[[], NetSpec]) -> None:
    """Add a named spec factory (for users' own families; replaces a registered name)."""
    _MODELS[name] = fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching a shell-style pattern."""
    import fnmatch

    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


SCALE_KEYS = ("width_mult", "depth_mult")


def get_spec(name: str | NetSpec, **overrides: Any) -> NetSpec:
    """The spec for a registered name, a block-string arch ('ir_r1_k3_s1_e6_c16;...'), or a NetSpec, with
    field overrides (num_classes=10, dims=1, se_position='before_dw', ...) and optional `width_mult` /
    `depth_mult` / `resolution` scaling."""
    if isinstance(name, NetSpec):
        spec = name
    elif name in _MODELS:
        spec = _MODELS[name]()
    elif isinstance(name, str) and "_" in name and any(c in name for c in ";,") or (
            isinstance(name, str) and name.split("_")[0] in ("ir", "ds", "er", "cn")):
        spec = NetSpec(stages=parse_arch(name))
    else:
        import difflib

        close = difflib.get_close_matches(str(name), list(_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `mbconv list`"
        raise ValueError(f"unknown model {name!r}{hint}")
    width = overrides.pop("width_mult", 1.0)
    depth = overrides.pop("depth_mult", 1.0)
    res = overrides.pop("resolution", None)
    fields = {f.name for f in dataclasses.fields(NetSpec)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown spec field(s) {bad}; known: {sorted(fields)}")
    if overrides:
        spec = dataclasses.replace(spec, **overrides)
    if width != 1.0 or depth != 1.0:
        spec = scale_spec(spec, width, depth, res)
    elif res is not None:
        spec = dataclasses.replace(spec, resolution=res)
    return spec


def create_model(name: str | NetSpec, init: str = "tf", **overrides: Any) -> MBConvNet:
    """Build a model: `create_model('efficientnet_b0', num_classes=10)`; see `get_spec` for the overrides."""
    return MBConvNet(get_spec(name, **overrides), init=init)
