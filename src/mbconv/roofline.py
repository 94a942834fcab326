"""Design meets hardware: per-layer arithmetic intensity against this machine's roofline, and measured per-layer
latency beside the roofline prediction.

The machine (`measure_machine`): fp32 matmul peak (GFLOP/s, `torch.mm`, best of a few) and copy bandwidth (GB/s,
`Tensor.copy_` of a tensor much larger than the caches, read + write bytes), both with the thread count the
model will run with, measured in the same process right before the model. These are the two roofs.

The layers (`layer_table`): one forward pass under a `TorchDispatchMode` records every aten op with the module
that ran it (the innermost module on a stack kept by forward hooks). One row per module that runs ops itself:
leaf layers (conv, linear, BN, activation) and, for modules whose own forward does work between children, that
work too (the SE's pooling and gate multiply, a block's residual add, the network's global pool). So the rows
work on any `nn.Module` (timm models included), in 1-D, 2-D and 3-D.

Cost model of one row (stated because every number below depends on it):
- MACs: conv = output elements x Cin/groups x prod(k); matmul/addmm = M x K x N (the same count as
  `cost.spec_cost`, which the tests check); every other op has 0 MACs.
- bytes moved: each op reads all its tensor operands (activations *and* weights, bias included) once from
  memory and writes its outputs once; nothing stays in cache between ops. In-place ops read and write their
  target. Broadcast (stride-0) dimensions count once. View ops (reshape, flatten, transpose) move nothing.
  fp32 = 4 bytes per element, int8 = 1 (the int8 column is what the same layer would move if every tensor were
  int8; it is not measured).
- arithmetic intensity = MACs / bytes; roofline-predicted time = max(2 MACs / peak, bytes / bandwidth); the
  layer is "compute"-bound when the first term wins, else "memory"-bound. The ridge point (in MACs per byte) is
  peak / (2 bandwidth).

The measured per-layer latency (`measure_layers`) comes from per-module timing hooks over repeated runs of the
inference path (`deploy.prepare_inference`, channels_last for 2-D/3-D): each module's self time = its wall time
minus its children's, median over runs; the plain (hook-free) latency is timed in the same interleaved rounds,
so hook overhead is visible (`hooked_total_ms` vs `latency_ms`). Row names are module paths of the profiled
module, so measured and predicted rows are the same rows.

The latency-constrained compound scaling behind `mbconv scale --latency-ms` is `mbconv.latency_search`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .plotting import plt, savefig

aten = torch.ops.aten

KINDS = ("pointwise", "depthwise", "full conv", "grouped conv", "SE", "linear", "norm", "activation", "pool",
         "elementwise")
MEMORY_KINDS_EXPECTED = ("depthwise", "SE", "activation", "norm", "pool", "elementwise")

_ACT = {"silu", "relu", "hardtanh", "hardswish", "sigmoid", "gelu", "hardsigmoid", "tanh", "mish", "leaky_relu",
        "elu", "clamp", "clamp_min", "relu6", "softmax", "_softmax", "log_softmax", "_log_softmax"}
_NORM = {"native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "batch_norm",
         "native_layer_norm", "native_group_norm", "_batch_norm_impl_index", "cudnn_batch_norm"}
_POOL = {"mean", "sum", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
         "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
         "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool2d"}
_MM = {"mm", "addmm", "bmm", "baddbmm"}


# -- the machine ---------------------------------------------------------------------------------------------
def measure_machine(threads: int | None = None, seconds: float = 1.5, n: int = 1024, copy_mib: int = 128
                    ) -> dict[str, float]:
    """This machine's two roofs with `threads` intra-op threads (default: the current setting).

    peak_gflops: best fp32 `torch.mm` rate of n x n by n x n matrices (2 n^3 FLOP per product);
    bandwidth_gbs: best `copy_` rate of a `copy_mib` MiB fp32 tensor (read + write bytes, so copying B bytes
    counts 2B). Best-of rather than median: a roof is what the machine can reach, and on a shared machine the
    median mostly measures the neighbours. Each takes about `seconds` / 2.
    """
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up: first call allocates and picks the kernel
        rates: list[float] = []
        t_end = time.perf_counter() + seconds / 2
        while len(rates) < 3 or (time.perf_counter() < t_end and len(rates) < 50):
            t0 = time.perf_counter()
            torch.mm(a, b)
            rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
        src = torch.randn(copy_mib * 2**20 // 4)
        dst = torch.empty_like(src)
        dst.copy_(src)  # touch every page once so page faults are not timed
        bws: list[float] = []
        t_end = time.perf_counter() + seconds / 2
        while len(bws) < 3 or (time.perf_counter() < t_end and len(bws) < 50):
            t0 = time.perf_counter()
            dst.copy_(src)
            bws.append(2 * src.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(old)
    peak, bw = max(rates), max(bws)
    return {"threads": threads or old, "peak_gflops": peak, "peak_gflops_median": statistics.median(rates),
            "bandwidth_gbs": bw, "bandwidth_gbs_median": statistics.median(bws),
            "ridge_macs_per_byte": peak / (2 * bw), "matmul_n": n, "copy_mib": copy_mib}


# -- recording ops per module --------------------------------------------------------------------------------
def _unique_elems(t: torch.Tensor) -> int:
    """Elements a kernel must actually touch: broadcast (stride-0) dimensions count once."""
    return math.prod(s for s, st in zip(t.shape, t.stride()) if st != 0) if t.dim() else 1


def _op_macs(name: str, args: Sequence[Any], out: Any) -> int:
    if name == "convolution":
        x, w = args[0], args[1]
        transposed = bool(args[6]) if len(args) > 6 else False
        k = math.prod(w.shape[2:])
        if transposed:  # weight (Cin, Cout/groups, k...): every input element meets Cout/groups x k weights
            return x.numel() * w.shape[1] * k
        return out.numel() * w.shape[1] * k
    if name in ("mm", "addmm"):
        a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
        return a.shape[0] * a.shape[1] * b.shape[1]
    if name in ("bmm", "baddbmm"):
        a, b = (args[0], args[1]) if name == "bmm" else (args[1], args[2])
        return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return 0


@dataclass
class _Op:
    module: str
    name: str
    macs: int
    elems: int  # elements read + written (activations and weights)
    weight_elems: int  # of which parameters (weights, bias, BN affine/statistics)
    conv: tuple[int, int, int] | None = None  # (in_channels, groups, kernel elements) of a convolution


class _Recorder(TorchDispatchMode):
    """Records every non-view aten op with the module on top of `stack`."""

    def __init__(self, stack: list[str], params: set[int]) -> None:
        super().__init__()
        self.stack, self.params, self.ops = stack, params, []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False):
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not ins:  # factory ops (empty, zeros): allocation, no traffic
            return out
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        name = func.overloadpacket.__name__
        if name.endswith("_") and not name.startswith("__"):  # in-place variant: same op, same traffic model
            name = name[:-1]
        if name in ("detach", "lift_fresh", "alias"):
            return out
        elems = sum(_unique_elems(t) for t in ins) + sum(_unique_elems(t) for t in outs)
        welems = sum(_unique_elems(t) for t in ins if _storage_key(t) in self.params)
        conv = None
        if name == "convolution":
            w = args[1]
            conv = (w.shape[1] * (args[8] if len(args) > 8 else 1), args[8] if len(args) > 8 else 1,
                    math.prod(w.shape[2:]))
        self.ops.append(_Op(self.stack[-1], name, _op_macs(name, args, out), elems, welems, conv))
        return out


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. functionalized): never a weight
        return -1


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules(remove_duplicate=False)}


def _record_ops(model: nn.Module, x: torch.Tensor) -> list[_Op]:
    names = _module_names(model)
    stack = ["(root)"]
    handles = []

    def pre(m: nn.Module, _inp: Any) -> None:
        stack.append(names.get(m) or "(root)")

    def post(m: nn.Module, _inp: Any, _out: Any) -> None:
        stack.pop()

    for m in names:
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    params = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    rec = _Recorder(stack, params)
    try:
        with torch.no_grad(), rec:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return rec.ops


# -- the table ------------------------------------------------------------------------------------------------
@dataclass
class LayerRow:
    """One module's own work: MACs, traffic, intensity, roofline prediction and (optionally) measured time."""

    name: str
    kind: str
    ops: str  # the aten ops it ran, e.g. 'convolution' or 'mean+mul'
    macs: int
    elems: int  # elements read + written per forward (batch included)
    weight_elems: int
    bytes_fp32: int
    bytes_int8: int
    intensity_fp32: float  # MACs per byte
    intensity_int8: float
    predicted_ms: float
    bound: str  # 'memory' or 'compute'
    measured_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        """measured / predicted (>= 1 in a consistent model: the roof is an upper bound on speed)."""
        if self.measured_ms is None or self.predicted_ms <= 0:
            return None
        return self.measured_ms / self.predicted_ms

    @property
    def achieved_gflops(self) -> float | None:
        if not self.measured_ms:
            return None
        return 2 * self.macs / (self.measured_ms * 1e-3) / 1e9

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratio"] = self.ratio
        d["achieved_gflops"] = self.achieved_gflops
        return d


def _is_se(name: str) -> bool:
    parts = name.lower().split(".")
    return any(p == "se" or p.startswith("se_") or "squeeze" in p or "excit" in p for p in parts)


def _kind(name: str, ops: list[_Op]) -> str:
    if _is_se(name):
        return "SE"
    convs = [o for o in ops if o.conv is not None]
    if convs:
        cin, groups, k = max(convs, key=lambda o: o.macs).conv  # type: ignore[misc]
        if groups > 1 and groups == cin:
            return "depthwise"
        if groups > 1:
            return "grouped conv"
        return "pointwise" if k == 1 else "full conv"
    names = {o.name for o in ops}
    if names & _MM:
        return "linear"
    if names & _NORM:
        return "norm"
    if names & _POOL:
        return "pool"
    if names & _ACT:
        return "activation"
    return "elementwise"


def _example_input(model: nn.Module, shape_or_res: int | Sequence[int] | torch.Tensor, batch: int = 1
                   ) -> torch.Tensor:
    """An input tensor: given as is, a full shape (N, C, *spatial), or a resolution for a model with `.spec`."""
    if isinstance(shape_or_res, torch.Tensor):
        return shape_or_res
    spec = getattr(model, "spec", None)
    if isinstance(shape_or_res, int):
        if spec is None:
            raise ValueError("a bare resolution needs a model with .spec; give the full input shape (N, C, ...)")
        if shape_or_res < 1:
            raise ValueError(f"invalid resolution={shape_or_res!r}: must be >= 1")
        return torch.randn(batch, spec.in_chans, *([shape_or_res] * spec.dims))
    shape = tuple(int(s) for s in shape_or_res)
    if spec is not None and len(shape) == spec.dims:  # spatial size only
        shape = (batch, spec.in_chans, *shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"invalid input shape {shape_or_res!r}")
    return torch.randn(*shape)


def layer_table(model: nn.Module, input_shape: int | Sequence[int] | torch.Tensor, machine: dict[str, float],
                dtype_bytes: int = 4, batch: int = 1) -> list[LayerRow]:
    """Per-module rows (see the module docstring for the cost model) of one forward pass of `model`, in forward
    order, with the roofline prediction on `machine` (`measure_machine`). `input_shape` is an input tensor, its
    full shape, its spatial size, or a resolution (models with `.spec`). Numbers are for the whole batch."""
    x = _example_input(model, input_shape, batch)
    ops = _record_ops(model.eval(), x)
    grouped: dict[str, list[_Op]] = {}
    for o in ops:
        grouped.setdefault(o.module, []).append(o)
    peak = machine["peak_gflops"] * 1e9
    bw = machine["bandwidth_gbs"] * 1e9
    rows = []
    for name, group in grouped.items():
        macs = sum(o.macs for o in group)
        elems = sum(o.elems for o in group)
        t_compute, t_memory = 2 * macs / peak, elems * dtype_bytes / bw
        rows.append(LayerRow(name=name, kind=_kind(name, group), ops="+".join(dict.fromkeys(o.name for o in group)),
                             macs=macs, elems=elems, weight_elems=sum(o.weight_elems for o in group),
                             bytes_fp32=4 * elems, bytes_int8=elems, intensity_fp32=macs / max(4 * elems, 1),
                             intensity_int8=macs / max(elems, 1), predicted_ms=1e3 * max(t_compute, t_memory),
                             bound="compute" if t_compute > t_memory else "memory"))
    return rows


# -- measured per-layer latency ---------------------------------------------------------------------------------
def _timing_hooks(model: nn.Module, acc: dict[str, float]) -> list[Any]:
    """Hooks adding each module's self time (wall time minus its children's) to `acc` (seconds)."""
    names = _module_names(model)
    frames: list[list[Any]] = []  # [name, start, children's time]

    def pre(m: nn.Module, _inp: Any) -> None:
        frames.append([names.get(m) or "(root)", 0.0, 0.0])
        frames[-1][1] = time.perf_counter()  # last, so the hook's own bookkeeping is not timed

    def post(m: nn.Module, _inp: Any, _out: Any) -> None:
        t = time.perf_counter()
        name, t0, child = frames.pop()
        dt = t - t0
        acc[name] = acc.get(name, 0.0) + dt - child
        if frames:
            frames[-1][2] += dt

    handles = []
    for m in names:
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def inference_model(model: nn.Module, resolution: int | Sequence[int] | None = None) -> nn.Module:
    """The module to profile: `deploy.prepare_inference` (BN folded, in-place ops, channels_last for 2-D/3-D)
    for an MBConvNet-like model, else `model.eval()` as it is."""
    from .inference import prepare_inference

    spec = getattr(model, "spec", None)
    if spec is not None and all(hasattr(model, a) for a in ("stem", "stages", "head", "classifier")) \
            and not getattr(model, "inplace", False):
        return prepare_inference(model, resolution, channels_last=spec.dims > 1)
    return model.eval()


def _layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from .inference import channels_last_input

    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if convs and convs[0].weight.is_contiguous(memory_format=torch.channels_last if x.ndim == 4
                                               else torch.channels_last_3d) and x.ndim in (4, 5):
        return channels_last_input(x)
    return x


def measure_layers(model: nn.Module, x: torch.Tensor, rounds: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Per-module self time (ms, median over `rounds` hooked runs) and the hook-free latency (ms, median), timed
    in interleaved rounds (one plain run, then one hooked run) so both see the same machine load."""
    x = _layout(model, x)
    per_run: list[dict[str, float]] = []
    plain: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(x)
            plain.append(time.perf_counter() - t0)
            acc: dict[str, float] = {}
            handles = _timing_hooks(model, acc)
            try:
                model(x)
            finally:
                for h in handles:
                    h.remove()
            per_run.append(acc)
    names = list(per_run[0])
    med = {n: 1e3 * statistics.median(r.get(n, 0.0) for r in per_run) for n in names}
    return {"self_ms": med, "latency_ms": 1e3 * statistics.median(plain), "latency_min_ms": 1e3 * min(plain),
            "hooked_total_ms": 1e3 * statistics.median(sum(r.values()) for r in per_run), "rounds": rounds}


@dataclass
class Roofline:
    """A model's per-layer roofline on one machine, with measured times."""

    name: str
    input_shape: tuple[int, ...]
    machine: dict[str, float]
    rows: list[LayerRow]
    latency_ms: float  # hook-free median of the whole forward
    hooked_total_ms: float  # median sum of all modules' self times with timing hooks on
    overhead_ms: float  # self time of modules that ran no op (Python, hooks): part of hooked_total_ms
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def predicted_ms(self) -> float:
        return sum(r.predicted_ms for r in self.rows)

    def share(self, bound: str = "memory", measured: bool = True) -> float:
        """Fraction of the (measured or predicted) layer time spent in `bound`-bound rows."""
        key = (lambda r: r.measured_ms or 0.0) if measured else (lambda r: r.predicted_ms)
        total = sum(key(r) for r in self.rows)
        return sum(key(r) for r in self.rows if r.bound == bound) / total if total else 0.0

    def by_kind(self) -> list[dict[str, Any]]:
        """Totals per layer kind: MACs, bytes, predicted and measured time, MACs per byte, bound count."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            d = out.setdefault(r.kind, {"kind": r.kind, "rows": 0, "macs": 0, "bytes_fp32": 0, "predicted_ms": 0.0,
                                        "measured_ms": 0.0, "memory_bound_rows": 0})
            d["rows"] += 1
            d["macs"] += r.macs
            d["bytes_fp32"] += r.bytes_fp32
            d["predicted_ms"] += r.predicted_ms
            d["measured_ms"] += r.measured_ms or 0.0
            d["memory_bound_rows"] += r.bound == "memory"
        for d in out.values():
            d["intensity_fp32"] = d["macs"] / max(d["bytes_fp32"], 1)
        return sorted(out.values(), key=lambda d: -d["measured_ms"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "machine": self.machine,
                "macs": self.macs, "latency_ms": self.latency_ms, "hooked_total_ms": self.hooked_total_ms,
                "overhead_ms": self.overhead_ms, "predicted_ms": self.predicted_ms,
                "memory_bound_share_measured": self.share("memory", True),
                "memory_bound_share_predicted": self.share("memory", False), "by_kind": self.by_kind(),
                "rows": [r.to_dict() for r in self.rows], **self.extra}


def profile_model(model: nn.Module, input_shape: int | Sequence[int] | torch.Tensor, batch: int = 1,
                  machine: dict[str, float] | None = None, rounds: int = 10, threads: int | None = None,
                  inference: bool = True, name: str | None = None) -> Roofline:
    """Roofline table of `model` with measured per-layer latency on this machine.

    An MBConvNet is profiled on its inference path (`deploy.prepare_inference`; `inference=False` keeps the
    module as given); any other module as it is, in eval mode. The machine is measured first unless given,
    with the same thread count."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = _example_input(model, input_shape, batch)
        res = tuple(x.shape[2:])
        net = inference_model(model, res) if inference else model.eval()
        machine = machine or measure_machine()
        rows = layer_table(net, x, machine)
        meas = measure_layers(net, x, rounds=rounds)
    finally:
        torch.set_num_threads(old)
    for r in rows:
        r.measured_ms = meas["self_ms"].get(r.name, 0.0)
    with_ops = {r.name for r in rows}
    overhead = sum(v for k, v in meas["self_ms"].items() if k not in with_ops)
    spec = getattr(model, "spec", None)
    return Roofline(name or (spec.name if spec is not None else type(model).__name__), tuple(x.shape), machine,
                    rows, meas["latency_ms"], meas["hooked_total_ms"], overhead,
                    {"rounds": rounds, "threads": torch.get_num_threads() if threads is None else threads,
                     "inference_path": inference and net is not model})


# -- figures ------------------------------------------------------------------------------------------------------
_COLORS = {"pointwise": "tab:blue", "depthwise": "tab:red", "full conv": "tab:purple", "grouped conv": "tab:pink",
           "SE": "tab:orange", "linear": "tab:cyan", "norm": "tab:olive", "activation": "tab:green",
           "pool": "tab:brown", "elementwise": "tab:gray"}


def fig_roofline(rf: Roofline, path: str | Path, title: str | None = None) -> Path:
    """Left: log-log roofline (MACs/byte vs achieved GFLOP/s, the matmul and bandwidth roofs, one point per row
    with MACs, coloured by kind). Right: measured vs roofline-predicted time per row (the diagonal = on the
    roof)."""
    p = plt()
    fig, (ax, ax2) = p.subplots(1, 2, figsize=(11, 4.3))
    peak, bw = rf.machine["peak_gflops"], rf.machine["bandwidth_gbs"]
    pts = [r for r in rf.rows if r.macs > 0 and r.measured_ms]
    xs = [r.intensity_fp32 for r in pts] or [1.0]
    lo, hi = min(min(xs) / 2, 0.05), max(max(xs) * 2, 4 * rf.machine["ridge_macs_per_byte"])
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peak, 2 * g * bw) for g in grid], "k-", lw=1.5,
            label=f"roof: {peak:.0f} GFLOP/s, {bw:.1f} GB/s")
    for kind in KINDS:
        sel = [r for r in pts if r.kind == kind]
        if sel:
            ax.scatter([r.intensity_fp32 for r in sel], [r.achieved_gflops for r in sel], s=18,
                       c=_COLORS[kind], label=kind, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs / byte, fp32)")
    ax.set_ylabel("achieved GFLOP/s (measured)")
    ax.set_title(title or f"{rf.name}: roofline, {rf.extra.get('threads', '?')} thread(s)")
    ax.legend(fontsize=7)
    for kind in KINDS:
        sel = [r for r in rf.rows if r.kind == kind and r.measured_ms and r.predicted_ms > 0]
        if sel:
            ax2.scatter([r.predicted_ms for r in sel], [r.measured_ms for r in sel], s=14, c=_COLORS[kind],
                        label=kind, alpha=0.8)
    allv = [v for r in rf.rows if r.measured_ms and r.predicted_ms > 0 for v in (r.measured_ms, r.predicted_ms)]
    if allv:
        a, b = min(allv) / 2, max(allv) * 2
        ax2.plot([a, b], [a, b], "k--", lw=1, label="measured = roofline")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("roofline-predicted time (ms)")
    ax2.set_ylabel("measured self time (ms)")
    ax2.set_title(f"measured {rf.latency_ms:.2f} ms vs predicted {rf.predicted_ms:.2f} ms in total")
    ax2.legend(fontsize=7)
    return savefig(fig, path)


def format_layer_table(rf: Roofline, top: int | None = None, sort: str = "measured") -> str:
    """The per-layer table as text, sorted by measured (or predicted) time, `top` rows."""
    key = (lambda r: -(r.measured_ms or 0.0)) if sort == "measured" else (lambda r: -r.predicted_ms)
    rows = sorted(rf.rows, key=key)[:top] if top else sorted(rf.rows, key=key)
    lines = [f"{'layer':34s} {'kind':11s} {'MACs':>12s} {'KiB fp32':>9s} {'MAC/B':>7s} {'MAC/B i8':>8s} "
             f"{'bound':7s} {'pred ms':>8s} {'meas ms':>8s} {'meas/pred':>9s}"]
    for r in rows:
        ratio = f"{r.ratio:9.1f}" if r.ratio is not None else f"{'-':>9s}"
        lines.append(f"{r.name[-34:]:34s} {r.kind:11s} {r.macs:>12,d} {r.bytes_fp32 / 1024:>9.1f} "
                     f"{r.intensity_fp32:>7.2f} {r.intensity_int8:>8.2f} {r.bound:7s} {r.predicted_ms:>8.3f} "
                     f"{(r.measured_ms or 0):>8.3f} {ratio}")
    return "\n".join(lines)
