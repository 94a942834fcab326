"""ONNX Runtime on the CPU: one session builder, running a session on tensors or datasets, checking a file
against PyTorch, and interleaved timing of several sessions."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..quant.ptq import iter_batches


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
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"invalid threads={threads!r}: need an integer >= 1")
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
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled_optimizers))
    except Exception as e:  # ORT's own types (InvalidProtobuf, Fail...): a corrupt or foreign file, in one line
        raise ValueError(f"ONNX Runtime cannot load {path}: {one_line(e)}") from None


def one_line(e: BaseException) -> str:
    """An exception's message on one line (ONNX Runtime's span several)."""
    return " ".join(str(e).split()) or type(e).__name__


def check_input(session: Any, x: torch.Tensor | np.ndarray) -> None:
    """ValueError in one line unless `x` has the rank and the fixed sizes of `session`'s first input."""
    inp = session.get_inputs()[0]
    want = inp.shape  # ints for fixed axes, names (e.g. 'batch') or None for dynamic ones
    ok = len(x.shape) == len(want) and all(not isinstance(w, int) or w == s for w, s in zip(want, x.shape))
    if not ok:
        shown = ["N" if not isinstance(w, int) else w for w in want]
        raise ValueError(f"input of shape {tuple(x.shape)} does not fit the ONNX model's {inp.name!r} of shape "
                         f"({', '.join(map(str, shown))})")


def ort_run(session: Any, x: torch.Tensor) -> torch.Tensor:
    """Run a one-input session on `x`; returns the first output as a tensor."""
    check_input(session, x)
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


def time_sessions(sessions: dict[str, Any], x: np.ndarray, repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Latency of each session on input x, runs interleaved (so machine-load drift hits all alike).

    Returns {name: {"median_ms", "min_ms", "throughput" (samples/s at the median)}}.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    for name, v, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"invalid {name}={v!r}: need an integer >= {low}")
    if x.shape[0] < 1:  # an empty batch "runs" in no time: a latency of nothing
        raise ValueError(f"input of shape {x.shape} has no samples to time")
    for s in sessions.values():
        check_input(s, x)
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
    outs = []
    for x in iter_batches(data, None, batch_size):
        if not outs:
            check_input(sess, x)
        outs.append(sess.run(None, {name: x.numpy().astype(np.float32)})[0])
    if not outs:
        raise ValueError("no inputs: the data given to ort_logits is empty")
    labels = None
    if isinstance(data, torch.utils.data.Dataset):
        labels = np.array([int(data[i][1]) for i in range(len(data))])
    return np.concatenate(outs), labels
