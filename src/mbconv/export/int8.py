"""Real int8 on CPU: the fp32 ONNX graph of `mbconv.export.export_onnx` quantized statically by ONNX Runtime (QDQ,
per-channel s8 weights, u8 activations, calibrated on real data), and ORT int8 timed against ORT fp32.

Choices (measured on this project's CPU, AVX-512 VNNI; see docs/bench/int8.md):

- The same graph as fp32 deployment: BN folded, TF pads static, SE squeeze and the final pooling as
  GlobalAveragePool (ORT's int8 graph runs a ReduceMean on NHWC tensors with a slow generic reduction, ~19 % of
  B0's int8 time; GlobalAveragePool quantizes to QLinearGlobalAveragePool).
- u8 activations / s8 weights: ORT's default s8/s8 is about 4x slower on this CPU (issue 5).
- Everything else is `onnxruntime.quantization.quantize_static` with QDQ format; ORT fuses the QDQ pairs into
  QLinearConv / QLinearSigmoid / QLinearMul / QLinearAdd kernels at session creation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers import fuse_bn
from ..quant.ptq import iter_batches
from .ort import ort_logits, ort_session, time_sessions
from .to_onnx import export_onnx

CALIB_METHODS = ("minmax", "percentile", "entropy")


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"int8 export needs {module.split('.')[0]}: pip install 'mbconv[deploy]'") from e


class CalibrationReader:
    """onnxruntime CalibrationDataReader over numpy batches."""

    def __init__(self, batches: Iterable[np.ndarray], name: str = "input") -> None:
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
        name = _need("onnx").load(str(fp32_path)).graph.input[0].name
        q.quantize_static(str(fp32_path), str(int8_path), CalibrationReader(calib, name),
                          quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                          activation_type=types[activation], weight_type=types[weight],
                          calibrate_method=cm, op_types_to_quantize=ops)
    except ValueError as e:  # e.g. a tensor the calibrator never saw a valid range for
        raise ValueError(f"ONNX Runtime could not quantize {fp32_path}: {e}") from None
    finally:
        root.setLevel(level)
    return int8_path


def export_int8(model: nn.Module, path: str | Path, calib: torch.Tensor, resolution: int | None = None,
                method: str = "minmax", per_channel: bool = True, batch_size: int = 32) -> dict[str, Any]:
    """Export `model` with `export_onnx` to `<stem>.fp32.onnx` beside `path`, then quantize that graph to int8 at
    `path`, calibrated on the samples `calib` (N, C, ...). Returns the fp32 export summary plus `int8_path`."""
    path = Path(path)
    if len(calib) == 0:
        raise ValueError("calibration data is empty")
    info = export_onnx(model, path.with_name(path.stem + ".fp32.onnx"), resolution, example=calib[:1])
    quantize_onnx(info["path"], path, [b.numpy() for b in calib.detach().float().cpu().split(batch_size)],
                  method=method, per_channel=per_channel)
    return {**info, "int8_path": str(path)}


def int8_benchmark(model: nn.Module, calib_data: Any, out: str | Path, test_data: Any = None,
                   example: torch.Tensor | None = None, method: str = "minmax", calib_samples: int = 256,
                   batch_sizes: Sequence[int] = (1, 16), repeats: int = 20, threads: int = 1,
                   per_channel: bool = True, se_multiple: int = 16, rewrite_pool: bool = True) -> dict[str, Any]:
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
    fp32 = Path(export_onnx(model, out.with_name(out.stem + ".fp32.onnx"), example=first,
                            se_multiple=se_multiple, global_pool=rewrite_pool)["path"])
    t0 = time.perf_counter()
    calib = (x.numpy() for x in iter_batches(calib_data, calib_samples, 32))
    int8 = quantize_onnx(fp32, out, calib, method=method, per_channel=per_channel)
    quant_s = time.perf_counter() - t0
    sess = {"ort_fp32": ort_session(fp32, threads), "ort_int8": ort_session(int8, threads)}
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
                           "se_multiple": se_multiple, "pool_rewrite": rewrite_pool,
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
