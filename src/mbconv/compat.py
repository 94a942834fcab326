"""Weights from timm: key mapping between timm's EfficientNet/MobileNet modules and `MBConvNet`, and loaders.

timm names modules by layer position inside a block (`conv_pw`, `bn1`, `conv_dw`, `bn2`, ...), so the same
word means different layers in different block types: `conv_pw` is the expansion conv of an InvertedResidual
but the projection of a DepthwiseSeparableConv, and `bn2` follows the depthwise conv in one and the projection
in the other. The mapping is therefore derived from the network's structure (`plan_blocks(spec)`: each block's
type and whether it has an expansion conv), never guessed from key names alone. Both directions use the same
table, so `mbconv_to_timm_state_dict(timm_to_mbconv_state_dict(sd, spec), spec) == sd`.

The library needs only torch; `timm` and `safetensors` are imported when a function needs them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .spec import BlockPlan, NetSpec, plan_blocks, plan_layout

if TYPE_CHECKING:
    from .net import MBConvNet

__all__ = ["from_timm", "load_timm_weights", "mbconv_to_timm_state_dict", "module_name_map",
           "timm_to_mbconv_state_dict"]

WeightSource = nn.Module | Mapping[str, Any] | str | os.PathLike

# Keys that wrap the real state dict in training checkpoints (timm's train.py writes 'state_dict').
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by DataParallel/DDP and torch.compile; a checkpoint saved from a wrapped model carries them.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
    """Module-path map {ours: timm's} for every module of `MBConvNet(spec)` that holds parameters or buffers.

    The map is at module level (e.g. 'stages.1.0.depthwise.bn' -> 'blocks.1.0.bn2'); parameter and buffer
    names below a module (weight, bias, running_mean, running_var, num_batches_tracked) are the same on both
    sides because both use plain torch Conv/BatchNorm/Linear layers.
    """
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


def _remap(state_dict: Mapping[str, Any], modules: Mapping[str, str]) -> dict[str, Any]:
    """Rename keys by their module path; keys under no mapped module keep their name (so a loader can
    report them as unexpected rather than silently dropping them)."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        new = f"{modules[module]}.{leaf}" if module in modules else key
        if new in out:
            raise ValueError(f"key {key!r} maps to {new!r}, which another key already produced")
        out[new] = value
    return out


def timm_to_mbconv_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: NetSpec
) -> dict[str, torch.Tensor]:
    """Rename a timm EfficientNet/MobileNetV2/V3 state dict to `MBConvNet(spec)` keys (tensors are shared,
    not copied). Keys that belong to no module of `spec` keep their timm name."""
    theirs_to_ours = {t: o for o, t in module_name_map(spec).items()}
    return _remap(state_dict, theirs_to_ours)


def mbconv_to_timm_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: NetSpec
) -> dict[str, torch.Tensor]:
    """The inverse of `timm_to_mbconv_state_dict`: `MBConvNet(spec)` keys to timm's."""
    return _remap(state_dict, module_name_map(spec))


# -- reading weights -----------------------------------------------------------------------------------
def _read_file(path: Path) -> Any:
    """Load a .safetensors file or a torch checkpoint without running pickled code."""
    if not path.is_file():
        raise ValueError(f"cannot read weights from {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError("reading .safetensors files needs the 'safetensors' package "
                              "(pip install safetensors)") from e
        loader = lambda: load_file(str(path), device="cpu")  # noqa: E731
    else:
        # weights_only=True: a checkpoint can hold only tensors and plain containers, never code.
        loader = lambda: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    try:
        return loader()
    except Exception as e:  # any reader failure means the file is not usable weights; say which file
        raise ValueError(f"cannot read weights from {str(path)!r}: {type(e).__name__}: {e}") from e


def _unwrap(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} dict inside a checkpoint (which may wrap it in 'state_dict'/'model')."""
    for _ in range(4):  # wrappers nest at most a few levels deep
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{origin} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)]
    if bad:
        raise ValueError(f"{origin} is not a state dict of tensors: non-tensor entries {bad}")
    sd = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _read_source(source: WeightSource) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description for error messages) from a module, a mapping or a file path."""
    if isinstance(source, nn.Module):
        return _unwrap(source, f"module {type(source).__name__}"), f"module {type(source).__name__}"
    if isinstance(source, Mapping):
        return _unwrap(source, "the given state dict"), "the given state dict"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        origin = f"{str(path)!r}"
        return _unwrap(_read_file(path), origin), origin
    raise TypeError(f"source must be a timm model, a state dict or a file path, not {type(source).__name__}")


def load_timm_weights(model: MBConvNet, source: WeightSource, strict: bool = True) -> MBConvNet:
    """Load timm weights into `model` (in place) and return it.

    `source` is a timm model, a timm state dict, or a path to a `.pth`/`.pt`/`.bin` checkpoint (read with
    `weights_only=True`; a dict wrapped in 'state_dict' or 'model' is unwrapped) or a `.safetensors` file.
    Every problem is reported in one ValueError: missing keys, unexpected keys and shape mismatches (the
    latter always, as torch does; `strict=False` only tolerates missing/unexpected keys). An unreadable file
    raises ValueError naming the path.
    """
    sd, origin = _read_source(source)
    spec: NetSpec = model.spec
    converted = timm_to_mbconv_state_dict(sd, spec)
    ours_to_theirs = module_name_map(spec)
    # Each converted key's name in the source (`_remap` keeps order, one to one), for messages in the
    # user's (timm) vocabulary.
    source_name = dict(zip(converted, sd))
    target = model.state_dict()

    def timm_name(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        return f"{ours_to_theirs[module]}.{leaf}" if module in ours_to_theirs else key

    missing = [f"{k} (timm: {timm_name(k)})" for k in target if k not in converted]
    unexpected = [k if source_name[k] == k else f"{source_name[k]} (ours: {k})"
                  for k in converted if k not in target]
    mismatched = [f"{k}: ours {tuple(target[k].shape)} vs file {tuple(v.shape)} (timm: {source_name[k]})"
                  for k, v in converted.items() if k in target and v.shape != target[k].shape]
    if not strict:
        missing, unexpected = [], []
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}):\n    " + "\n    ".join(missing))
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}):\n    " + "\n    ".join(unexpected))
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}):\n    " + "\n    ".join(mismatched))
    if problems:
        # Counts first: a wrong architecture gives hundreds of lines, and the summary says so at a glance.
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape mismatches"
        head = f"cannot load timm weights from {origin} into {spec.name!r} ({counts}):"
        raise ValueError(head + "\n  " + "\n  ".join(problems))
    model.load_state_dict({k: v for k, v in converted.items() if k in target}, strict=strict)
    return model


def from_timm(name_or_model: str | nn.Module, pretrained: bool = True, **timm_kwargs: Any) -> MBConvNet:
    """Our zoo model with the weights of the same-named timm model.

    `name_or_model` is a timm model name (created with `timm.create_model(name, pretrained=pretrained,
    **timm_kwargs)`; a pretrained tag such as 'efficientnet_b0.ra_in1k' is allowed) or a timm model object.
    Our model gets the timm model's num_classes, in_chans and drop_rate, and its train/eval mode.
    """
    from .zoo import create_model

    if isinstance(name_or_model, str):
        import timm

        tm = timm.create_model(name_or_model, pretrained=pretrained, **timm_kwargs)
        fallback = name_or_model.split(".")[0]
    elif isinstance(name_or_model, nn.Module):
        if timm_kwargs:
            raise ValueError(f"timm keyword arguments {sorted(timm_kwargs)} apply only when a name is given")
        tm, fallback = name_or_model, type(name_or_model).__name__
    else:
        raise TypeError(f"expected a timm model name or model, not {type(name_or_model).__name__}")
    cfg = getattr(tm, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") or fallback
    num_classes = getattr(tm, "num_classes", 1000)
    if not num_classes:
        raise ValueError(f"timm model {arch!r} has no classifier (num_classes=0); MBConvNet needs one")
    overrides: dict[str, Any] = dict(num_classes=num_classes, in_chans=getattr(tm, "in_chans", 3))
    if isinstance(getattr(tm, "drop_rate", None), float) and 0 <= tm.drop_rate < 1:
        overrides["drop_rate"] = tm.drop_rate
    try:
        model = create_model(arch, **overrides)
    except ValueError as e:
        raise ValueError(f"timm model {arch!r} has no mbconv zoo counterpart: {e}") from e
    load_timm_weights(model, tm)
    return model.train(tm.training)
