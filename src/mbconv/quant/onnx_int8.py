"""Real int8 on CPU: export the BN-folded float model to ONNX, quantize it statically with ONNX Runtime (QDQ,
per-channel s8 weights, u8 activations, calibrated on real data), and time ORT int8 against ORT fp32.

Choices (measured on this project's CPU, AVX-512 VNNI; see docs/bench/int8.md):

- `torch.onnx.export(..., dynamo=False)`: the TorchScript exporter works offline in torch 2.14 (the dynamo
  exporter needs onnxscript, which is not installed). Opset 17, dynamic batch axis.
- The SE squeeze and the final pooling export as ReduceMean over the spatial axes; ORT's int8 graph runs those
  on NHWC tensors with a slow generic reduction (~19 % of B0's int8 time). They are rewritten to
  GlobalAveragePool (identical maths), which ORT quantizes to QLinearGlobalAveragePool.
- u8 activations / s8 weights: ORT's default s8/s8 is about 4x slower on this CPU (issue 5).
- Everything else is `onnxruntime.quantization.quantize_static` with QDQ format; ORT fuses the QDQ pairs into
  QLinearConv / QLinearSigmoid / QLinearMul / QLinearAdd kernels at session creation.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..deploy import fuse_bn
from .ptq import iter_batches

CALIB_METHODS = ("minmax", "percentile", "entropy")


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"int8 export needs {module.split('.')[0]}: pip install 'mbconv[deploy]'") from e


def rewrite_global_pool(model: Any, dims: int) -> int:
    """Replace ReduceMean over all `dims` spatial axes by GlobalAveragePool (+ Flatten when keepdims=0), in place.

    Returns the number of nodes rewritten.
    """
    helper = _need("onnx.helper")
    spatial = list(range(2, 2 + dims))
    nodes, count = [], 0
    for n in model.graph.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "ReduceMean" and "axes" in attrs and list(attrs["axes"].ints) == spatial:
            keep = attrs["keepdims"].i if "keepdims" in attrs else 1
            if keep:
                nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=n.name + "/gap"))
            else:
                mid = n.output[0] + "/gap_out"
                nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [mid], name=n.name + "/gap"))
                nodes.append(helper.make_node("Flatten", [mid], [n.output[0]], name=n.name + "/flatten", axis=1))
            count += 1
        else:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17,
                fold_bn: bool = True, rewrite_pool: bool = True) -> Path:
    """Export `model` (BN folded first, eval mode) to ONNX with a dynamic batch axis and (by default) spatial
    ReduceMean rewritten to GlobalAveragePool."""
    onnx = _need("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = fuse_bn(model) if fold_bn else copy.deepcopy(model).eval()
    if getattr(m, "_quant_handles", None):
        raise ValueError("export the float model, not a fake-quantized one (ORT quantizes the float graph)")
    example = example[:1].detach().float()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks in MBConvNet.check_input
        torch.onnx.export(m, (example,), str(path), dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    g = onnx.load(str(path))
    if rewrite_pool:
        rewrite_global_pool(g, example.ndim - 2)
    onnx.checker.check_model(g)
    onnx.save(g, str(path))
    return path


class _Reader:
    """onnxruntime CalibrationDataReader over numpy batches."""

    def __init__(self, batches: Iterable[np.ndarray], name: str = "x") -> None:
        self.it = iter(batches)
        self.name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.it, None)
        return None if b is None else {self.name: np.ascontiguousarray(b, dtype=np.float32)}

    def rewind(self) -> None:  # pragma: no cover - not used by quantize_static's single pass
        pass


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, calib: Iterable[np.ndarray],
                  method: str = "minmax", per_channel: bool = True, activation: str = "u8", weight: str = "s8",
                  exclude_ops: Sequence[str] = ()) -> Path:
    """Static int8 QDQ quantization of an fp32 ONNX model, calibrated on `calib` batches (numpy, NC...)."""
    q = _need("onnxruntime.quantization")
    if method not in CALIB_METHODS:
        raise ValueError(f"invalid calibration method={method!r}: expected one of {CALIB_METHODS}")
    types = {"u8": q.QuantType.QUInt8, "s8": q.QuantType.QInt8}
    if activation not in types or weight not in types:
        raise ValueError(f"invalid activation/weight types {activation!r}/{weight!r}: expected 'u8' or 's8'")
    cm = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
          "entropy": q.CalibrationMethod.Entropy}[method]
    ops = None if not exclude_ops else [o for o in q.registry.QDQRegistry if o not in set(exclude_ops)]
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a "consider pre-processing" warning on the root logger every call
    try:
        q.quantize_static(str(fp32_path), str(int8_path), _Reader(calib), quant_format=q.QuantFormat.QDQ,
                          per_channel=per_channel, activation_type=types[activation], weight_type=types[weight],
                          calibrate_method=cm, op_types_to_quantize=ops)
    except ValueError as e:  # e.g. a tensor the calibrator never saw a valid range for
        raise ValueError(f"ONNX Runtime could not quantize {fp32_path}: {e}") from None
    finally:
        root.setLevel(level)
    return int8_path


def session(path: str | Path, threads: int = 1) -> Any:
    """A CPU InferenceSession with `threads` intra-op threads (1: stable timings on a shared machine)."""
    ort = _need("onnxruntime")
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def time_sessions(sessions: dict[str, Any], x: np.ndarray, repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Latency of each session on input x, runs interleaved (so machine-load drift hits all alike).

    Returns {name: {"median_ms", "min_ms", "throughput" (samples/s at the median)}}.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for _ in range(warmup):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    ts: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            ts[k].append(time.perf_counter() - t)
    return {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v),
                "throughput": x.shape[0] / statistics.median(v)} for k, v in ts.items()}


def ort_logits(sess: Any, data: Any, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, labels or None) of a session over a Dataset of (x, y) (or a tensor / iterable of batches)."""
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x.numpy().astype(np.float32)})[0] for x in iter_batches(data, None, batch_size)]
    labels = None
    if isinstance(data, torch.utils.data.Dataset):
        labels = np.array([int(data[i][1]) for i in range(len(data))])
    return np.concatenate(outs), labels


def int8_benchmark(model: nn.Module, calib_data: Any, out: str | Path, test_data: Any = None,
                   example: torch.Tensor | None = None, method: str = "minmax", calib_samples: int = 256,
                   batch_sizes: Sequence[int] = (1, 16), repeats: int = 20, threads: int = 1,
                   per_channel: bool = True, rewrite_pool: bool = True) -> dict[str, Any]:
    """Export, quantize and compare ORT fp32 vs ORT int8 in one run: latency per batch size, and (with
    `test_data`) accuracy of torch fp32, ORT fp32 and ORT int8 plus int8-vs-fp32 top-1 agreement.

    `out` is the int8 model path; the fp32 model goes next to it as `<stem>.fp32.onnx`.
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"output {out} should end in .onnx")
    first = next(iter_batches(calib_data, 1, 1), None) if example is None else example
    if first is None:
        raise ValueError("calibration data is empty")
    fp32 = export_onnx(model, first, out.with_name(out.stem + ".fp32.onnx"), rewrite_pool=rewrite_pool)
    t0 = time.perf_counter()
    calib = (x.numpy() for x in iter_batches(calib_data, calib_samples, 32))
    int8 = quantize_onnx(fp32, out, calib, method=method, per_channel=per_channel)
    quant_s = time.perf_counter() - t0
    sess = {"ort_fp32": session(fp32, threads), "ort_int8": session(int8, threads)}
    shape = tuple(first.shape[1:])
    rng = np.random.default_rng(0)
    latency = {}
    for bs in batch_sizes:
        x = rng.standard_normal((bs, *shape), dtype=np.float32)
        r = time_sessions(sess, x, repeats=repeats if bs == 1 else max(3, repeats // 3))
        latency[str(bs)] = {**r, "speedup": r["ort_fp32"]["median_ms"] / r["ort_int8"]["median_ms"],
                            "speedup_min": r["ort_fp32"]["min_ms"] / r["ort_int8"]["min_ms"]}
    res: dict[str, Any] = {"fp32_onnx": str(fp32), "int8_onnx": str(out), "calibration": method,
                           "calib_samples": calib_samples, "per_channel": per_channel, "threads": threads,
                           "pool_rewrite": rewrite_pool,
                           "input_shape": list(shape), "quantize_seconds": quant_s, "latency": latency,
                           "size_bytes": {"fp32": fp32.stat().st_size, "int8": out.stat().st_size}}
    if test_data is not None:
        lf, y = ort_logits(sess["ort_fp32"], test_data)
        lq, _ = ort_logits(sess["ort_int8"], test_data)
        with torch.no_grad():
            lt = torch.cat([fuse_bn(model)(x) for x in iter_batches(test_data, None, 256)]).numpy()
        res["accuracy"] = None if y is None else {
            "torch_fp32": float((lt.argmax(1) == y).mean()), "ort_fp32": float((lf.argmax(1) == y).mean()),
            "ort_int8": float((lq.argmax(1) == y).mean())}
        res["top1_agreement_int8_vs_fp32"] = float((lq.argmax(1) == lf.argmax(1)).mean())
        res["max_abs_logit_diff_ort_vs_torch_fp32"] = float(np.abs(lf - lt).max())
        res["test_samples"] = int(lf.shape[0])
    return res
