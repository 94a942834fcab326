"""Real int8 on CPU: the fp32 ONNX graph of `mbconv.export.export_onnx` quantized statically by ONNX Runtime (QDQ,
per-channel s8 weights, u8 activations, calibrated on real data), and ORT int8 timed against ORT fp32.

Choices (measured on this project's CPU, AVX-512 VNNI; see docs/bench/int8.md):

- The same graph as fp32 deployment: BN folded, TF pads static, SE squeeze and the final pooling as
  GlobalAveragePool (ORT's int8 graph runs a ReduceMean on NHWC tensors with a slow generic reduction, ~19 % of
  B0's int8 time; GlobalAveragePool quantizes to QLinearGlobalAveragePool).
- u8 activations / s8 weights: ORT's default s8/s8 is about 4x slower on this CPU (issue 5), where the CPU computes
  u8 x s8 exactly; elsewhere `int8_kernels` picks the types the CPU computes exactly (below).
- Everything else is `onnxruntime.quantization.quantize_static` with QDQ format; ORT fuses the QDQ pairs into
  QLinearConv / QLinearSigmoid / QLinearMul / QLinearAdd kernels at session creation.

Kernels by CPU (`int8_kernels`, the default of every function here). ONNX Runtime's u8 x s8 kernels on x86-64
without VNNI multiply with vpmaddubsw, which adds each pair of u8 x s8 products into a *saturating* int16:
255 x 127 x 2 > 32767, so large activations against large same-signed weights clip. On the real EfficientNet-Lite0
(ReLU6 activations up to 255 on the u8 grid, BN-folded depthwise weights using the whole s8 range) that cost
top-1 agreement with fp32: 52 % of photo crops (73 % of the confident ones) on an AVX2 machine without VNNI
(issue 14). VNNI (avx512_vnni, avx_vnni: vpdpbusd) accumulates u8 x s8 in int32, exact. So:

- x86-64 with VNNI: u8 activations, s8 symmetric per-channel weights (ORT's recommendation; the fast path);
- x86-64 without VNNI (or flags unknown): u8 activations, u8 weights (ORT's default: symmetric around zero point
  128): the u8 x u8 kernels widen to int16 before multiplying (vpmaddwd into int32), exact; measured 100 % / 83 %
  agreement on that machine against 75 % for ORT's other remedy, `reduce_range` (7-bit weights, which halves the
  weight grid). Its grid is symmetric u8 (zero point 128, scale 2 max|w| / 255), so a bias correction must be
  computed on that grid, not on s8 rounding (`ort_weight_config`; an asymmetric [min w, max w] mirror is what made
  the u8 graph look poorly tracked in docs/bench/real.md);
- ARM64 and others: u8 activations, s8 weights (dot-product kernels accumulate in int32).

Bias correction (`ort_bias_corrected_copy`, `export_int8(bias_correction=True)`; Nagel et al. 2019,
`mbconv.quant.correct_bias`): the mean output shift E[dW x] of each conv/linear's weight rounding, measured with
fake-quant weights on the grid ORT will use, moves into the biases of the float network before export. Both of
ORT's weight grids (`quantize_static` makes weights symmetric for either type) are expressible with
`mbconv.quant`'s fake quantizers: s8 is symmetric per-channel [-127, 127], scale max|w| / 127 (`ort_weight_config`
as it stands); u8 is [0, 255] around zero point 128, scale 2 max|w| / 255 (max|w| itself rounds to 255.5 and clips
to 255), which is the asymmetric [0, 255] quantizer calibrated on the symmetrized range [-max|w|, max|w|] (zero
point round(127.5) = 128). Each grid gets its own correction; tests/test_deploy.py checks both against the
weights ORT writes (s8 equal; u8 equal but for float32 ties at -max|w|, which ORT rounds to 0 and the fake
quantizer, adding the zero point before rounding, sometimes to 1: one step on one tap of some channels). Which
grids it is on by default for `mbconv export --int8 --data` was measured on the pretrained Lite0
(`BC_DEFAULT_WEIGHTS`, docs/bench/int8.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import output_file
from ..layers import fuse_bn
from ..quant.bias_correction import correct_bias, float_copy
from ..quant.insert import QuantConfig, host_weight, insert_quantizers, quantizers, set_mode
from ..quant.ptq import iter_batches
from .ort import check_input, one_line, ort_logits, ort_session, time_sessions
from .to_onnx import export_onnx

CALIB_METHODS = ("minmax", "percentile", "entropy")
# The weight types for which `mbconv export --int8 --data` bias-corrects by default: those where it was at least as
# good in every column (top-1 agreement on all / fp32-confident crops, logit SQNR) on the pretrained Lite0's val
# crops (benchmarks/int8_bc.py -> experiments/results/bench/ort_bias_correction.json, docs/bench/int8.md). u8
# passed; s8 gained 4.6 dB SQNR but flipped one more of 80 val crops, so it stays opt-in (export_int8 argument).
BC_DEFAULT_WEIGHTS = frozenset({"u8"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"})  # /proc/cpuinfo spellings


def cpu_features() -> tuple[str, frozenset[str]]:
    """(machine, CPU feature flags): `platform.machine()` and, on Linux, the flags of /proc/cpuinfo (x86 'flags',
    ARM 'Features'); no flags elsewhere."""
    import platform

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
                    break
    except OSError:  # no /proc/cpuinfo (not Linux): unknown flags, and int8_kernels picks the kernels exact everywhere
        pass
    return platform.machine().lower(), frozenset(flags)


def int8_kernels(machine: str | None = None, flags: Iterable[str] | None = None) -> dict[str, Any]:
    """The ORT int8 types this CPU (or the given `machine` / `flags`) computes exactly: {"activation", "weight",
    "reduce_range", "why"}; see the module docstring."""
    if machine is None or flags is None:
        found_machine, found_flags = cpu_features()
        machine = found_machine if machine is None else machine
        flags = found_flags if flags is None else flags
    machine, flags = machine.lower(), {f.lower() for f in flags}
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if flags & VNNI_FLAGS:
            return {"activation": "u8", "weight": "s8", "reduce_range": False,
                    "why": f"x86-64 with VNNI ({', '.join(sorted(flags & VNNI_FLAGS))}): u8 x s8 accumulates in int32"}
        return {"activation": "u8", "weight": "u8", "reduce_range": False,
                "why": "x86-64 without VNNI: u8 x s8 saturates in int16 (vpmaddubsw); u8 x u8 is exact"}
    return {"activation": "u8", "weight": "s8", "reduce_range": False,
            "why": f"{machine or 'unknown machine'}: u8 x s8 dot products accumulate in int32"}


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
                  method: str = "minmax", per_channel: bool = True, activation: str | None = None,
                  weight: str | None = None, exclude_ops: Sequence[str] = (), reduce_range: bool | None = None,
                  exclude_nodes: Sequence[str] = ()) -> Path:
    """Static int8 QDQ quantization of an fp32 ONNX model, calibrated on `calib` batches (numpy, NC...).

    `activation` / `weight` ('u8' | 's8') and `reduce_range` (7-bit weights) default to `int8_kernels()`: the types
    this CPU computes exactly. `exclude_nodes` are ONNX node names left in float (mixed precision)."""
    q = _need("onnxruntime.quantization")
    kernels = int8_kernels()
    activation = kernels["activation"] if activation is None else activation
    weight = kernels["weight"] if weight is None else weight
    reduce_range = kernels["reduce_range"] if reduce_range is None else reduce_range
    if method not in CALIB_METHODS:
        raise ValueError(f"invalid calibration method={method!r}: expected one of {CALIB_METHODS}")
    types = {"u8": q.QuantType.QUInt8, "s8": q.QuantType.QInt8}
    if activation not in types or weight not in types:
        raise ValueError(f"invalid activation/weight types {activation!r}/{weight!r}: expected 'u8' or 's8'")
    cm = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
          "entropy": q.CalibrationMethod.Entropy}[method]
    ops = None if not exclude_ops else [o for o in q.registry.QDQRegistry if o not in set(exclude_ops)]
    if not Path(fp32_path).is_file():
        raise FileNotFoundError(f"no such ONNX file: {fp32_path}")
    int8_path = output_file(int8_path, "int8 model")
    calib = checked_batches(calib, fp32_path)
    tmp = int8_path.with_name(int8_path.name + ".tmp")
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a "consider pre-processing" warning on the root logger every call
    try:
        name = _need("onnx").load(str(fp32_path)).graph.input[0].name
        q.quantize_static(str(fp32_path), str(tmp), CalibrationReader(calib, name),
                          quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                          activation_type=types[activation], weight_type=types[weight],
                          calibrate_method=cm, op_types_to_quantize=ops, reduce_range=reduce_range,
                          nodes_to_exclude=list(exclude_nodes) or None)
        os.replace(tmp, int8_path)  # never a half-written model at `int8_path`
    except ValueError as e:  # e.g. a tensor the calibrator never saw a valid range for
        raise ValueError(f"ONNX Runtime could not quantize {fp32_path}: {one_line(e)}") from None
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
    return int8_path


def checked_batches(calib: Iterable[np.ndarray], fp32_path: str | Path) -> Iterator[np.ndarray]:
    """`calib` batches, each checked against the model's input shape (ORT's calibrator would fail deep inside,
    in several lines)."""
    sess = ort_session(fp32_path, 1)

    def batches() -> Iterator[np.ndarray]:
        for b in calib:
            check_input(sess, b)
            yield b

    return batches()


def ort_weight_config(weight: str, per_channel: bool = True) -> QuantConfig:
    """The fake-quant recipe of `quantize_onnx`'s `weight` type, activations in float: 's8' symmetric [-127, 127]
    (ORT's grid as it stands); 'u8' asymmetric [0, 255], which `ort_bias_corrected_copy` calibrates on the
    symmetrized weight range to get ORT's zero point 128 and scale 2 max|w| / 255."""
    if weight not in ("s8", "u8"):
        raise ValueError(f"invalid weight type {weight!r}: expected 's8' or 'u8'")
    return QuantConfig(wbits=8, abits=None, w_per_channel=per_channel, w_symmetric=weight == "s8", w_calib="minmax")


@torch.no_grad()
def ort_weight_quantized(model: nn.Module, weight: str, per_channel: bool = True) -> nn.Module:
    """A BN-folded copy of `model` with fake-quant weights on ORT's `weight` grid ('s8' | 'u8', see the module
    docstring), activations in float: what `ort_bias_corrected_copy` measures the rounding shift on."""
    q = fuse_bn(model)
    insert_quantizers(q, ort_weight_config(weight, per_channel))
    ws = quantizers(q, ["weight"])
    if not ws:
        raise ValueError(f"bias correction found no conv/linear weights to quantize in {type(model).__name__}")
    for fq in ws.values():
        w = host_weight(q, fq).detach()
        # u8: ORT's weights are symmetric around 128, the asymmetric quantizer on [-max|w|, max|w|]; the concat
        # runs along axis 1 so that the per-channel axis 0 keeps its channels
        fq.calibrate_from(torch.cat([w, -w], 1) if weight == "u8" else w)
    set_mode(q, "quant")  # inserted quantizers start in 'observe' (pass-through)
    return q


@torch.no_grad()
def ort_bias_corrected_copy(model: nn.Module, calib: torch.Tensor, weight: str | None = None,
                            per_channel: bool = True, batch_size: int = 32) -> nn.Module:
    """A BN-folded float copy of `model` whose biases cancel the mean output shift of ONNX Runtime's int8 rounding
    of its weights (`weight` type, default `int8_kernels()`; `ort_weight_quantized`), the mean inputs measured
    through the float network on all samples of `calib` (N, C, ...). `model` is untouched."""
    weight = int8_kernels()["weight"] if weight is None else weight
    if len(calib) == 0:
        raise ValueError("bias correction data is empty")
    q = ort_weight_quantized(model, weight, per_channel)
    calib = calib.detach().float().cpu()
    correct_bias(q, calib, num_samples=len(calib), batch_size=batch_size)
    return float_copy(q)


def export_int8(model: nn.Module, path: str | Path, calib: torch.Tensor, resolution: int | None = None,
                method: str = "minmax", per_channel: bool = True, batch_size: int = 32,
                bias_correction: bool = False, activation: str | None = None, weight: str | None = None
                ) -> dict[str, Any]:
    """Export `model` with `export_onnx` to `<stem>.fp32.onnx` beside `path`, then quantize that graph to int8 at
    `path`, calibrated on the samples `calib` (N, C, ...), with `activation` / `weight` types (default
    `int8_kernels()`). With `bias_correction`, the exported network is `ort_bias_corrected_copy(model, calib,
    weight)` (its biases cancel the mean shift of ORT's weight rounding; needs real calibration data). Returns
    the fp32 export summary plus `int8_path`, `weight`, `activation` and `bias_correction`."""
    path = output_file(path, "int8 model")
    if len(calib) == 0:
        raise ValueError("calibration data is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"invalid batch_size={batch_size!r}: need an integer >= 1")
    kernels = int8_kernels()
    activation = kernels["activation"] if activation is None else activation
    weight = kernels["weight"] if weight is None else weight
    net = ort_bias_corrected_copy(model, calib, weight, per_channel, batch_size) if bias_correction else model
    info = export_onnx(net, path.with_name(path.stem + ".fp32.onnx"), resolution, example=calib[:1])
    quantize_onnx(info["path"], path, [b.numpy() for b in calib.detach().float().cpu().split(batch_size)],
                  method=method, per_channel=per_channel, activation=activation, weight=weight,
                  reduce_range=False)
    return {**info, "int8_path": str(path), "weight": weight, "activation": activation,
            "bias_correction": bool(bias_correction)}


def int8_benchmark(model: nn.Module, calib_data: Any, out: str | Path, test_data: Any = None,
                   example: torch.Tensor | None = None, method: str = "minmax", calib_samples: int = 256,
                   batch_sizes: Sequence[int] = (1, 16), repeats: int = 20, threads: int = 1,
                   per_channel: bool = True, se_multiple: int = 16, rewrite_pool: bool = True) -> dict[str, Any]:
    """Export, quantize and compare ORT fp32 vs ORT int8 in one run: latency per batch size, and (with
    `test_data`) accuracy of torch fp32, ORT fp32 and ORT int8 plus int8-vs-fp32 top-1 agreement.

    `out` is the int8 model path; the fp32 model goes next to it as `<stem>.fp32.onnx`.
    """
    out = output_file(out, "int8 model")
    if out.suffix != ".onnx":
        raise ValueError(f"output {out} should end in .onnx")
    sizes = tuple(batch_sizes) if isinstance(batch_sizes, Sequence) else ()
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes):
        raise ValueError(f"invalid batch_sizes={batch_sizes!r}: need a non-empty sequence of integers >= 1")
    for name, v in (("calib_samples", calib_samples), ("repeats", repeats), ("threads", threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"invalid {name}={v!r}: need an integer >= 1")
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
                           "kernels": int8_kernels(),
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
