"""Deployment formats, all from one prepared module (`mbconv.inference.prepare_inference`): ONNX fp32
(`to_onnx`), its graph clean-ups (`onnx_graph`), ONNX Runtime sessions and timing (`ort`), and int8 ONNX by ORT
static quantization of that same graph (`int8`). Needs the `deploy` extra (onnx, onnxruntime)."""

from .int8 import CALIB_METHODS, cpu_features, export_int8, int8_benchmark, int8_kernels, quantize_onnx
from .onnx_graph import align_se, clean_onnx_graph, fold_constants, op_counts
from .ort import check_onnx, ort_logits, ort_run, ort_session, time_sessions
from .to_onnx import export_onnx

__all__ = [
    "CALIB_METHODS", "align_se", "check_onnx", "clean_onnx_graph", "cpu_features", "export_int8", "export_onnx",
    "fold_constants", "int8_benchmark", "int8_kernels", "op_counts", "ort_logits", "ort_run", "ort_session",
    "quantize_onnx", "time_sessions",
]
