"""Inference paths: exact BN folding, an eval-mode inference module, channels_last, torch.compile, ONNX export
with graph clean-ups, and ONNX Runtime checks.

`fuse_bn(model)` returns a copy in which every conv -> BatchNorm pair of a `ConvNormAct` is one conv with a
bias: y = gamma * (Wx + b - mean) / sqrt(var + eps) + beta  ==  W'x + b'  with  W' = W * s, b' = (b - mean) * s +
beta, s = gamma / sqrt(var + eps). Valid in eval mode only (running statistics are frozen).

`prepare_inference(model, resolution)` builds an `InferenceNet`: BN folded, drop path / dropout gone, TF-'same'
pads resolved for one input size (zero pads dropped, symmetric pads moved into the conv), activations, the SE
multiply and the residual add in place (no allocation), global pooling as adaptive pooling (exported as
GlobalAveragePool), optionally channels_last and `torch.compile`d. Its submodules keep the layer vocabulary
(`stem`, `stages[i][j].expand/.depthwise/.se/.project`, `.se.gate`, `head`, `classifier`), so hook-based tools
still find them.

`export_onnx(model, path, resolution)` exports that module with the TorchScript exporter (torch 2.14's default
dynamo exporter needs `onnxscript`, which is not installed here) and cleans the graph for ONNX Runtime: Pad ops
merged into the Conv's `pads` (asymmetric TF pads included), Identity nodes removed, spatial means as
GlobalAveragePool, SE squeeze widths zero-padded to a multiple of 16 (exact) so ORT keeps its blocked NCHWc
layout through the SE convs. `check_onnx` runs the file in ORT against PyTorch.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers.blocks import ConvBlock, DropPath, FusedMBConv, MBConv
from .layers.conv import ConvNormAct, SamePad, tf_same_pads
from .layers.se import SqueezeExcite

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


# -- BN folding ------------------------------------------------------------------------------------------------
@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A new conv equal to `bn(conv(x))` in eval mode (float64 arithmetic, cast back)."""
    fused = copy.deepcopy(conv)
    w = conv.weight.double()
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    fused.weight.copy_((w * s.reshape(-1, *([1] * (w.ndim - 1)))).to(conv.weight.dtype))
    fused.bias = nn.Parameter(((b - bn.running_mean.double()) * s + bn.bias.double()).to(conv.weight.dtype))
    return fused


@torch.no_grad()
def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm of every `ConvNormAct` into its conv; returns an eval-mode model (a copy unless
    `inplace`). Outputs equal the unfused eval model up to float rounding."""
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    for mod in m.modules():
        if isinstance(mod, ConvNormAct) and isinstance(mod.bn, _BN):
            mod.conv = fold_conv_bn(mod.conv, mod.bn)
            mod.bn = nn.Identity()
    return m


# -- static padding --------------------------------------------------------------------------------------------
def _spatial_size(resolution: int | Sequence[int], dims: int) -> tuple[int, ...]:
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


# -- the inference module --------------------------------------------------------------------------------------
def _set_inplace(act: nn.Module) -> nn.Module:
    """Activations that can overwrite their input do so (they only ever see a fresh conv output here)."""
    if hasattr(act, "inplace"):
        act.inplace = True
    return act


class InferenceConv(nn.Module):
    """conv (BN folded) -> activation, with TF-'same' pads resolved: none, folded into the conv, static, or (no
    resolution given) the original dynamic `SamePad`. `.conv`, `.act` keep the `ConvNormAct` names."""

    def __init__(self, cna: ConvNormAct, pads: list[int] | None, inplace: bool = True) -> None:
        super().__init__()
        self.conv = copy.deepcopy(cna.conv)
        self.act = _set_inplace(copy.deepcopy(cna.act)) if inplace else copy.deepcopy(cna.act)
        self.pads: list[int] | None = None
        self.pad: nn.Module | None = None
        if isinstance(cna.pad, SamePad):
            if pads is None:
                self.pad = copy.deepcopy(cna.pad)  # unknown input size: keep computing the pad at run time
            elif any(pads):
                dims = len(pads) // 2
                per_axis = [(pads[2 * (dims - 1 - i)], pads[2 * (dims - 1 - i) + 1]) for i in range(dims)]
                if all(a == b for a, b in per_axis):  # symmetric: the conv pads for free
                    self.conv.padding = tuple(a for a, _ in per_axis)
                else:
                    self.pads = list(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        elif self.pads is not None:
            x = F.pad(x, self.pads)
        return self.act(self.conv(x))


class InferenceSE(nn.Module):
    """Squeeze-excite with adaptive pooling (GlobalAveragePool in ONNX) and, when safe, an in-place multiply.
    Keeps `.conv_reduce`, `.act`, `.conv_expand`, `.gate` so gate hooks still work."""

    def __init__(self, se: SqueezeExcite, inplace: bool) -> None:
        super().__init__()
        self.dims = se.dims
        self.conv_reduce = copy.deepcopy(se.conv_reduce)
        self.act = copy.deepcopy(se.act)
        self.conv_expand = copy.deepcopy(se.conv_expand)
        self.gate = copy.deepcopy(se.gate)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(self.conv_expand(self.act(self.conv_reduce(_POOL[self.dims](x, 1)))))
        return x.mul_(g) if self.inplace else x * g


class InferenceBlock(nn.Module):
    """One block as a fixed sequence of named ops and an optional residual; no drop path."""

    def __init__(self, ops: list[tuple[str, nn.Module]], has_skip: bool, inplace: bool) -> None:
        super().__init__()
        self.op_names = [n for n, _ in ops]
        for name, mod in ops:
            self.add_module(name, mod)
        self.has_skip = has_skip
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        for name in self.op_names:
            x = getattr(self, name)(x)
        if self.has_skip:
            return x.add_(shortcut) if self.inplace else x + shortcut
        return x


class InferenceNet(nn.Module):
    """Eval-mode MBConv network free of training-only branches (see the module docstring). With `inplace` the
    forward runs without autograd (activations overwrite their inputs)."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, head: nn.Module, classifier: nn.Module,
                 head_type: str, dims: int, inplace: bool, spec: Any = None) -> None:
        super().__init__()
        self.stem, self.stages, self.head, self.classifier = stem, stages, head, classifier
        self.head_type, self.dims, self.inplace, self.spec = head_type, dims, inplace, spec

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(x) if self.head_type == "conv" else x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = _POOL[self.dims](x, 1)
        if self.head_type == "pool_conv":
            x = self.head(x)
        return self.classifier(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and torch.is_grad_enabled():
            with torch.no_grad():
                return self.forward_head(self.forward_features(x))
        return self.forward_head(self.forward_features(x))


def _conv(mod: nn.Module, name: str, pads: dict[str, list[int]] | None, inplace: bool) -> nn.Module:
    if isinstance(mod, ConvNormAct):
        if not isinstance(mod.bn, nn.Identity):
            raise ValueError(f"{name}: BatchNorm not folded (call fuse_bn first)")
        return InferenceConv(mod, None if pads is None else pads.get(f"{name}.pad", []), inplace)
    return copy.deepcopy(mod)  # unknown layer: kept as it is


def _block(block: nn.Module, name: str, pads: dict[str, list[int]] | None, inplace: bool) -> nn.Module:
    """The inference form of a block; the op order mirrors the block's forward."""
    def se(pos: int) -> InferenceSE:
        return InferenceSE(block.se, inplace=inplace and pos > 0)  # never overwrite the block input (shortcut)

    ops: list[tuple[str, nn.Module]] = []
    if isinstance(block, MBConv):  # includes DepthwiseSeparable
        if block.expand is not None:
            ops.append(("expand", _conv(block.expand, f"{name}.expand", pads, inplace)))
        if block.se is not None and block.se_position == "before_dw":
            ops.append(("se", se(len(ops))))
        ops.append(("depthwise", _conv(block.depthwise, f"{name}.depthwise", pads, inplace)))
        if block.se is not None and block.se_position == "after_dw":
            ops.append(("se", se(len(ops))))
        ops.append(("project", _conv(block.project, f"{name}.project", pads, inplace)))
    elif isinstance(block, FusedMBConv):
        if block.se is not None and block.se_position == "before_dw":
            ops.append(("se", se(0)))
        ops.append(("expand", _conv(block.expand, f"{name}.expand", pads, inplace)))
        if block.se is not None and block.se_position == "after_dw":
            ops.append(("se", se(len(ops))))
        ops.append(("project", _conv(block.project, f"{name}.project", pads, inplace)))
    elif isinstance(block, ConvBlock):
        ops.append(("conv", _conv(block.conv, f"{name}.conv", pads, inplace)))
    else:
        return copy.deepcopy(block)
    return InferenceBlock(ops, bool(block.has_skip), inplace)


def strip_training(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace drop path and dropout modules by Identity and switch to eval mode (a copy unless `inplace`)."""
    m = model if inplace else copy.deepcopy(model)
    for parent in list(m.modules()):
        for cname, child in list(parent.named_children()):
            if isinstance(child, (DropPath, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
                setattr(parent, cname, nn.Identity())
    return m.eval()


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
                      inplace: bool = True) -> InferenceNet:
    """The fast eval-mode form of an MBConv network (see `InferenceNet`); outputs equal `model.eval()(x)` up to
    float rounding. With `resolution` the TF-'same' pads are fixed for that input size (other sizes then give
    wrong results for tf_ models); without it they stay dynamic. The input model is not modified. Pass
    `inplace=False` when hooks must record conv outputs (an in-place activation overwrites them)."""
    for attr in ("stem", "stages", "head", "classifier", "spec"):
        if not hasattr(model, attr):
            raise ValueError(f"prepare_inference needs an MBConvNet-like model with .{attr}; got "
                             f"{type(model).__name__}")
    spec = model.spec
    m = strip_training(fuse_bn(model), inplace=True)
    pads = None
    if resolution is not None:
        size = _spatial_size(resolution, spec.dims)
        pads = record_pads(m, torch.zeros(1, spec.in_chans, *size))
    stages = nn.Sequential(*[nn.Sequential(*[_block(b, f"stages.{i}.{j}", pads, inplace)
                                             for j, b in enumerate(stage)]) for i, stage in enumerate(m.stages)])
    head = _conv(m.head, "head", pads, inplace) if spec.head_type != "none" else nn.Identity()
    net = InferenceNet(_conv(m.stem, "stem", pads, inplace), stages, head, copy.deepcopy(m.classifier),
                       spec.head_type, spec.dims, inplace, spec).eval()
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


# -- ONNX export -----------------------------------------------------------------------------------------------
@torch.no_grad()
def align_se(model: nn.Module, multiple: int = 16) -> nn.Module:
    """Zero-pad every SE squeeze width (conv_reduce outputs / conv_expand inputs) up to a multiple of `multiple`,
    in place. Exact: the extra channels are act(0 + 0) weighted by zero columns. ORT's blocked NCHWc convs need
    channel counts that are multiples of its block (8 or 16); otherwise it reorders tensors around the SE."""
    for mod in model.modules():
        r, e = getattr(mod, "conv_reduce", None), getattr(mod, "conv_expand", None)
        if not isinstance(r, nn.modules.conv._ConvNd) or not isinstance(e, nn.modules.conv._ConvNd):
            continue
        rd = r.out_channels
        new = -(-rd // multiple) * multiple
        if new == rd or r.groups != 1 or e.groups != 1:
            continue
        # exact only when act(0) == 0 (relu, swish, gelu, hard_swish); otherwise leave the layer as it is
        if float(mod.act(torch.zeros(1)).abs()) != 0.0:
            continue
        nr = type(r)(r.in_channels, new, r.kernel_size, bias=True).to(r.weight)
        ne = type(e)(new, e.out_channels, e.kernel_size, bias=e.bias is not None).to(e.weight)
        nr.weight.zero_()
        nr.bias.zero_()
        nr.weight[:rd] = r.weight
        if r.bias is not None:
            nr.bias[:rd] = r.bias
        ne.weight.zero_()
        ne.weight[:, :rd] = e.weight
        if e.bias is not None:
            ne.bias.copy_(e.bias)
        mod.conv_reduce, mod.conv_expand = nr, ne
    return model


def clean_onnx_graph(model: Any) -> Any:
    """Graph clean-ups for ONNX Runtime, in place on an `onnx.ModelProto`: remove Identity nodes, merge constant
    zero Pad nodes into the following Conv's `pads`, turn full-spatial keepdims ReduceMean into
    GlobalAveragePool, drop unused initializers. Returns the model."""
    from onnx import helper, numpy_helper

    g = model.graph
    fold_constants(model)
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    graph_outputs = {o.name for o in g.output}

    def const_value(name: str) -> Any:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    # 1. Identity removal: rewire consumers to the Identity's input (unless it produces a graph output).
    rename: dict[str, str] = {}
    kept = []
    for n in g.node:
        if n.op_type == "Identity" and n.output[0] not in graph_outputs:
            rename[n.output[0]] = rename.get(n.input[0], n.input[0])
            continue
        kept.append(n)
    for n in kept:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]

    # 2. Pad -> Conv merge (the TF 'same' pads of strided convs, also asymmetric ones).
    consumers = Counter(name for n in kept for name in n.input)
    by_input: dict[str, list[Any]] = {}
    for n in kept:
        for name in n.input:
            by_input.setdefault(name, []).append(n)
    drop = set()
    for n in kept:
        if n.op_type != "Pad" or consumers[n.output[0]] != 1 or n.output[0] in graph_outputs:
            continue
        mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
        pads = const_value(n.input[1]) if len(n.input) > 1 else None
        value = const_value(n.input[2]) if len(n.input) > 2 and n.input[2] else 0.0
        nxt = by_input[n.output[0]][0]
        if mode != "constant" or pads is None or float(value) != 0.0 or nxt.op_type != "Conv" \
                or nxt.input[0] != n.output[0]:
            continue
        rank = len(pads) // 2
        if any(pads[i] or pads[rank + i] for i in range(2)) or any(p < 0 for p in pads):
            continue  # pads on batch/channel axes or crops: not a conv pad
        spatial = [int(p) for p in pads[2:rank]] + [int(p) for p in pads[rank + 2:]]
        attrs = {a.name: a for a in nxt.attribute}
        old = list(attrs["pads"].ints) if "pads" in attrs else [0] * len(spatial)
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        new = [a + b for a, b in zip(old, spatial)]
        for a in list(nxt.attribute):
            if a.name == "pads":
                nxt.attribute.remove(a)
        nxt.attribute.append(helper.make_attribute("pads", new))
        nxt.input[0] = n.input[0]
        drop.add(id(n))
    kept = [n for n in kept if id(n) not in drop]

    # 3. ReduceMean over every spatial axis with keepdims -> GlobalAveragePool (ORT runs it in NCHWc layout).
    shapes = _value_ranks(model)
    out = []
    for n in kept:
        if n.op_type == "ReduceMean":
            attrs = {a.name: a for a in n.attribute}
            keep = attrs["keepdims"].i if "keepdims" in attrs else 1
            axes = list(attrs["axes"].ints) if "axes" in attrs else None
            if axes is None and len(n.input) > 1:
                v = const_value(n.input[1])
                axes = None if v is None else [int(a) for a in v]
            rank = shapes.get(n.input[0])
            if keep == 1 and axes is not None and rank is not None and rank >= 3 and \
                    sorted(a % rank for a in axes) == list(range(2, rank)):
                out.append(helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=n.name))
                continue
        out.append(n)

    # 4. Drop dead Constant nodes and unused initializers.
    used = {name for n in out for name in n.input} | graph_outputs
    out = [n for n in out if not (n.op_type == "Constant" and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(out)
    used = {name for n in out for name in n.input}
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    return model


def fold_constants(model: Any) -> Any:
    """Evaluate, in place, every non-Constant node whose inputs are all constants (the exporter's pad-list
    arithmetic: ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast) and store its outputs as initializers."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    known: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    graph_inputs = {i.name for i in g.input} - set(known)
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    kept = []
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            known[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            kept.append(n)
            continue
        ins = [i for i in n.input if i]
        if n.domain in ("", "ai.onnx") and ins and all(i in known and i not in graph_inputs for i in ins):
            sub = helper.make_graph([n], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in n.output],
                                    initializer=[numpy_helper.from_array(known[i], i) for i in set(ins)])
            try:
                vals = ReferenceEvaluator(helper.make_model(sub, opset_imports=opset)).run(None, {})
            except Exception:  # an op the reference evaluator lacks: leave the node to ORT
                kept.append(n)
                continue
            for name, v in zip(n.output, vals):
                known[name] = v
                g.initializer.append(numpy_helper.from_array(v, name))
            continue
        kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    return model


def _value_ranks(model: Any) -> dict[str, int]:
    """Tensor ranks from ONNX shape inference (names without a known rank are absent)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = len(t.shape.dim)
    return ranks


def op_counts(path_or_model: str | os.PathLike | Any) -> dict[str, int]:
    """Node count per op type of an ONNX file or ModelProto."""
    import onnx

    m = onnx.load(str(path_or_model)) if isinstance(path_or_model, (str, os.PathLike)) else path_or_model
    return dict(Counter(n.op_type for n in m.graph.node))


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int | Sequence[int] | None = None,
                dynamic_batch: bool = True, opset: int = 17, se_multiple: int = 16, clean: bool = True,
                input_name: str = "input") -> dict:
    """Export an MBConv network to ONNX for inference: `prepare_inference` (BN folded, static TF pads, no training
    branches), SE widths aligned for ORT (`se_multiple`, 0 = off), TorchScript exporter, then `clean_onnx_graph`.
    Input `input_name` (N, C, *size) with a dynamic batch axis, output `logits`. Returns a summary dict (path,
    input shape, op counts). `resolution` defaults to the spec's."""
    import onnx

    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError(f"export_onnx needs an MBConvNet-like model with .spec; got {type(model).__name__}")
    if opset < 14:
        raise ValueError(f"invalid opset={opset}: need >= 14 (HardSwish, SiLU as Sigmoid*Mul)")
    size = _spatial_size(resolution if resolution is not None else spec.resolution, spec.dims)
    net = prepare_inference(model, size, channels_last=False, inplace=False)
    if se_multiple:
        align_se(net, se_multiple)
    x = torch.randn(1, spec.in_chans, *size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {input_name: {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=["logits"], dynamic_axes=axes, do_constant_folding=True)
    m = onnx.load(str(path))
    if clean:
        clean_onnx_graph(m)
    m.producer_name = "mbconv"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return {"path": str(path), "input_shape": ["batch" if dynamic_batch else 1, spec.in_chans, *size],
            "opset": opset, "ops": op_counts(m)}


# -- ONNX Runtime --------------------------------------------------------------------------------------------
def ort_session(path: str | os.PathLike, threads: int = 1, level: str = "all", profile_prefix: str | None = None,
                disabled_optimizers: Sequence[str] = (), spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads (one inter-op thread) and graph optimisation
    `level` ('disable' | 'basic' | 'extended' | 'all'). `spinning=False` stops idle pool threads from busy-waiting
    (they would steal a shared core from whatever runs next)."""
    import onnxruntime as ort

    if not Path(path).exists():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if level not in levels:
        raise ValueError(f"invalid level={level!r}: expected one of {sorted(levels)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = levels[level]
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


def ort_run(session: Any, x: torch.Tensor) -> torch.Tensor:
    """Run a one-input session on `x`; returns the first output as a tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0])


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | os.PathLike, x: torch.Tensor, threads: int = 1) -> float:
    """Max abs difference between ORT running `path` on `x` and `model.eval()(x)` in PyTorch."""
    was = model.training
    model.eval()
    ref = model(x)
    model.train(was)
    out = ort_run(ort_session(path, threads), x)
    if out.shape != ref.shape:
        raise ValueError(f"ONNX output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}")
    return float((out - ref).abs().max())
