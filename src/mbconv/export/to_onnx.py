"""The one ONNX export: the inference module (`mbconv.inference.prepare_inference`) traced by the TorchScript
exporter, then cleaned for ONNX Runtime (`mbconv.export.onnx_graph`). fp32 deployment, the int8 pipeline
(`mbconv.export.int8` quantizes this same graph) and the benchmarks all export through `export_onnx`.

torch 2.14's default dynamo exporter needs `onnxscript`, which is not a dependency; the TorchScript exporter works
offline (`dynamo=False`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..files import output_file
from ..inference import prepare_inference, spatial_size
from ..layers import fuse_bn, strip_training
from ..quant.insert import quantizers
from .onnx_graph import align_se, clean_onnx_graph, op_counts


def inference_graph_module(model: nn.Module, example: torch.Tensor | None, resolution: Any) -> tuple[nn.Module,
                                                                                                      torch.Tensor]:
    """(module to trace, example input): an MBConv network's inference module with TF pads fixed for the input
    size, or, for any other module, a BN-folded eval copy without dropout."""
    spec = getattr(model, "spec", None)
    if quantizers(model):
        raise ValueError("export the float model, not a fake-quantized one (ORT quantizes the float graph)")
    if spec is not None and all(hasattr(model, a) for a in ("stem", "stages", "head", "classifier")):
        if example is not None and example.ndim != spec.dims + 2:
            raise ValueError(f"example input of shape {tuple(example.shape)}: the {spec.dims}-D model expects rank "
                             f"{spec.dims + 2} (N, C, {('L', 'H, W', 'D, H, W')[spec.dims - 1]})")
        if example is not None:
            size = tuple(int(s) for s in example.shape[2:])
        else:
            size = spatial_size(resolution if resolution is not None else spec.resolution, spec.dims)
        if example is not None and example.shape[1] != spec.in_chans:
            raise ValueError(f"example input has {example.shape[1]} channels; the model expects "
                             f"in_chans={spec.in_chans}")
        x = torch.randn(1, spec.in_chans, *size) if example is None else example[:1].detach().float().cpu()
        return prepare_inference(model, size, channels_last=False, inplace=False), x
    if example is None:
        raise ValueError(f"export_onnx needs an example input for a {type(model).__name__} (no .spec to size it)")
    return strip_training(fuse_bn(model), inplace=True), example[:1].detach().float().cpu()


def max_opset() -> int:
    """The newest ONNX opset this torch's TorchScript exporter writes (23 in torch 2.14)."""
    try:
        from torch.onnx import _constants  # torch's own record; no public accessor

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # pragma: no cover - another torch layout
        return 20


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int | Sequence[int] | None = None, *,
                example: torch.Tensor | None = None, dynamic_batch: bool = True, opset: int = 17,
                se_multiple: int = 16, clean: bool = True, global_pool: bool = True,
                input_name: str = "input") -> dict[str, Any]:
    """Export a network to ONNX for inference and return a summary (path, input shape, opset, op counts).

    The input size comes from `example` (N, C, *size), else `resolution`, else the spec's. SE widths are aligned
    for ORT (`se_multiple`, 0 = off) and the graph cleaned (`clean`; `global_pool=False` keeps the spatial means as
    ReduceMean). Input `input_name` with a dynamic batch axis
    (`dynamic_batch`), output `logits`.
    """
    import onnx

    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 14 <= opset <= top:
        # checked here: the exporter prints its whole IR graph to stdout before refusing an opset it lacks
        raise ValueError(f"invalid opset={opset!r}: need an integer in [14, {top}] (14: HardSwish, SiLU as "
                         f"Sigmoid*Mul; {top}: the newest this torch exports)")
    if isinstance(se_multiple, bool) or not isinstance(se_multiple, int) or se_multiple < 0:
        raise ValueError(f"invalid se_multiple={se_multiple!r}: need an integer >= 0 (0 = off)")
    path = output_file(path, "ONNX model")  # before the export's work, not after it
    net, x = inference_graph_module(model, example, resolution)
    if se_multiple:
        align_se(net, se_multiple)
    axes = {input_name: {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=[input_name],
                              output_names=["logits"], dynamic_axes=axes, do_constant_folding=True)
        m = onnx.load(str(tmp))
        if clean:
            clean_onnx_graph(m, global_pool=global_pool)
        m.producer_name = "mbconv"
        onnx.checker.check_model(m)
        onnx.save(m, str(tmp))
        os.replace(tmp, path)  # never a half-written model at `path`
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "input_shape": ["batch" if dynamic_batch else 1, *x.shape[1:]], "opset": opset,
            "ops": op_counts(m)}
