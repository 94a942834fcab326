"""ExecuTorch (.pte) deployment for phones: XNNPACK-delegated programs in fp32 and int8, and their runtime.

- fp32 (`export_pte`): `torch.export` of the inference module (`mbconv.inference.prepare_inference`, as every
  export), lowered by `executorch.exir.to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`.
- int8 (`export_pte_int8`): PT2E static quantization with ExecuTorch's `XNNPACKQuantizer` (symmetric int8
  weights, per channel; affine int8 activations per tensor, min/max-calibrated on data), then the same
  lowering. The quantizer annotates convs, adds, muls and the ops that share their input's scale (ReLU, means,
  reshapes); conv -> ReLU6 is observed after the clamp (`annotate_conv_relu6`; the stock quantizer does that for
  ReLU only), and SiLU is split into x * sigmoid(x) (`split_silu`) so its mul is int8. Sigmoid and hard-swish
  are handed to the delegate in fp32 between a dequantize and a quantize (its partitioner takes them in fp32
  only); XNNPACK then runs them as int8 unary operators (B0's ETDump profile shows no conversions around them).
- Bias correction (`bias_correction=True`, `bias_corrected_copy`; Nagel et al. 2019, `mbconv.quant.correct_bias`):
  the mean output shift E[dW x] of each layer's weight rounding, measured with fake-quant weights on the PT2E
  grid (per-channel symmetric int8 in [-127, 127], scale max|w| / 127, at least the observer's eps 2^-12), is
  moved into the biases of a float copy, which PT2E then quantizes: PT2E rounds the weights exactly as the
  correction assumed, so the corrected biases cancel its own rounding shift (as ORT's int8 inherits it in
  docs/bench/real.md).
- TF-"same" pads (`fold_pads_into_convs`, on by default): PT2E leaves each explicit pad in front of a strided conv
  unquantized, which XNNPACK runs in fp32 between two int8 <-> fp32 conversions (on Lite0 ~28 % of the int8
  program); the rewrite lets the partitioner take each pad into its int8 conv, where XNNPACK folds it into the
  conv's padding. Same outputs (docs/bench/phone.md, "Where Lite0's int8 time goes").
- Spatial means (`rewrite_means`): XNNPACK lowers a mean only over the last two axes of a 4-D tensor with
  keepdim, so the classifier's pooling (keepdim=False) and every 1-D mean (3-D tensors) are rewritten as such a
  mean plus a reshape; otherwise they run as portable kernels between delegate calls.
- 1-D nets lower completely (XNNPACK runs a 1-D conv as a 2-D one); 3-D nets do not: XNNPACK has no 3-D conv and
  the portable convolution kernel takes only 3-D/4-D tensors, so `export_pte` refuses them.
- Runtime: `executorch.runtime.Runtime` (`pte_method`, `pte_run`); the XNNPACK delegate's threads come from
  ExecuTorch's process-wide threadpool (`set_pte_threads`).

Programs have a static input shape (batch 1 by default: the phone case). Needs the `phone` extra (executorch,
torchao): every import of it is inside a function, so the rest of mbconv works without it.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import itertools
import logging
import os
import re
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import output_file
from ..layers import fuse_bn
from ..quant.bias_correction import correct_bias, float_copy
from ..quant.insert import QuantConfig, insert_quantizers, quantizers
from ..quant.noise import sqnr_db
from ..quant.ptq import calibrate, iter_batches
from .to_onnx import inference_graph_module

PHONE_HINT = "pip install 'mbconv[phone]'"
OBSERVERS = ("minmax", "histogram")
# The XNNPACK quantizer's weight observer (PerChannelMinMaxObserver, symmetric, [-127, 127]) floors every scale at
# this eps; the fake-quant grid of `bias_corrected_copy` floors at it too, so both round every weight alike.
PT2E_WEIGHT_EPS = 2.0**-12


def need_executorch(module: str = "executorch") -> Any:
    """Import `module` (executorch or torchao); a missing `phone` extra gives one ImportError line naming it."""
    pytree_log = logging.getLogger("torch.utils._pytree")  # torchao's import logs a deprecation notice there
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # executorch's "experimental API" notices on import
            return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"ExecuTorch export needs {module.split('.')[0]}: {PHONE_HINT}") from e
    finally:
        pytree_log.setLevel(level)


# -- graph: torch.export of the inference module ---------------------------------------------------------------
def rewrite_means(gm: torch.fx.GraphModule) -> int:
    """Rewrite every mean over all spatial axes of a 3-D (1-D net) or 4-D (2-D net) tensor that XNNPACK cannot
    lower (keepdim=False, or a 3-D input) as a keepdim mean over the last two axes of a 4-D tensor plus a reshape,
    in place on an exported graph module. Returns how many were rewritten."""
    aten = torch.ops.aten
    g = gm.graph
    count = 0
    for n in list(g.nodes):
        if n.op != "call_function" or n.target != aten.mean.dim:
            continue
        src = n.args[0]
        val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = bool(n.args[2]) if len(n.args) > 2 else bool(n.kwargs.get("keepdim", False))
        if val is None or val.dim() not in (3, 4) or dims is None or n.kwargs.get("dtype") is not None:
            continue
        rank = val.dim()
        if sorted(int(d) % rank for d in dims) != list(range(2, rank)) or (rank == 4 and keep):
            continue  # not a spatial pool, or already XNNPACK's form
        steps = ([(aten.unsqueeze.default, (-1,))] if rank == 3 else []) + [(aten.mean.dim, ([2, 3], True))]
        if not keep:
            steps.append((aten.flatten.using_ints, (1,)))
        elif rank == 3:  # a view, not a squeeze: XNNPACK lowers reshapes with one inferred axis
            steps.append((aten.view.default, ([-1, int(val.shape[1]), 1],)))
        out, v = src, val
        with g.inserting_before(n):
            for op, args in steps:
                out = g.call_function(op, (out, *args))
                with v.fake_mode:  # the quantizer and the lowering read every node's example value
                    v = op(v, *args)
                out.meta["val"] = v
        n.replace_all_uses_with(out)
        g.erase_node(n)
        count += 1
    if count:
        g.lint()
        gm.recompile()
    return count


def split_silu(gm: torch.fx.GraphModule) -> int:
    """Rewrite every SiLU as x * sigmoid(x), in place on an exported graph module (before quantization). The
    XNNPACK quantizer annotates the mul, so it runs in int8 with only the sigmoid in fp32; a whole SiLU would stay
    fp32 with a dequantize/quantize around it. EfficientNet-B0 int8 at 224 px: x1.34 -> x1.81 over fp32 (one run,
    loaded machine); on a trained B0 proxy (MNIST) the same logit SQNR (24.9 vs 25.1 dB). Returns the count."""
    g = gm.graph
    count = 0
    for n in list(g.nodes):
        if n.op != "call_function" or n.target not in (torch.ops.aten.silu.default, torch.ops.aten.silu_.default):
            continue
        x = n.args[0]
        with g.inserting_before(n):
            gate = g.call_function(torch.ops.aten.sigmoid.default, (x,))
            out = g.call_function(torch.ops.aten.mul.Tensor, (x, gate))
        gate.meta["val"] = out.meta["val"] = n.meta["val"]  # same shape and dtype as the SiLU's output
        n.replace_all_uses_with(out)
        g.erase_node(n)
        count += 1
    if count:
        g.lint()
        gm.recompile()
    return count


def _refuse_3d(model: nn.Module) -> None:
    spec = getattr(model, "spec", None)
    if spec is not None and spec.dims == 3:
        raise ValueError("ExecuTorch cannot run 3-D nets (dims=3): XNNPACK has no 3-D convolution and the "
                         "portable kernel takes only 1-D/2-D convs")


def phone_module(model: nn.Module, resolution: int | Sequence[int] | None = None,
                 example: torch.Tensor | None = None, batch: int = 1) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """(graph module, example input of `batch` samples): `torch.export` of the inference module of `model` (an
    MBConv network through `prepare_inference`, any other module BN-folded; size from `example`, else
    `resolution`, else the spec's) with its means rewritten for XNNPACK (`rewrite_means`)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"invalid batch={batch!r}: expected a positive int")
    _refuse_3d(model)
    net, x = inference_graph_module(model, example, resolution)
    x = x.expand(batch, *x.shape[1:]).contiguous()
    with torch.no_grad():
        gm = torch.export.export(net, (x,)).module()
    rewrite_means(gm)
    return gm, x


# -- int8: PT2E with the XNNPACK quantizer --------------------------------------------------------------------
def annotate_conv_relu6(gm: torch.fx.GraphModule, config: Any) -> int:
    """Annotate every conv -> ReLU6 (hardtanh 0..6) pair as one quantized op whose output is observed after the
    clamp, in place, as the XNNPACK quantizer does for conv -> ReLU (XNNPACK fuses either clamp into the conv).
    Without it the conv output is quantized on its unclamped range and the ReLU6 shares that scale: on the
    pretrained EfficientNet-Lite0 the logit SQNR drops from ~16 dB to 3.5 dB. Returns the number of pairs."""
    qu = need_executorch("executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils")
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY as key

    convs = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default)
    count = 0
    for act in gm.graph.nodes:
        if act.op != "call_function" or act.target not in (torch.ops.aten.hardtanh.default,
                                                             torch.ops.aten.hardtanh_.default):
            continue
        lo = act.args[1] if len(act.args) > 1 else -1.0  # aten.hardtanh's defaults
        hi = act.args[2] if len(act.args) > 2 else 1.0
        conv = act.args[0]
        if (float(lo), float(hi)) != (0.0, 6.0) or not isinstance(conv, torch.fx.Node) or conv.target not in convs \
                or len(conv.users) != 1 or key in conv.meta or key in act.meta:
            continue
        qspecs = {conv.args[0]: qu.get_input_act_qspec(config), conv.args[1]: qu.get_weight_qspec(config)}
        if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node):
            qspecs[conv.args[2]] = qu.get_bias_qspec(config)
        conv.meta[key] = QuantizationAnnotation(input_qspec_map=qspecs, _annotated=True)
        act.meta[key] = QuantizationAnnotation(output_qspec=qu.get_output_act_qspec(config), _annotated=True)
        for n in [conv.args[1], *conv.args[2:3]]:  # weight and bias belong to the pattern (as in the quantizer)
            if isinstance(n, torch.fx.Node):
                n.meta.setdefault(key, QuantizationAnnotation())._annotated = True
        count += 1
    return count


def is_zero_pad(node: torch.fx.Node) -> bool:
    """Whether `node` pads with zeros (aten.pad in constant mode, or aten.constant_pad_nd), by non-negative
    amounts (XNNPACK takes no cropping)."""
    if node.op != "call_function":
        return False
    if node.target == torch.ops.aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    elif node.target == torch.ops.aten.constant_pad_nd.default:
        mode, value = "constant", node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0.0)
    else:
        return False
    return mode == "constant" and (value is None or float(value) == 0.0) and min(node.args[1], default=0) >= 0


def fold_pads_into_convs(gm: torch.fx.GraphModule) -> int:
    """Let XNNPACK fold every zero pad in front of a quantized conv into that conv, in place on a converted PT2E
    graph module. Returns the number of pads so rewritten.

    PT2E leaves the explicit pads of TF-"same" padding (the strided convs of TF EfficientNets and Lite) unquantized
    between a dequantize and the conv's input quantize: XNNPACK then runs each pad in fp32 with an int8 -> fp32 and
    an fp32 -> int8 conversion around it, and cannot fold it into the conv (on the pretrained Lite0, its 5 pads and
    10 conversions were ~28 % of the int8 program's time, docs/bench/phone.md). ExecuTorch's XNNPACK partitioner
    takes a zero pad whose input is a dequantize into the quantized conv it feeds (as an int8 pad, which XNNPACK
    folds into the conv's padding), so this drops the redundant quantize/dequantize pair between pad and conv
    when it requantizes to the pad input's own parameters (min/max observers give exactly those: a zero pad adds
    no new value to the range), and moves it in front of a pad of a float input (the network input): quantizing
    then padding is exact, since 0 quantizes to the zero point. The module's outputs do not change."""
    qd = torch.ops.quantized_decomposed
    convs = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default)
    g = gm.graph
    count = 0
    for pad in list(g.nodes):
        if not is_zero_pad(pad) or len(pad.users) != 1:
            continue
        q = next(iter(pad.users))
        if q.target != qd.quantize_per_tensor.default or len(q.users) != 1:
            continue
        dq = next(iter(q.users))
        if dq.target != qd.dequantize_per_tensor.default or tuple(dq.args[1:]) != tuple(q.args[1:]) \
                or len(dq.users) != 1 or next(iter(dq.users)).target not in convs:
            continue
        src = pad.args[0]
        if isinstance(src, torch.fx.Node) and src.target == qd.dequantize_per_tensor.default:
            if tuple(src.args[1:]) != tuple(q.args[1:]):
                continue  # a real requantization (e.g. histogram observers): not ours to drop
            dq.replace_all_uses_with(pad)
            g.erase_node(dq)
            g.erase_node(q)
        else:  # src -> q -> dq -> pad -> conv
            dq.replace_all_uses_with(pad)
            q.replace_input_with(pad, src)
            pad.replace_input_with(src, dq)
            pad.prepend(q)
            pad.prepend(dq)
            for n in (q, dq):
                n.meta.pop("val", None)  # the shapes changed; the lowering re-exports the module anyway
        count += 1
    if count:
        g.lint()
        gm.recompile()
    return count


@torch.no_grad()
def quantize_pt2e(model: nn.Module, calib: Any, resolution: int | Sequence[int] | None = None, *,
                  example: torch.Tensor | None = None, per_channel: bool = True, observer: str = "minmax",
                  num_samples: int | None = None, batch_size: int = 32, bias_correction: bool = False,
                  fold_pads: bool = True) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """(quantized graph module, batch-1 example): the PT2E int8 form of `model` that `export_pte_int8` lowers,
    calibrated on `calib` (a tensor N, C, ..., a Dataset of (x, y) or an iterable of batches; `num_samples` of
    them, all if None) with activation `observer`s (see `xnnpack_quantizer`). With `bias_correction`, PT2E
    quantizes `bias_corrected_copy(model, calib)` instead (same calibration samples). With `fold_pads`, the
    explicit zero pads in front of convs are arranged so that XNNPACK folds them into the int8 convs
    (`fold_pads_into_convs`; same outputs, faster program). Running the module in PyTorch gives the reference
    (quantize/dequantize) int8 outputs."""
    if observer not in OBSERVERS:
        raise ValueError(f"invalid observer={observer!r}: expected one of {OBSERVERS}")
    if bias_correction and not per_channel:  # the correction's grid is per-channel (`pt2e_weight_config`)
        raise ValueError("bias_correction needs per_channel=True (it is computed on per-channel weight rounding)")
    need_executorch("torchao")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    _refuse_3d(model)
    net, x1 = inference_graph_module(model, example, resolution)
    batches = iter_batches(calib, num_samples, batch_size)
    first = next(batches, None)

    def checked(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != tuple(x1.shape[1:]):
            raise ValueError(f"calibration samples of shape {tuple(x.shape[1:])} do not match the model input "
                             f"{tuple(x1.shape[1:])}")
        return x.float()

    if first is None:
        raise ValueError("calibration data is empty")
    checked(first)  # before the (slow) export
    if bias_correction:  # the samples are read twice (correction, then PT2E): hold them
        xs = torch.cat([checked(x) for x in itertools.chain([first], batches)])
        model = bias_corrected_copy(model, xs, batch_size=batch_size)
        net, x1 = inference_graph_module(model, example, resolution)
        first, batches = xs[:batch_size], iter(xs[batch_size:].split(batch_size))
    # a dynamic batch axis for calibration (batches of any size), a static batch-1 program afterwards
    x2 = x1.expand(2, *x1.shape[1:]).contiguous()
    gm = torch.export.export(net, (x2,), dynamic_shapes=({0: torch.export.Dim("batch", max=1 << 16)},)).module()
    rewrite_means(gm)
    split_silu(gm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao's deprecation notices
        prepared = prepare_pt2e(gm, xnnpack_quantizer(per_channel, observer))
        for x in itertools.chain([first], batches):
            prepared(checked(x))
        qgm = convert_pt2e(prepared)
    if fold_pads:
        fold_pads_into_convs(qgm)
    return qgm, x1


def pt2e_weight_config() -> QuantConfig:
    """The fake-quant recipe whose weights round like the XNNPACK quantizer's (per-channel symmetric int8, min/max
    of the weights, restricted range [-127, 127]), activations left in float; `bias_corrected_copy` also floors
    the scales at `PT2E_WEIGHT_EPS` as PT2E's observer does."""
    return QuantConfig(wbits=8, abits=None, w_per_channel=True, w_symmetric=True, w_calib="minmax")


@torch.no_grad()
def bias_corrected_copy(model: nn.Module, calib: Any, num_samples: int | None = None,
                        batch_size: int = 32) -> nn.Module:
    """A BN-folded float copy of `model` whose biases cancel the mean output shift of PT2E's int8 weight rounding
    (`mbconv.quant.correct_bias` with the weight grid of `pt2e_weight_config`), the mean inputs measured through
    the float network on `num_samples` (all if None) samples of `calib`. `model` is untouched."""
    q = fuse_bn(model)
    insert_quantizers(q, pt2e_weight_config())
    if not quantizers(q, ["weight"]):
        raise ValueError(f"bias correction found no conv/linear weights to quantize in {type(model).__name__}")
    calibrate(q, calib, num_samples=1, batch_size=1)  # weights only: their ranges come from the weights
    for fq in quantizers(q, ["weight"]).values():
        fq.scale.clamp_(min=PT2E_WEIGHT_EPS)
    n = len(calib) if num_samples is None and isinstance(calib, torch.Tensor) else num_samples
    correct_bias(q, calib, num_samples=n if n is not None else 1 << 30, batch_size=batch_size)
    return float_copy(q)


def xnnpack_quantizer(per_channel: bool = True, observer: str = "minmax") -> Any:
    """ExecuTorch's XNNPACKQuantizer with its symmetric int8 config, conv -> ReLU6 quantized after the clamp
    (`annotate_conv_relu6`) and without the conv+BN patterns (BN is folded before export, so they never match,
    and each is traced by dynamo on every call: seconds; same annotations, same program).

    `observer` sets the activation ranges: 'minmax' (the calibration min/max, as ONNX Runtime's int8 and
    mbconv.quant's fake-quant calibrate; several times faster to calibrate) or 'histogram' (ExecuTorch's default,
    L2-optimal clipping of a histogram). On the pretrained Lite0 both give the same logit SQNR; on the held-out
    photos minmax kept every fp32-confident top-1 and histogram flipped 3 of 96 (docs/bench/phone.md)."""
    if observer not in OBSERVERS:
        raise ValueError(f"invalid observer={observer!r}: expected one of {OBSERVERS}")
    xq = need_executorch("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    config = xq.get_symmetric_quantization_config(is_per_channel=per_channel)
    if observer == "minmax":
        from torchao.quantization.pt2e import MinMaxObserver

        ctr = MinMaxObserver.with_args(eps=2**-12)  # the stock config's smallest scale
        config = dataclasses.replace(
            config, input_activation=dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr),
            output_activation=dataclasses.replace(config.output_activation, observer_or_fake_quant_ctr=ctr))
    quantizer = xq.XNNPACKQuantizer().set_global(config)
    quantizer.SUPPORTED_PATTERNS = [p for p in quantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]
    annotate = quantizer.annotate

    def annotate_relu6_first(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        annotate_conv_relu6(model, config)
        return annotate(model)

    quantizer.annotate = annotate_relu6_first
    return quantizer


# -- lowering and files ------------------------------------------------------------------------------------------
def delegation(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """What a lowered edge graph runs where: number of XNNPACK delegate calls and the ops left to portable
    kernels ({op name: count})."""
    calls, portable = 0, collections.Counter()
    for n in graph_module.graph.nodes:
        if n.op != "call_function" or "getitem" in str(n.target):
            continue
        name = getattr(n.target, "__name__", str(n.target))
        if "executorch_call_delegate" in name:
            calls += 1
        else:
            m = re.match(r"<EdgeOpOverload: ([^>]+)>", str(n.target))
            portable[m.group(1) if m else name] += 1
    return {"delegate_calls": calls, "portable_ops": dict(portable)}


def pte_path(path: str | os.PathLike) -> Path:
    """`path` as a Path; ValueError naming it unless it ends in .pte and its folder can be written (checked before
    the export's work)."""
    if Path(path).suffix != ".pte":
        raise ValueError(f"output {path} should end in .pte")
    return output_file(path, "ExecuTorch program")


def lower_to_pte(graph: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> dict[str, Any]:
    """Export `graph` on `example`, lower it to XNNPACK and write the ExecuTorch program to `path` atomically
    (never a half-written file there). Returns path, input shape, size in bytes, delegation and seconds."""
    need_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = pte_path(path)
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(graph, (example,))
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        where = delegation(edge.exported_program().graph_module)
        program = edge.to_executorch()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(program.buffer)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "input_shape": list(example.shape), "size_bytes": path.stat().st_size,
            **where, "seconds": time.perf_counter() - t0}


def export_pte(model: nn.Module, path: str | os.PathLike, resolution: int | Sequence[int] | None = None, *,
               example: torch.Tensor | None = None, batch: int = 1) -> dict[str, Any]:
    """Export a network to an fp32 ExecuTorch program (XNNPACK) at `path` (.pte) for inputs of `batch` samples
    and return a summary (path, input shape, size_bytes, delegate_calls, portable_ops, seconds)."""
    need_executorch()
    pte_path(path)
    gm, x = phone_module(model, resolution, example, batch)
    return lower_to_pte(gm, x, path)


def export_pte_int8(model: nn.Module, path: str | os.PathLike, calib: Any,
                    resolution: int | Sequence[int] | None = None, *, example: torch.Tensor | None = None,
                    per_channel: bool = True, observer: str = "minmax", num_samples: int | None = None,
                    batch: int = 1, bias_correction: bool = False, fold_pads: bool = True) -> dict[str, Any]:
    """Quantize `model` to int8 with PT2E and the XNNPACK quantizer, calibrated on `calib` (see `quantize_pt2e`;
    `bias_correction` quantizes the bias-corrected float copy; `fold_pads=False` keeps TF-"same" pads as fp32
    ops between conversions, the slower program of before `fold_pads_into_convs`), and write the ExecuTorch
    program to `path` (.pte). Returns `lower_to_pte`'s summary plus `quantize_seconds`, `bias_correction` and
    `folded_pads`."""
    pte_path(path)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"invalid batch={batch!r}: expected a positive int")
    t0 = time.perf_counter()
    qgm, x = quantize_pt2e(model, calib, resolution, example=example, per_channel=per_channel, observer=observer,
                           num_samples=num_samples, bias_correction=bias_correction, fold_pads=False)
    folded = fold_pads_into_convs(qgm) if fold_pads else 0
    dt = time.perf_counter() - t0
    return {**lower_to_pte(qgm, x.expand(batch, *x.shape[1:]).contiguous(), path), "quantize_seconds": dt,
            "bias_correction": bias_correction, "folded_pads": folded}


# -- runtime --------------------------------------------------------------------------------------------------
# Methods loaded by `pte_method`: the XNNPACK delegate of a method keeps the threadpool it was loaded with, and
# running it after the pool is resized crashes the process (measured: segfault or a futex hang), so a resize is
# refused while any of them is alive.
LOADED_METHODS: weakref.WeakSet = weakref.WeakSet()


def set_pte_threads(threads: int) -> int:
    """Size ExecuTorch's process-wide threadpool (which the XNNPACK delegate runs on) to `threads` and return the
    count it reports. Call it before loading programs: it raises ValueError while methods loaded by `pte_method`
    are alive (they would crash on their next run); drop them and load again after the resize."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"invalid threads={threads!r}: expected a positive int")
    lib = need_executorch("executorch.extension.pybindings.portable_lib")
    # The only Python handles on the threadpool in executorch 1.5.1 are these underscore-named bindings.
    if int(lib._threadpool_get_thread_count()) == threads:
        return threads
    if len(LOADED_METHODS):
        raise ValueError(f"cannot resize ExecuTorch's threadpool to threads={threads}: {len(LOADED_METHODS)} loaded "
                         f"method(s) are alive and would crash on their next run; resize before loading")
    lib._unsafe_reset_threadpool(threads)
    return int(lib._threadpool_get_thread_count())


def pte_method(program: str | os.PathLike | bytes, method: str = "forward") -> Any:
    """Load a .pte file (or its bytes) with `executorch.runtime.Runtime` and return its `method` (runs on the
    threadpool as `set_pte_threads` last sized it)."""
    need_executorch()
    from executorch.runtime import Runtime

    if not isinstance(program, bytes) and not Path(program).exists():
        raise FileNotFoundError(f"no such ExecuTorch program: {program}")
    try:
        loaded = Runtime.get().load_program(program if isinstance(program, bytes) else Path(program))
    except RuntimeError as e:  # e.g. "Failed to load program, error: 0x:12" for a corrupt or foreign file
        name = "the bytes given" if isinstance(program, bytes) else program
        raise ValueError(f"ExecuTorch cannot load {name}: {' '.join(str(e).split())}") from None
    m = loaded.load_method(method)
    if m is None:
        raise ValueError(f"program has no method {method!r}: it has {sorted(loaded.method_names)}")
    LOADED_METHODS.add(m)
    return m


def pte_run(method: Any, x: torch.Tensor) -> torch.Tensor:
    """Run a one-input method on `x` (its exact static shape); returns a copy of the first output (the runtime
    reuses its output buffer on the next call)."""
    return method.execute([x.detach().float().cpu().contiguous()])[0].clone()


@torch.no_grad()
def pte_logits(method: Any, data: Any, batch: int = 1, num_samples: int | None = None) -> torch.Tensor:
    """Logits of a static-batch method over `data` (tensor, Dataset of (x, y) or iterable of batches), `batch`
    samples per call; a short last batch is padded with its last sample."""
    outs = []
    for x in iter_batches(data, num_samples, batch):
        k = x.shape[0]
        if k < batch:
            x = torch.cat([x, x[-1:].expand(batch - k, *x.shape[1:])])
        outs.append(pte_run(method, x)[:k])
    if not outs:
        raise ValueError("no samples to run")
    return torch.cat(outs)


@torch.no_grad()
def check_pte(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Max abs difference between the .pte at `path` (batch-1 program) on the samples `x` and `model.eval()(x)`."""
    was = model.training
    model.eval()
    ref = model(x)
    model.train(was)
    out = pte_logits(pte_method(path), x)
    if out.shape != ref.shape:
        raise ValueError(f"ExecuTorch output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}")
    return float((out - ref).abs().max())


def agreement(reference: torch.Tensor | np.ndarray, logits: torch.Tensor | np.ndarray,
              confident: float | None = None) -> dict[str, float]:
    """How well `logits` (e.g. int8) follow `reference` (fp32 logits of the same samples): top-1 agreement, logit
    SQNR in dB, max abs diff, samples; with `confident`, also the top-1 agreement over the samples whose
    reference top-class probability exceeds it (and how many there are)."""
    ref = torch.as_tensor(reference).double()
    out = torch.as_tensor(logits).double()
    if ref.shape != out.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise ValueError(f"logits of shape {tuple(out.shape)} and {tuple(ref.shape)}: expected equal (N, classes)")
    same = ref.argmax(1) == out.argmax(1)
    res = {"top1_agreement": float(same.double().mean()),
           "sqnr_db": sqnr_db(float((ref ** 2).sum()), float(((ref - out) ** 2).sum())),
           "max_abs_diff": float((ref - out).abs().max()), "samples": int(ref.shape[0])}
    if confident is not None:
        sure = ref.softmax(1).max(1).values > confident
        res["confident_samples"] = int(sure.sum())
        res["top1_agreement_confident"] = float(same[sure].double().mean()) if sure.any() else float("nan")
    return res
