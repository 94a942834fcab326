"""Keras applications' names (Keras 3, any backend; or Keras 2 .h5 files): `EfficientNetB0..B7` and `MobileNetV2`.

Keras names each layer once, with its variables below it ('stem_conv/kernel', 'block2a_expand_bn/gamma'), and
stores tensors in its own layouts, so a Keras state dict is first put in torch's form (`prepare`): conv kernels
(kh, kw, in, out) -> (out, in, kh, kw), depthwise kernels (kh, kw, C, 1) -> (C, 1, kh, kw), dense kernels
(in, out) -> (out, in); gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var (and a
num_batches_tracked of 0, which Keras does not count). Then names are per layer:
- EfficientNet: `stem_conv`/`stem_bn`, blocks `block{stage + 1}{a, b, ...}_` + `expand_conv`/`expand_bn`,
  `dwconv`/`bn`, `se_reduce`/`se_expand`, `project_conv`/`project_bn`, then `top_conv`/`top_bn`, `predictions`;
- MobileNetV2: `Conv1`/`bn_Conv1`, blocks numbered flat `expanded_conv` (block 0) and `block_{n}_` + `expand`,
  `depthwise`, `project` (each with `_BN`), then `Conv_1`/`Conv_1_bn`, `predictions`.

Structure: Keras pads like TF ('same', or ZeroPadding2D(correct_pad) + 'valid' before strided convs: TF 'same'
for the sizes it is built for), BN eps 1e-3 and momentum 0.99 (EfficientNet; torch 0.01) or 0.999 (MobileNetV2;
torch 0.001). EfficientNet's SE width and drop connect (0.2) are TF's: the twins are our tf_efficientnet_b*.
MobileNetV2's twins are our mobilenetv2_* with TF padding and Keras' BN. Keras' EfficientNet also rescales and
normalises inside the model (Rescaling(1/255) and Normalization layers, the latter's mean/variance among its
weights): the converted network takes normalised input instead, as every other here, and the evaluation config
says how. The classifier's softmax (`classifier_activation`) is not part of the network: it outputs logits.
EfficientNetV2 and MobileNetV3 are not mapped (their Keras names differ again).
"""

from __future__ import annotations

import re
from collections.abc import Collection

import torch

from ..spec import NetSpec, plan_blocks, plan_layout
from .keymap import KeyMap, Scheme, Twin

__all__ = ["KERAS", "key_map", "keras_to_torch"]

KERAS_LAYOUTS = ("efficientnet", "mobilenet_v2")
BN_VARS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
# preprocessing inside Keras' EfficientNet, not network weights (Keras suffixes _1, _2 to unnamed layers' names)
INPUT_LAYERS = r"(normalization|rescaling)(_\d+)?"


def keras_to_torch(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Keras {'layer/var': tensor} dict in torch's form {'layer.weight': tensor} (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        layer, _, var = key.rpartition("/")
        if re.fullmatch(INPUT_LAYERS, layer.split("/")[-1]):
            continue
        v = torch.as_tensor(value)
        if var in ("kernel", "depthwise_kernel"):
            if v.ndim == 4:
                depthwise = var == "depthwise_kernel" or "dwconv" in layer or "depthwise" in layer
                v = v.permute(2, 3, 0, 1) if depthwise else v.permute(3, 2, 0, 1)
            elif v.ndim == 2:
                v = v.t()
            out[f"{layer}.weight"] = v.contiguous()
        elif var in BN_VARS:
            out[f"{layer}.{BN_VARS[var]}"] = v
            if var == "moving_variance":
                out[f"{layer}.num_batches_tracked"] = torch.tensor(0)
        else:  # 'bias', or a variable we do not know: keep it, so a loader reports it as unexpected
            out[f"{layer}.{var}"] = v
    return out


def _block_names(layout: str, stage: int, j: int, index: int) -> tuple[str, dict[str, tuple[str, str]], tuple]:
    if layout == "efficientnet":
        b = f"block{stage + 1}{chr(ord('a') + j)}_"
        return b, {"expand": ("expand_conv", "expand_bn"), "depthwise": ("dwconv", "bn"),
                   "project": ("project_conv", "project_bn")}, ("se_reduce", "se_expand")
    b = "expanded_conv_" if index == 0 else f"block_{index}_"
    return b, {"expand": ("expand", "expand_BN"), "depthwise": ("depthwise", "depthwise_BN"),
               "project": ("project", "project_BN")}, ()


def key_map(spec: NetSpec, layout: str) -> KeyMap:
    """Module map {ours: Keras layer} for `MBConvNet(spec)` as Keras' `layout` ('efficientnet', 'mobilenet_v2')
    names it."""
    if layout not in KERAS_LAYOUTS:
        raise ValueError(f"invalid Keras layout {layout!r}: expected one of {KERAS_LAYOUTS}")
    stem, head = (("stem_conv", "stem_bn"), ("top_conv", "top_bn")) if layout == "efficientnet" else (
        ("Conv1", "bn_Conv1"), ("Conv_1", "Conv_1_bn"))
    m: dict[str, str] = {"stem.conv": stem[0], "stem.bn": stem[1]}
    index_in_stage: dict[int, int] = {}
    for p in plan_blocks(spec):
        if p.block not in ("ir", "ds"):
            raise ValueError(f"Keras' {layout} has no {p.block!r} block (stage {p.stage}): only MBConv")
        j = index_in_stage.get(p.stage, 0)
        index_in_stage[p.stage] = j + 1
        prefix, convs, se = _block_names(layout, p.stage, j, p.index)
        for s in plan_layout(p, spec):
            if s.kind == "se":
                if not se:
                    raise ValueError(f"Keras' {layout} has no squeeze-excite (stage {p.stage})")
                m.update({f"stages.{p.stage}.{j}.se.conv_reduce": prefix + se[0],
                          f"stages.{p.stage}.{j}.se.conv_expand": prefix + se[1]})
            else:
                conv, bn = convs[s.name]
                m.update({f"stages.{p.stage}.{j}.{s.name}.conv": prefix + conv,
                          f"stages.{p.stage}.{j}.{s.name}.bn": prefix + bn})
    if spec.head_type != "conv":
        raise ValueError(f"Keras' {layout} has no head_type={spec.head_type!r}: only a conv head")
    m.update({"head.conv": head[0], "head.bn": head[1], "classifier": "predictions"})
    return KeyMap(m)


def detect(keys: Collection[str]) -> str | None:
    """The Keras layout of a state dict ('efficientnet', 'mobilenet_v2'), else None."""
    if "stem_conv/kernel" in keys:
        return "efficientnet"
    if "Conv1/kernel" in keys:
        return "mobilenet_v2"
    return None


TWINS = tuple(
    [Twin(f"EfficientNetB{i}", f"tf_efficientnet_b{i}", {"drop_path_rate": 0.2}, f"timm:tf_efficientnet_b{i}.aa_in1k",
          f"tf_efficientnet_b{i} (TF 'same' padding, BN eps 1e-3) with stochastic depth 0.2; input rescaling and "
          "normalisation move from the model to the evaluation config") for i in range(8)]
    + [Twin(f"MobileNetV2_{a}", f"mobilenetv2_{a}", {"padding": "same", "norm_eps": 1e-3, "norm_momentum": 1e-3},
            "keras:mobilenet_v2", f"mobilenetv2_{a} with TF 'same' padding and Keras' BN (eps 1e-3, momentum 0.999)")
       for a in ("050", "100", "140")]
)

KERAS = Scheme("keras", detect, key_map, TWINS, prepare=keras_to_torch)
