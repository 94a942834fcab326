"""ONNX graph clean-ups for ONNX Runtime, in place on an `onnx.ModelProto`, and SE width alignment.

ORT's blocked NCHWc convs want channel counts that are multiples of 8/16, constant Pad ops merged into the
conv's own pads, and global pooling as GlobalAveragePool (which ORT runs in the blocked layout and quantizes to
QLinearGlobalAveragePool); the TorchScript exporter emits none of these.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import torch
from torch import nn


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


def clean_onnx_graph(model: Any, global_pool: bool = True) -> Any:
    """Graph clean-ups for ONNX Runtime, in place on an `onnx.ModelProto`: remove Identity nodes, merge constant
    zero Pad nodes into the following Conv's `pads`, turn full-spatial keepdims ReduceMean into
    GlobalAveragePool (unless `global_pool=False`, kept to measure what it buys), drop unused initializers.
    Returns the model."""
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

    # 3. ReduceMean over every spatial axis -> GlobalAveragePool (ORT runs it in NCHWc layout; int8: quantized).
    shapes = value_ranks(model)
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
            if global_pool and axes is not None and rank is not None and rank >= 3 and \
                    sorted(a % rank for a in axes) == list(range(2, rank)):
                if keep == 1:
                    out.append(helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=n.name))
                else:  # the classifier's pooling: (N, C, 1, ...) flattened to (N, C)
                    mid = n.output[0] + "/gap"
                    out.append(helper.make_node("GlobalAveragePool", [n.input[0]], [mid], name=n.name))
                    out.append(helper.make_node("Flatten", [mid], [n.output[0]], name=n.name + "/flatten", axis=1))
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


def value_ranks(model: Any) -> dict[str, int]:
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
