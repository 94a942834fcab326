"""The inference form of a network: the same module, rewritten in place on a copy for fast eval-mode runs.

`prepare_inference(model, resolution)` returns a copy of an MBConvNet with BN folded (`mbconv.layers.fuse`), drop
path / dropout gone, TF-'same' pads resolved for one input size (zero pads dropped, symmetric pads moved into the
conv, the rest a constant `StaticPad`), and optionally activations, the SE multiply and the residual add in place
(no allocation), channels_last and `torch.compile`. It is no parallel class tree: the blocks run their own
layout (`mbconv.layers.layout`), so names (`stem`, `stages[i][j].expand/.depthwise/.se/.project`, `.se.gate`,
`head`, `classifier`) and hooks stay as they were. Every export (ONNX fp32 and int8, phone formats) starts here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .layers import Block, ConvNormAct, SamePad, SqueezeExcite, StaticPad, fuse_bn, strip_training, tf_same_pads


def spatial_size(resolution: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """`resolution` (one int or `dims` ints) as a tuple of `dims` positive ints; ValueError naming it otherwise."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, Sequence)):
        raise ValueError(f"invalid resolution={resolution!r}: expected a positive int or {dims} positive ints")
    size = (resolution,) * dims if isinstance(resolution, int) else tuple(resolution)
    if len(size) != dims or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"invalid resolution={resolution!r}: expected a positive int or {dims} positive ints")
    return size


@torch.no_grad()
def record_pads(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """The F.pad list (last axis first) each `SamePad` module of `model` applies to input `x`, by module name."""
    pads: dict[str, list[int]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, SamePad):
            def hook(m: SamePad, args: tuple, name: str = name) -> None:
                p: list[int] = []
                for size in reversed(args[0].shape[-m.dims:]):
                    p.extend(tf_same_pads(int(size), m.kernel, m.stride))
                pads[name] = p
            handles.append(mod.register_forward_pre_hook(hook))
    try:
        was = model.training
        model.eval()
        model(x)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return pads


def resolve_pad(cna: ConvNormAct, pads: list[int]) -> None:
    """Replace a `SamePad` by what input-size `pads` make of it, in place: nothing (zero pads), the conv's own
    symmetric padding, or a `StaticPad`."""
    if not any(pads):
        cna.pad = nn.Identity()
        return
    dims = len(pads) // 2
    per_axis = [(pads[2 * (dims - 1 - i)], pads[2 * (dims - 1 - i) + 1]) for i in range(dims)]
    if all(a == b for a, b in per_axis):  # symmetric: the conv pads for free
        cna.conv.padding = tuple(a for a, _ in per_axis)
        cna.pad = nn.Identity()
    else:
        cna.pad = StaticPad(pads)


def set_inplace(model: nn.Module) -> None:
    """Activations, SE multiplies and residual adds overwrite their inputs where that is safe: a conv's activation
    only ever sees a fresh conv output; an SE never overwrites its block's input (the shortcut, or a tapped map)."""
    for mod in model.modules():
        if isinstance(mod, ConvNormAct) and hasattr(mod.act, "inplace"):
            mod.act.inplace = True
        if isinstance(mod, Block):
            mod.inplace = True
            for i, name in enumerate(mod.steps):
                step = getattr(mod, name)
                if isinstance(step, SqueezeExcite):
                    step.inplace = i > 0
    model.inplace = True


def to_channels_last(model: nn.Module) -> nn.Module:
    """Weights in channels_last (2-D) / channels_last_3d (3-D) layout, in place; 1-D models are unchanged. The
    input should be converted the same way (`channels_last_input`)."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if any(isinstance(m, nn.Conv3d) for m in convs):
        return model.to(memory_format=torch.channels_last_3d)
    if convs:
        return model.to(memory_format=torch.channels_last)
    return model


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """`x` in the memory layout `to_channels_last` gives the weights."""
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def prepare_inference(model: nn.Module, resolution: int | Sequence[int] | None = None, channels_last: bool = False,
                      inplace: bool = True) -> nn.Module:
    """The fast eval-mode form of an MBConv network (see the module docstring): a copy, outputs equal to
    `model.eval()(x)` up to float rounding. With `resolution` the TF-'same' pads are fixed for that input size
    (other sizes then give wrong results for tf_ models); without it they stay dynamic. Pass `inplace=False` when
    hooks must record conv outputs (an in-place activation overwrites them) or for export."""
    for attr in ("stem", "stages", "head", "classifier", "spec"):
        if not hasattr(model, attr):
            raise ValueError(f"prepare_inference needs an MBConvNet-like model with .{attr}; got "
                             f"{type(model).__name__}")
    spec = model.spec
    net = strip_training(fuse_bn(model), inplace=True)
    if resolution is not None:
        size = spatial_size(resolution, spec.dims)
        pads = record_pads(net, torch.zeros(1, spec.in_chans, *size))
        for name, mod in net.named_modules():
            if isinstance(mod, ConvNormAct) and isinstance(mod.pad, SamePad):
                resolve_pad(mod, pads.get(f"{name}.pad", []))
    if inplace:
        set_inplace(net)
    for p in net.parameters():
        p.requires_grad_(False)
    return to_channels_last(net) if channels_last else net


def compile_model(model: nn.Module, example: torch.Tensor, freezing: bool = True, mode: str | None = None) -> Any:
    """`torch.compile(model)` (inductor) compiled and warmed up on `example`; with `freezing` the weights are
    constants (inductor folds them and pre-packs them for oneDNN, the fast CPU path). Needs a C++ compiler."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, backend="inductor", mode=mode, dynamic=False)
    with inductor_config.patch(freezing=freezing), torch.no_grad():
        compiled(example)
    return compiled

