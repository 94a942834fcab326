"""Where an ExecuTorch program's time goes: per-operator times of its XNNPACK delegate, from ExecuTorch's ETDump.

The pip runtime (executorch 1.5.1) records one profiling event per XNNPACK operator run inside the delegate
("Convolution (NHWC, QC8) DWConv #4", "Fully Connected (NC, QS8, QC8W) GEMM #7", "Convert (NC) #2", ...) when a
program is loaded with ETDump enabled; `pte_op_times` runs programs that way and reads the events back with
`executorch.devtools.Inspector`. The events come in execution order, which for a lowered chain network is graph
order, so `layer_kinds` can name each conv/linear event by the layer it runs (`op_kind` names the rest).

The operator times add up to nearly all of the method's time under ETDump (`execute_ms`); time whole programs
without profiling (interleaved rounds) and use these to see which operators the time goes to. Needs the `phone`
extra.
"""

from __future__ import annotations

import collections
import operator
import os
import re
import statistics
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .pte import LOADED_METHODS, need_executorch

# XNNPACK operator names (the event name without its " #n" counter and its "(layout, types)") -> what they are
OP_KINDS = {"Constant Pad": "explicit pad", "Convert": "int8 <-> fp32 convert", "Transpose": "layout transpose",
            "Add": "add (residual)", "Multiply": "multiply", "Sigmoid": "sigmoid", "Mean": "mean (pooling)",
            "Static Reshape": "reshape", "Copy": "copy",
            # XNNPACK 1.5.1 leaves its int8 lookup-table unary ops unnamed: on B0, one per SiLU and SE sigmoid
            "Invalid Unary Op": "int8 unary op (sigmoid, SiLU)"}


def op_name(event: str) -> str:
    """An XNNPACK event name without its counter: 'Convert (NC) #3' -> 'Convert (NC)'."""
    return re.sub(r"\s+#\d+$", "", event)


def op_kind(event: str) -> str:
    """A short kind for a non-conv XNNPACK event ('Constant Pad (ND, X32) #2' -> 'explicit pad (fp32)'); the
    operator name itself when unknown."""
    name = op_name(event)
    base = name.split(" (")[0]
    kind = OP_KINDS.get(base, name)
    if base == "Constant Pad":
        kind += " (fp32)" if "X32" in name else " (int8)"
    return kind


def layer_kinds(gm: torch.fx.GraphModule) -> list[str]:
    """The kind of every conv and linear of an exported (float) graph module, in graph order: 'stem/full conv kxk
    s{stride}', 'depthwise kxk s{stride}', '1x1 conv' or 'classifier (linear)' -- one per XNNPACK conv/GEMM event
    of the program lowered from it."""
    aten = torch.ops.aten
    kinds = []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target in (aten.linear.default, aten.addmm.default):
            kinds.append("classifier (linear)")
        elif n.target in (aten.conv1d.default, aten.conv2d.default, aten.convolution.default):
            w = n.args[1]
            val = operator.attrgetter(w.target)(gm) if w.op == "get_attr" else w.meta.get("val")
            shape = tuple(val.shape) if val is not None else ()
            stride = n.args[3] if len(n.args) > 3 else 1
            s = stride[0] if isinstance(stride, (list, tuple)) else stride
            groups = n.args[8] if n.target == aten.convolution.default else (n.args[6] if len(n.args) > 6 else 1)
            k = "x".join(str(d) for d in shape[2:]) or "?"
            if groups > 1 and shape and shape[1] == 1:
                kinds.append(f"depthwise {k} s{s}")
            elif shape[2:] and all(d == 1 for d in shape[2:]):
                kinds.append("1x1 conv")
            else:
                kinds.append(f"full conv {k} s{s}")
    return kinds


def label_events(events: Sequence[str], kinds: Sequence[str] | None = None) -> list[str]:
    """A kind for each event: conv/GEMM events take `kinds` in order when their counts match (else the operator
    name), the others `op_kind`."""
    gemm = [e for e in events if op_name(e).startswith(("Convolution", "Fully Connected"))]
    named = kinds is not None and len(kinds) == len(gemm)
    it = iter(kinds or ())
    return [(next(it) if named else op_name(e)) if e in gemm else op_kind(e) for e in events]


def pte_op_times(programs: Mapping[str, str | os.PathLike], x: torch.Tensor, runs: int = 20, warmup: int = 3
                 ) -> dict[str, dict[str, Any]]:
    """Per-operator times of each program (name -> .pte path) on input `x`: all programs are loaded with ETDump
    and run `warmup + runs` times in interleaved rounds (one run of each per round, rotating order); the warm-up
    runs are dropped. Returns, per program, `events` (execution order: event name, median_ms, min_ms),
    `execute_ms` (median of the whole method under profiling) and `runs`. Size the threadpool first
    (`set_pte_threads`); the programs run on it."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"invalid runs={runs}, warmup={warmup}: expected runs >= 1 and warmup >= 0")
    lib = need_executorch("executorch.extension.pybindings.portable_lib")
    devtools = need_executorch("executorch.devtools")
    for p in programs.values():
        if not Path(p).exists():
            raise FileNotFoundError(f"no such ExecuTorch program: {p}")
    mods = {k: lib._load_for_executorch(str(p), enable_etdump=True) for k, p in programs.items()}
    for m in mods.values():
        LOADED_METHODS.add(m)  # the threadpool must not be resized under them either
    x = x.detach().float().contiguous()
    names = list(mods)
    for r in range(warmup + runs):
        for k in names[r % len(names):] + names[:r % len(names)]:
            mods[k].forward([x])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, m in mods.items():
            path = Path(tmp) / f"{len(out)}.etdp"
            m.write_etdump_result_to_file(str(path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notices, "no output buffer" (none was asked for)
                inspector = devtools.Inspector(etdump_path=str(path))
            events, execute = [], float("nan")
            for block in inspector.event_blocks:
                for e in block.events:
                    raw = list(e.perf_data.raw) if e.perf_data is not None else []
                    if len(raw) < warmup + runs:
                        continue  # one-off events (method load/init)
                    kept = raw[warmup:]
                    if e.name == "Method::execute":
                        execute = statistics.median(kept)
                    elif e.is_delegated_op:
                        events.append({"event": e.name, "median_ms": statistics.median(kept), "min_ms": min(kept)})
            out[k] = {"events": events, "execute_ms": execute, "runs": runs}
    del mods
    return out


def time_by_kind(events: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Sum of the events' median times and their count per kind (`labels`, one per event), largest first."""
    ms: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for e, k in zip(events, labels, strict=True):
        ms[k] += e["median_ms"]
        count[k] += 1
    return {k: {"ms": ms[k], "count": count[k]} for k in sorted(ms, key=ms.get, reverse=True)}
