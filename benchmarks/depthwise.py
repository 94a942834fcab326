"""Depthwise training speed on CPU: our depthwise backward (`mbconv.layers.depthwise`) against ATen's, per layer
and per training step, and the training step against timm's same network.

    .venv/bin/python -m benchmarks.depthwise [--quick] [--threads 1,2]
        [--sections layers,methods,step,compiled,overhead,infer,bn_act,native_dw,pointwise1d,pointwise2d]
        [--models tour,b0,mnist1d,mbconv3d] [--clock wall|cpu] [--contiguous] [--out results/bench/depthwise.json]

Models: tour = B0 spec x0.5, 1 channel, 10 classes, 32 px, batch 64 (the tour's network); b0 = B0 at 224 px,
batch 8; mnist1d = the MNIST-1D net `mbconv1d_se4`, length 40, batch 64; mbconv3d = `mbconv3d_small` at 16^3,
batch 8 (not in the default list). 2-D/3-D models run channels_last as the trainer runs them (`--contiguous`:
NCHW).

Sections:
- layers: every distinct depthwise layer of the model (input shape and layout as the network feeds it, kernel,
  stride), forward + backward of one `DepthwiseConvNd` module with our backward on (ours) and off (ATen, same
  weights), and ATen's forward alone for scale;
- methods: per layer, each weight-gradient method (aten / fold / taps) and input-gradient method (aten / flip)
  of the cropped convolution alone, marked where the rule (`weight_grad_method` / `input_grad_method`) picks
  it: the measurements behind the per-shape rule;
- step: one SGD training step (zero_grad, forward, cross-entropy, backward, step) of the whole model: ours as
  the Trainer runs it (small-map 1x1 convs as matrix products, `fast_pointwise`; large-map memory-lean layers,
  `lean_layers`, with the fused native BN + activation kernels, the native depthwise kernels where they pay and
  the SE as one autograd node in the native SE kernels, and on maps below the lean size each block as one node,
  `layers/block_step.py`), ours with ATen's depthwise backward (`use_fast_backward(False)`, a deep copy with the
  same weights: only the depthwise kernel differs), ours without the native depthwise kernels
  (`use_native_depthwise(False)`: `DepthwiseConvFunction` everywhere), ours without the block step
  (`use_native_block(False)`: the layers one by one), and without it and the native SE kernels
  (`use_native_se(False)` too: `SqueezeExciteFn`, the step as the ninth session left it), ours with the plain
  SqueezeExcite (no SE node), ours with oneDNN for every 1x1 conv (no `fast_pointwise`), ours without the native kernels
  (`use_native(False)`: BN + activation and depthwise on PyTorch's ops or `DepthwiseConvFunction`), the same
  network on PyTorch's ops (ATen's depthwise backward, no native kernels, no SE node), for tour and b0 timm's
  same network with the same weights (`benchmarks.run.build_pair`, outputs checked equal), and both again under
  torch's fused SGD step (`fused=True`, the Trainer's optimizer on CPU; every other variant runs torch's default
  SGD, on CPU a Python loop over the parameters), and for 1-D models
  ours and ours on ATen's depthwise with contiguous maps (`use_channels_last_1d(False)`: the ATen reference in
  the layout it ran before 1-D maps went channels-last, layers/channels_last_1d.py), and for 2-D models ours with
  the seventh session's product rule (`MAX_LINEAR_PIXELS` = 16 instead of 64);
- compiled (not in the default list; minutes of compile per model): the SGD step under torch.compile with
  inductor's defaults (`TrainConfig.compile` adds the C++ wrapper on CPU since the ninth session: the tour's variant
  "C++ wrapper"; the depthwise layers traced into the native operators of
  `mbconv.layers.compiled` where the native kernels pay, small-map 1x1 convs into matrix products) against the
  eager step, ours compiled with the operator on every depthwise layer (the seventh session's routing), for tour
  and b0 timm's network eager and compiled and, for tour, ours compiled with inductor's C++ wrapper
  (`cpp_wrapper`), for mnist1d the eager net on ATen's depthwise (and the two
  contiguous 1-D variants of the step section); each compiled variant's compile time (first two steps, a fresh
  inductor cache);
- overhead (not in the default list; tour and b0): the SGD step of ours (as the trainer runs it) and timm's at
  batches 2 and 8 beside the benchmark batch, fresh copies per batch, learning rate 0 (the weights stay as
  initialised; the update's operations all run): the fixed cost per step;
- bn_act (not in the default list): per BN + activation layer of the model, forward + backward of PyTorch's BN
  and activation modules against the fused native kernels (`mbconv.layers.native`, as the trainer runs them), and
  the network's sum;
- native_dw (not in the default list): per depthwise layer of the model, forward + backward through the native
  depthwise kernels (`mbconv.layers.native_depthwise`), through the layer's path without them
  (`DepthwiseConvFunction`, or ATen where its rule leaves ATen) and through ATen, the
  pick of the size rule `native_dw_pays`, and the network's sum with those picks: the measurements behind it;
- pointwise1d (not in the default list; once, whatever `--models` says): 1-D pointwise convs on a grid of widths
  and lengths, forward + backward, oneDNN's conv1d against `PointwiseConv1d`'s batched product W @ x and the pick
  of its rule (`matmul_applies`): the measurements behind `MAX_MATMUL_LENGTH` and `MAX_MATMUL_WEIGHT`;
- pointwise2d (not in the default list; 2-D models): per 1x1 conv of the model on maps of more than one pixel
  (channels_last), forward + backward, oneDNN's conv against one `F.linear` product over the channels and the
  pick of `linear_applies`: the measurements behind `MAX_LINEAR_PIXELS`;
- infer (not in the default list): inference (eval mode, no autograd) of the whole model, NCHW and channels_last,
  at the benchmark batch and at batch 1, with the cropped kernel where `crop_pays_for_inference` says so (ours)
  and with ATen's full kernel everywhere (`use_fast_backward(False)`, the same module), and each layer the
  crop changes on its own.

Every timing is interleaved: each round runs every variant once (`inner` calls), in an order rotated by one each
round, so machine noise hits all variants alike. Ratios are per round (theirs / ours; > 1: ours faster), shown as
median (min-max). Step samples are printed (ms); every sample goes to the JSON file, the printed tables to the
.txt beside it.

On a shared machine pin the run to one core and one thread and count CPU time (time spent descheduled is then
not counted): `taskset -c 1 .venv/bin/python -m benchmarks.depthwise --threads 1 --clock cpu`. On a quiet machine
use the wall clock (the default) and 2 threads. `--quick` (3-5 rounds) takes about a minute on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.run import bench_start, build_pair, parse_threads, ratio_stats, write_bench_result
from mbconv.layers import compiled, pointwise
from mbconv.layers import depthwise as depthwise_module
from mbconv.layers.channels_last_1d import use_channels_last_1d
from mbconv.layers.depthwise import (
    DEPTHWISE_CONV,
    INPUT_GRAD_METHODS,
    WEIGHT_GRAD_METHODS,
    crop_pays_for_inference,
    input_grad,
    input_grad_method,
    is_channels_last,
    is_depthwise,
    plan_depthwise,
    use_fast_backward,
    weight_grad,
    weight_grad_method,
)
from mbconv.layers.memory import lean_layers
from mbconv.layers.native import native_depthwise_on, use_native, use_native_block, use_native_se
from mbconv.layers.native_depthwise import NativeDepthwiseFn, native_dw_pays, use_native_depthwise
from mbconv.layers.pointwise import (
    MAX_MATMUL_LENGTH,
    MAX_MATMUL_WEIGHT,
    POINTWISE_CONV,
    fast_pointwise,
    is_pointwise,
    linear_applies,
    matmul_applies,
    pointwise_matmul,
)

MODELS: dict[str, dict[str, Any]] = {
    "tour": dict(label="tour model (B0 x0.5, 1 ch, 32 px, batch 64)", name="efficientnet_b0", res=32,
                 in_chans=1, classes=10, width=0.5, batch=64, dims=2, timm="tour"),
    "b0": dict(label="EfficientNet-B0 (224 px, batch 8)", name="efficientnet_b0", res=224, in_chans=3,
               classes=1000, width=1.0, batch=8, dims=2, timm="b0"),
    "mnist1d": dict(label="MNIST-1D net mbconv1d_se4 (length 40, batch 64)", name="mbconv1d_se4", res=40,
                    in_chans=1, classes=10, width=1.0, batch=64, dims=1, timm=None),
    "mbconv3d": dict(label="3-D net mbconv3d_small (16^3, batch 8)", name="mbconv3d_small", res=16, in_chans=1,
                     classes=10, width=1.0, batch=8, dims=3, timm=None),
}
LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
_layout = {"last": True}


def build_ours(key: str) -> nn.Module:
    """Our model for `key` (train mode, in the benchmark's layout), seeded."""
    from mbconv import create_model

    c = MODELS[key]
    torch.manual_seed(0)
    over = dict(width_mult=c["width"]) if c["width"] != 1.0 else {}
    model = create_model(c["name"], num_classes=c["classes"], in_chans=c["in_chans"], **over)
    return to_layout(model.train(), c["dims"])


def to_layout(obj: Any, dims: int) -> Any:
    """channels_last(_3d) for 2-D/3-D models and tensors (as the trainer runs 2-D ones) unless `--contiguous`."""
    return obj.to(memory_format=LAST[dims]) if dims in LAST and _layout["last"] else obj


def model_input(key: str, batch: int | None = None) -> torch.Tensor:
    c = MODELS[key]
    x = torch.randn(batch or c["batch"], c["in_chans"], *[c["res"]] * c["dims"])
    return to_layout(x, c["dims"])


def depthwise_layers(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Distinct depthwise layer configurations met by a forward of `model` on `x`, in network order, with counts
    and the memory layout the input has there (a channels_last model's activations need not all be)."""
    seen: dict[tuple, dict[str, Any]] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        last = is_channels_last(inp[0])
        key = (tuple(inp[0].shape), mod.kernel_size, mod.stride, mod.padding, last)
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = dict(shape=tuple(inp[0].shape), kernel=mod.kernel_size, stride=mod.stride,
                             padding=mod.padding, count=1, last=last)

    hs = [m.register_forward_hook(hook) for m in model.modules() if is_depthwise(m) and m.groups > 1]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return list(seen.values())


def layer_label(cfg: dict[str, Any]) -> str:
    n, c, *sp = cfg["shape"]
    layout = "" if len(sp) == 1 or cfg["last"] == _layout["last"] else (" CL" if cfg["last"] else " NC")
    return (f"N{n} C{c} {'x'.join(map(str, sp))} k{cfg['kernel'][0]} s{cfg['stride'][0]}{layout}"
            + (f" (x{cfg['count']})" if cfg["count"] > 1 else ""))


def layer_tensors(cfg: dict[str, Any], dims: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(module, input requiring grad, grad_output) for one depthwise layer configuration."""
    c = cfg["shape"][1]
    m = DEPTHWISE_CONV[dims](c, c, cfg["kernel"], cfg["stride"], cfg["padding"], groups=c, bias=False)
    m = to_layout(m, dims)
    x = torch.randn(cfg["shape"])
    x = (x.contiguous(memory_format=LAST[dims]) if cfg["last"] else x).requires_grad_()
    with torch.no_grad():
        g = torch.randn_like(m(x))
    return m, x, g


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = {"name": "wall"}


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int, inner: int, warmup: int = 2
                ) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round; every round runs each variant `inner` times, in
    an order rotated by one each round. The clock is `--clock`: wall time, or this process's CPU time (on a
    shared core, time spent descheduled is not counted; with N threads it sums their CPU time)."""
    clock = CLOCKS[_clock["name"]]
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fn = variants[n]
            t0 = clock()
            for _ in range(inner):
                fn()
            times[n].append((clock() - t0) / inner)
    return times


def describe(key: str) -> str:
    c = MODELS[key]
    layout = "channels_last" if c["dims"] in LAST and _layout["last"] else "contiguous"
    if c["dims"] == 1:  # the lean layers put 1-D maps channels-last in the step (layers/channels_last_1d.py)
        layout = "contiguous input, channels-last 1-D maps in the step"
    return f"{c['label']}, {layout}, {torch.get_num_threads()} thread(s), {_clock['name']} clock"


def fmt_ms(ts: list[float]) -> str:
    return " ".join(f"{t * 1e3:.2f}" for t in ts)


def fmt_ratio(s: dict[str, float]) -> str:
    return f"x{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


# -- sections --------------------------------------------------------------------------------------------------
def time_layer(cfg: dict[str, Any], dims: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call: forward + backward with our backward ('ours') and ATen's ('aten'); ATen forward ('fwd')."""
    m, x, g = layer_tensors(cfg, dims)

    def step(fast: bool) -> None:
        with use_fast_backward(fast):
            x.grad = m.weight.grad = None
            m(x).backward(g)

    def fwd() -> None:
        with torch.no_grad():
            m(x)

    return interleaved({"ours": lambda: step(True), "aten": lambda: step(False), "fwd": fwd}, rounds,
                       inner=inner_for(lambda: step(False)))


def section_layers(key: str, rounds: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    c = MODELS[key]
    rows = []
    log(f"\n### per layer, forward + backward: {describe(key)}")
    log("| layer | ATen fwd ms | ATen fwd+bwd ms | ours fwd+bwd ms | ATen/ours per round |")
    log("|---|---|---|---|---|")
    for cfg in depthwise_layers(build_ours(key), model_input(key)):
        t = time_layer(cfg, c["dims"], rounds)
        r = ratio_stats(t["aten"], t["ours"])
        med = {k: statistics.median(v) for k, v in t.items()}
        log(f"| {layer_label(cfg)} | {med['fwd'] * 1e3:.2f} | {med['aten'] * 1e3:.2f} | {med['ours'] * 1e3:.2f} "
            f"| {fmt_ratio(r)} |")
        rows.append(dict(cfg, shape=list(cfg["shape"]), times=t, ratio=r))
    tot = {k: sum(statistics.median(row["times"][k]) * row["count"] for row in rows) for k in ("aten", "ours")}
    log(f"sum over the network's depthwise layers (x count): ATen {tot['aten'] * 1e3:.1f} ms, ours "
        f"{tot['ours'] * 1e3:.1f} ms, x{tot['aten'] / tot['ours']:.2f}")
    return rows


def section_native_dw(key: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Per depthwise layer, forward + backward: the native kernels (`NativeDepthwiseFn`, called directly), the
    layer's path without them ("before": `DepthwiseConvFunction`, or ATen's conv where `own_backward` leaves it,
    `use_native_depthwise(False)`) and ATen's (`use_fast_backward(False)`), the same weights; which one
    `native_dw_pays` picks, and the network's sum with the pick against without it."""
    c = MODELS[key]
    rows = []
    log(f"\n### native depthwise kernels per layer, forward + backward: {describe(key)}")
    log("| layer | native ms | before ms | ATen ms | before/native per round | rule picks |")
    log("|---|---|---|---|---|---|")
    for cfg in depthwise_layers(build_ours(key), model_input(key)):
        m, x, g = layer_tensors(cfg, c["dims"])

        def run(kind: str, m: nn.Module = m, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
            x.grad = m.weight.grad = None
            if kind == "native":
                NativeDepthwiseFn.apply(x, m.weight, m.bias, m.stride, m.padding).backward(g)
                return
            with use_native_depthwise(False), use_fast_backward(kind == "function"):
                m(x).backward(g)

        t = interleaved({k: functools.partial(run, k) for k in ("native", "function", "aten")}, rounds,
                        inner=inner_for(functools.partial(run, "aten")))
        r = ratio_stats(t["function"], t["native"])
        pick = "native" if native_dw_pays(x, m.kernel_size) else "function"  # "function": the path before
        med = {k: statistics.median(v) for k, v in t.items()}
        log(f"| {layer_label(cfg)} | {med['native'] * 1e3:.3f} | {med['function'] * 1e3:.3f} | "
            f"{med['aten'] * 1e3:.3f} | {fmt_ratio(r)} | {pick} |")
        rows.append(dict(cfg, shape=list(cfg["shape"]), times=t, ratio=r, pick=pick))
    picked = sum(statistics.median(row["times"][row["pick"]]) * row["count"] for row in rows)
    before = sum(statistics.median(row["times"]["function"]) * row["count"] for row in rows)
    log(f"sum over the network's depthwise layers (x count): with the rule's picks {picked * 1e3:.2f} ms, "
        f"without the native kernels {before * 1e3:.2f} ms, x{before / picked:.2f}")
    return {"layers": rows, "sum_ms": {"picked": picked * 1e3, "before": before * 1e3}}


POINTWISE_TO_PLAIN = {v: k for k, v in POINTWISE_CONV.items()}
POINTWISE_1D_GRID = [(cin, mult, length) for cin in (16, 32, 48, 64, 128) for mult in (4, 0.25) for length in
                     (10, 20, 40, 64, 128)]


def section_pointwise1d(rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """1-D pointwise convs (contiguous N, C, L; batch 64), forward + backward: oneDNN's conv1d (the plain module)
    against the batched product W @ x (`pointwise_matmul`, what `PointwiseConv1d` runs where its rule says), on a
    grid of widths (expand x4 and project /4) and lengths; which the rule (`matmul_applies`) picks. Not tied to a
    model."""
    rows = []
    log(f"\n### 1-D pointwise convs, forward + backward, batch 64, {torch.get_num_threads()} thread(s), "
        f"{_clock['name']} clock, {rounds} rounds")
    log("| in -> out channels | length | conv1d ms | W @ x ms | conv1d / W @ x per round | rule picks |")
    log("|---|---|---|---|---|---|")
    for cin, mult, length in POINTWISE_1D_GRID:
        cout = int(cin * mult) if mult >= 1 else cin
        cin_ = cin if mult >= 1 else int(cin / mult)
        torch.manual_seed(0)
        conv = nn.Conv1d(cin_, cout, 1)
        x = torch.randn(64, cin_, length, requires_grad=True)
        g = torch.randn(64, cout, length)

        def run(product: bool, m: nn.Module = conv, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
            x.grad = None
            m.zero_grad(set_to_none=True)
            (pointwise_matmul(x, m.weight, m.bias) if product else m(x)).backward(g)

        t = interleaved({"conv1d": functools.partial(run, False), "matmul": functools.partial(run, True)}, rounds,
                        inner=inner_for(functools.partial(run, False)))
        r = ratio_stats(t["conv1d"], t["matmul"])
        pick = "W @ x" if matmul_applies(x, conv.weight) else "conv1d"
        med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        log(f"| {cin_} -> {cout} | {length} | {med['conv1d']:.3f} | {med['matmul']:.3f} | {fmt_ratio(r)} | {pick} |")
        rows.append(dict(cin=cin_, cout=cout, length=length, times=t, ratio=r, pick=pick))
    return {"rows": rows, "max_matmul_length": MAX_MATMUL_LENGTH, "max_matmul_weight": MAX_MATMUL_WEIGHT}


def pointwise_layers(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Distinct 1x1 conv configurations (input shape, output channels) of `model` on maps of more than one pixel
    met by a forward on `x` (the SE's 1x1 convs on pooled maps are left out), in network order, with counts."""
    seen: dict[tuple, dict[str, Any]] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        key = (tuple(inp[0].shape), mod.out_channels)
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = dict(shape=tuple(inp[0].shape), cout=mod.out_channels, count=1)

    hs = [m.register_forward_hook(hook) for m in model.modules() if is_pointwise(m)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return [c for c in seen.values() if math.prod(c["shape"][2:]) > 1]


def section_pointwise2d(key: str, rounds: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per 1x1 conv of a 2-D model (channels_last, the trainer's layout), forward + backward: oneDNN's conv against
    one `F.linear` product over the channels (what `PointwiseConv2d` runs where `linear_applies` says), and the
    rule's pick: the measurements behind `MAX_LINEAR_PIXELS`."""
    rows = []
    log(f"\n### 1x1 convs, forward + backward: {describe(key)}, {rounds} rounds")
    log("| layer | conv ms | F.linear ms | conv / F.linear per round | rule picks |")
    log("|---|---|---|---|---|")
    for cfg in pointwise_layers(build_ours(key), model_input(key)):
        torch.manual_seed(0)
        n, cin, *sp = cfg["shape"]
        conv = POINTWISE_CONV[nn.Conv2d](cin, cfg["cout"], 1, bias=False).train()
        x = torch.randn(cfg["shape"]).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn(n, cfg["cout"], *sp).contiguous(memory_format=torch.channels_last)

        def run(product: bool, m: nn.Module = conv, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
            x.grad = None
            m.zero_grad(set_to_none=True)
            y = F.linear(x.permute(0, 2, 3, 1), m.weight.flatten(1)).permute(0, 3, 1, 2) if product else \
                F.conv2d(x, m.weight)
            y.backward(g)

        t = interleaved({"conv": functools.partial(run, False), "linear": functools.partial(run, True)}, rounds,
                        inner=inner_for(functools.partial(run, False)))
        r = ratio_stats(t["conv"], t["linear"])
        pick = "F.linear" if linear_applies(x, conv.weight) else "conv"
        med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        label = f"N{n} {cin}->{cfg['cout']} {'x'.join(map(str, sp))}" + (f" (x{cfg['count']})" if cfg["count"] > 1
                                                                         else "")
        log(f"| {label} | {med['conv']:.3f} | {med['linear']:.3f} | {fmt_ratio(r)} | {pick} |")
        rows.append(dict(cfg, shape=list(cfg["shape"]), label=label, times=t, ratio=r, pick=pick))
    return rows


def time_methods(cfg: dict[str, Any], dims: int, rounds: int) -> tuple[Any, set[str], dict[str, list[float]]]:
    """(plan, the rule's picks, seconds per call of every gradient method of the cropped conv: 'w_<method>',
    'i_<method>')."""
    m, x, g = layer_tensors(cfg, dims)
    x = x.detach()
    plan = plan_depthwise(tuple(x.shape[2:]), cfg["kernel"], cfg["stride"], cfg["padding"])
    last = is_channels_last(x)
    picks = {f"w_{weight_grad_method(plan, last)}", f"i_{input_grad_method(plan, last)}"}
    w = m.weight.detach()[plan.tap_slices()]
    v: dict[str, Callable[[], Any]] = {}
    for k in WEIGHT_GRAD_METHODS:
        v[f"w_{k}"] = functools.partial(weight_grad, g, x, w, plan, k)
    for k in INPUT_GRAD_METHODS:
        if k != "flip" or all(s == 1 for s in plan.stride):
            v[f"i_{k}"] = functools.partial(input_grad, g, x, w, plan, k)
    fns = list(v.values())
    return plan, picks, interleaved(v, rounds, inner=inner_for(lambda: [f() for f in fns]))


def method_cell(med: dict[str, float], k: str, picks: set[str]) -> str:
    """One table cell: median ms, '*' when the rule picks it, bold when it is the fastest of its kind."""
    if k not in med:
        return "-"
    best = min(v for n, v in med.items() if n[:2] == k[:2])
    s = f"{med[k] * 1e3:.2f}" + ("*" if k in picks else "")
    return f"**{s}**" if med[k] == best else s


def section_methods(key: str, rounds: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    c = MODELS[key]
    rows = []
    log(f"\n### gradient methods of the cropped conv (ms, median): {describe(key)}; * = the rule's pick, "
        "best in bold")
    log("| layer | live kernel | " + " | ".join(f"dW {m}" for m in WEIGHT_GRAD_METHODS) + " | "
        + " | ".join(f"dX {m}" for m in INPUT_GRAD_METHODS) + " |")
    log("|---|---|" + "---|" * (len(WEIGHT_GRAD_METHODS) + len(INPUT_GRAD_METHODS)))
    for cfg in depthwise_layers(build_ours(key), model_input(key)):
        plan, picks, t = time_methods(cfg, c["dims"], rounds)
        med = {k: statistics.median(v) for k, v in t.items()}
        cells = [method_cell(med, f"w_{k}", picks) for k in WEIGHT_GRAD_METHODS]
        cells += [method_cell(med, f"i_{k}", picks) for k in INPUT_GRAD_METHODS]
        log(f"| {layer_label(cfg)} | {'x'.join(map(str, plan.kernel))} | " + " | ".join(cells) + " |")
        rows.append(dict(cfg, shape=list(cfg["shape"]), live_kernel=plan.kernel, times=t, picks=sorted(picks)))
    return rows


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fast: bool | None,
                  native: bool = True, lr: float = 1e-3, fused: bool = False) -> Callable[[], None]:
    """One SGD step of `model`; `fast` sets our depthwise backward on/off for the step (None: leave it), `native`
    every native kernel (the lean layers' fused BN + activation, the native depthwise); `lr` 0 keeps the weights
    (every operation of the update still runs); `fused` takes torch's fused SGD step (one kernel for all
    parameters, what the Trainer's `make_optimizer` builds on CPU) instead of torch's default on CPU, a Python loop
    over the parameters."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=fused or None)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with contextlib.nullcontext() if fast is None else use_fast_backward(fast), use_native(native):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

    return step


def with_native_depthwise_off(step: Callable[[], None]) -> None:
    with use_native_depthwise(False):
        step()


def with_native_se_off(step: Callable[[], None]) -> None:
    with use_native_se(False):
        step()


def with_block_step_off(step: Callable[[], None]) -> None:
    with use_native_block(False):
        step()


def with_linear_pixels(pixels: int, step: Callable[[], None]) -> None:
    """`step` with `linear_applies` taking eager 1x1 products only up to `pixels` pixels (an earlier rule)."""
    before = pointwise.MAX_LINEAR_PIXELS
    pointwise.MAX_LINEAR_PIXELS = pixels
    try:
        step()
    finally:
        pointwise.MAX_LINEAR_PIXELS = before


def seventh_session_routing(x: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any) -> bool:
    """`compiled_dw_applies` as the seventh session had it: `mbconv::dw_conv` on every depthwise layer of a compiled
    step (the operator's own forward rule, native where `native_dw_pays`, ATen's elsewhere, unchanged)."""
    return (compiled.compiled_training_step(x, weight) and 3 <= x.dim() <= 5 and native_depthwise_on()
            and compiled.library_ready())


def with_operator_everywhere(step: Callable[[], None]) -> None:
    """`step` with the compiled routing of the seventh session (`seventh_session_routing`, no one-tap multiply).
    Patched around every call, so that the variant's trace sees it; the operator's forward rule is left alone."""
    applies, tap = depthwise_module.compiled_dw_applies, compiled.single_tap
    depthwise_module.compiled_dw_applies, compiled.single_tap = seventh_session_routing, (lambda *a: None)
    try:
        step()
    finally:
        depthwise_module.compiled_dw_applies, compiled.single_tap = applies, tap


def with_contiguous_1d(step: Callable[[], None]) -> None:
    with use_channels_last_1d(False):
        step()


def contiguous_1d_variants(ours: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
    """A 1-D model's step with contiguous maps (`use_channels_last_1d(False)`, the layout before the eighth
    session), ours and on ATen's depthwise, copies with the same weights: the ATen reference in either layout."""
    return {"ours, contiguous 1-D maps": functools.partial(
                with_contiguous_1d, train_step_fn(copy.deepcopy(ours), x, y, True)),
            "ours, ATen depthwise, contiguous 1-D maps": functools.partial(
                with_contiguous_1d, train_step_fn(copy.deepcopy(ours), x, y, False))}


def trainer_models(key: str) -> tuple[nn.Module, nn.Module | None]:
    """(ours, timm's) in training mode and the model's layout, the same weights (`build_pair` checks the outputs
    equal; None for timm where the model has no timm twin), ours as the Trainer runs it: small-map 1x1 convs as
    products (`fast_pointwise`) and its default size-chosen memory-lean layers (`lean_layers`)."""
    c = MODELS[key]
    if c["timm"]:
        ours, theirs = build_pair(c["timm"])
        theirs = to_layout(theirs.train(), c["dims"])
        ours = to_layout(ours.train(), c["dims"])
    else:
        ours, theirs = build_ours(key), None
    fast_pointwise(ours)
    lean_layers(ours)
    return ours, theirs


FUSED_OURS, FUSED_TIMM = "ours, fused SGD", "timm, fused SGD"


def section_step(key: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    c = MODELS[key]
    ours, theirs = trainer_models(key)
    aten = copy.deepcopy(ours)  # keeps the 1x1 products and lean layers: only the depthwise differs
    x = model_input(key)
    y = torch.randint(0, c["classes"], (x.shape[0],))
    no_dw = train_step_fn(copy.deepcopy(ours), x, y, True)
    plain_pointwise = copy.deepcopy(ours)
    for m in plain_pointwise.modules():  # back to nn.ConvNd: oneDNN for every 1x1 conv
        if type(m) in POINTWISE_TO_PLAIN:
            m.__class__ = POINTWISE_TO_PLAIN[type(m)]
    plain_se = copy.deepcopy(ours)
    lean_layers(plain_se, None)
    lean_layers(plain_se, kinds=("bn_act", "se_gate"))  # as the trainer, but the plain SqueezeExcite
    pytorch_ops = copy.deepcopy(plain_se)
    v = {"ours": train_step_fn(ours, x, y, True), "ours, ATen depthwise": train_step_fn(aten, x, y, False),
         "ours, no native depthwise": functools.partial(with_native_depthwise_off, no_dw),
         "ours, no block step": functools.partial(with_block_step_off, train_step_fn(copy.deepcopy(ours), x, y, True)),
         "ours, no block step, SE without native kernels": functools.partial(
             with_native_se_off, functools.partial(with_block_step_off,
                                                   train_step_fn(copy.deepcopy(ours), x, y, True))),
         "ours, no SE node": train_step_fn(plain_se, x, y, True),
         "ours, oneDNN for every 1x1 conv": train_step_fn(plain_pointwise, x, y, True),
         "ours, no native kernels": train_step_fn(copy.deepcopy(ours), x, y, True, native=False),
         "PyTorch ops (ATen depthwise, no native kernels, no SE node)": train_step_fn(pytorch_ops, x, y, False,
                                                                                     native=False)}
    if theirs is not None:
        v["timm"] = train_step_fn(theirs, x, y, None)
        # both networks under the Trainer's optimizer (torch's fused SGD): the same update, less fixed cost per step
        v[FUSED_OURS] = train_step_fn(copy.deepcopy(ours), x, y, True, fused=True)
        v[FUSED_TIMM] = train_step_fn(copy.deepcopy(theirs), x, y, None, fused=True)
    if c["dims"] == 1:
        v.update(contiguous_1d_variants(ours, x, y))
    else:
        v["ours, 1x1 products up to 16 pixels"] = functools.partial(
            with_linear_pixels, 16, train_step_fn(copy.deepcopy(ours), x, y, True))
    t = interleaved(v, rounds, inner=1, warmup=2)
    log(f"\n### training step (SGD): {describe(key)}, {rounds} rounds")
    for k, ts in t.items():
        log(f"{k:>22}: median {statistics.median(ts) * 1e3:.1f} ms; samples {fmt_ms(ts)}")
    ratios = {other: ratio_stats(t[other], t["ours"]) for other in t if other != "ours"}
    for other, r in ratios.items():
        log(f"{other} / ours per round: {fmt_ratio(r)}")
    if FUSED_TIMM in t:
        ratios[f"{FUSED_TIMM} / {FUSED_OURS}"] = r = ratio_stats(t[FUSED_TIMM], t[FUSED_OURS])
        log(f"{FUSED_TIMM} / {FUSED_OURS} per round: {fmt_ratio(r)}")
    return dict(times=t, ratios=ratios)


# inductor's C++ wrapper: the compiled graphs' kernels called from generated C++ instead of generated Python
CPP_WRAPPER = "ours, torch.compile, C++ wrapper"


def section_compiled(key: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The training step under torch.compile (inductor's defaults; the depthwise layers traced into `mbconv::dw_conv`
    where `compiled_dw_applies`, layers/compiled.py) against the eager step as the trainer runs it, the seventh
    session's routing (`with_operator_everywhere`), for tour the C++ wrapper `TrainConfig.compile` uses on CPU, and
    for tour and b0 timm's same network eager and compiled; for mnist1d the eager net on ATen's depthwise kernel.
    Ratios per round against ours eager, ours compiled and (tour) ours with the C++ wrapper. Compile time: the
    first two steps of each compiled variant, wall clock, in a fresh inductor cache (timm's second, in the same
    cache: it reuses kernels inductor generated for ours)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_depthwise_")
    torch._dynamo.reset()
    c = MODELS[key]
    ours, theirs = trainer_models(key)
    x = model_input(key)
    y = torch.randint(0, c["classes"], (x.shape[0],))
    v = {"ours": train_step_fn(ours, x, y, True)}
    compile_s: dict[str, float] = {}
    pairs = [("ours, torch.compile", ours)] + ([("timm, torch.compile", theirs)] if theirs is not None else [])
    pairs.append(("ours, torch.compile, operator on every depthwise layer", ours))
    if key == "tour":
        pairs.append((CPP_WRAPPER, ours))
    for name, model in pairs:
        options = {"cpp_wrapper": True} if name == CPP_WRAPPER else None
        step = train_step_fn(torch.compile(copy.deepcopy(model), options=options), x, y, None)
        if name.endswith("every depthwise layer"):
            step = functools.partial(with_operator_everywhere, step)
        t0 = time.perf_counter()
        step()
        step()
        compile_s[name] = time.perf_counter() - t0
        v[name] = step
    if theirs is not None:
        v["timm"] = train_step_fn(theirs, x, y, None)
    else:
        v["ours, ATen depthwise"] = train_step_fn(copy.deepcopy(ours), x, y, False)
    if c["dims"] == 1:
        v.update(contiguous_1d_variants(ours, x, y))
    t = interleaved(v, rounds, inner=1, warmup=2)
    log(f"\n### training step (SGD) eager and under torch.compile: {describe(key)}, {rounds} rounds; compile "
        "(first two steps, fresh inductor cache): " + ", ".join(f"{k} {s:.0f} s" for k, s in compile_s.items()))
    for k, ts in t.items():
        log(f"{k:>22}: median {statistics.median(ts) * 1e3:.1f} ms; samples {fmt_ms(ts)}")
    ratios = {ref: {other: ratio_stats(t[other], t[ref]) for other in t if other != ref}
              for ref in ("ours", "ours, torch.compile", CPP_WRAPPER) if ref in t}
    for ref, rs in ratios.items():
        for other, r in rs.items():
            log(f"{other} / {ref} per round: {fmt_ratio(r)}")
    return dict(times=t, ratios=ratios, compile_first_2_steps_s=compile_s,
                inductor_cache=os.environ["TORCHINDUCTOR_CACHE_DIR"])


OVERHEAD_BATCHES = (2, 8)


def section_overhead(key: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The SGD step at small batches beside the benchmark batch, ours (as the trainer runs it) and timm's same
    network: at batch 2 the arithmetic is a few per cent of batch 64's, so the step time there is about the fixed
    cost of dispatching the step's operations (Python, autograd, per-call kernel set-up), what no kernel change
    removes."""
    c = MODELS[key]
    ours, theirs = trainer_models(key)
    out: dict[str, Any] = {}
    for batch in (*OVERHEAD_BATCHES, c["batch"]):
        x = model_input(key, batch)
        y = torch.randint(0, c["classes"], (batch,))
        # fresh copies and learning rate 0: SGD steps at batch 2 drive the weights up to thousands within a few
        # dozen steps (BN over two values per channel on 1-pixel maps), and steps on those weights meet float32
        # denormals and run several times slower, in both networks (the tenth session's first run)
        mine, timms = copy.deepcopy(ours), copy.deepcopy(theirs)
        t = interleaved({"ours": train_step_fn(mine, x, y, True, lr=0.0),
                         "timm": train_step_fn(timms, x, y, None, lr=0.0)}, rounds, inner=1, warmup=2)
        med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        out[str(batch)] = dict(times=t, median_ms=med, ratio_timm_over_ours=ratio_stats(t["timm"], t["ours"]))
        log(f"batch {batch}: ours {med['ours']:.1f} ms, timm {med['timm']:.1f} ms, timm / ours per round "
            f"{fmt_ratio(out[str(batch)]['ratio_timm_over_ours'])}")
    return out


def bn_act_layers(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Distinct BN + activation configurations (input shape, layout, activation) of `model`'s ConvNormAct layers
    met by a forward on `x`, with counts."""
    from mbconv.layers.conv import ConvNormAct
    from mbconv.layers.memory import NATIVE_ACT_NAMES
    from mbconv.layers.native import bn_act_layout

    seen: dict[tuple, dict[str, Any]] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, act_module: nn.Module) -> None:
        y = inp[0]
        act = NATIVE_ACT_NAMES.get(type(act_module))
        key = (tuple(y.shape), bn_act_layout(y), act)
        if act is None or key[1] is None:
            return
        seen.setdefault(key, dict(shape=key[0], layout=key[1], act=act, last=is_channels_last(y), count=0))
        seen[key]["count"] += 1

    hs = []
    for m in model.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            hs.append(m.bn.register_forward_hook(functools.partial(hook, act_module=m.act)))
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return list(seen.values())


def section_bn_act(key: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Per BN + activation layer of the model: forward + backward of PyTorch's BN and activation modules (as a
    plain ConvNormAct runs them) against the fused native kernels (`NativeBNActFn`, as the trainer runs them),
    same input, weights and output gradient; and the sum over the network (each layer times its count)."""
    from mbconv.layers.conv import create_act
    from mbconv.layers.memory import native_bn_act_apply

    model = build_ours(key)
    layers = bn_act_layers(model, model_input(key))
    dims = MODELS[key]["dims"]
    rows, total = [], {"pytorch": 0.0, "native": 0.0}
    log(f"\n### BN + activation, forward + backward per layer: {describe(key)}, {rounds} rounds")
    log("| layer (N, C, spatial) | act | count | PyTorch ms | native ms | PyTorch / native per round |")
    log("|---|---|---|---|---|---|")
    for cfg in layers:
        torch.manual_seed(0)
        c = cfg["shape"][1]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](c).train()
        act = create_act(None if cfg["act"] == "identity" else {"silu": "swish"}.get(cfg["act"], cfg["act"]))
        x = torch.randn(cfg["shape"])
        if cfg["last"]:
            x = x.contiguous(memory_format=LAST[dims])
        x.requires_grad_(True)
        g = torch.randn_like(x)

        def pytorch(x: torch.Tensor = x, g: torch.Tensor = g, bn: nn.Module = bn, act: nn.Module = act) -> None:
            act(bn(x)).backward(g)

        def native(x: torch.Tensor = x, g: torch.Tensor = g, bn: nn.Module = bn, name: str = cfg["act"]) -> None:
            native_bn_act_apply(bn, name, x).backward(g)

        t = interleaved({"pytorch": pytorch, "native": native}, rounds, inner=inner_for(native))
        r = ratio_stats(t["pytorch"], t["native"])
        med = {k: statistics.median(v) for k, v in t.items()}
        for k in total:
            total[k] += med[k] * cfg["count"]
        label = f"N{cfg['shape'][0]} C{c} {'x'.join(map(str, cfg['shape'][2:])) or '-'}"
        log(f"| {label} | {cfg['act']} | {cfg['count']} | {med['pytorch'] * 1e3:.3f} | {med['native'] * 1e3:.3f} "
            f"| {fmt_ratio(r)} |")
        rows.append(dict(cfg, label=label, median_ms={k: v * 1e3 for k, v in med.items()}, ratio=r, times=t))
    log(f"network total (sum of medians x count): PyTorch {total['pytorch'] * 1e3:.1f} ms, native "
        f"{total['native'] * 1e3:.1f} ms, x{total['pytorch'] / total['native']:.2f}")
    return {"layers": rows, "total_ms": {k: v * 1e3 for k, v in total.items()},
            "total_ratio": total["pytorch"] / total["native"]}


def crop_timing(module: nn.Module, x: torch.Tensor, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per no-grad call of `module(x)` with the inference crop on ('ours') and off ('aten'), interleaved,
    and the per-round ratio aten / ours."""

    def run(fast: bool) -> None:
        with torch.no_grad(), use_fast_backward(fast):
            module(x)

    t = interleaved({"ours": lambda: run(True), "aten": lambda: run(False)}, rounds,
                    inner=inner_for(lambda: run(False)))
    return t, ratio_stats(t["aten"], t["ours"])


def section_infer(key: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Whole-model inference and the layers whose kernel the crop changes, ours vs ATen's full kernel."""
    c = MODELS[key]
    from mbconv import create_model

    torch.manual_seed(0)
    over = dict(width_mult=c["width"]) if c["width"] != 1.0 else {}
    base = create_model(c["name"], num_classes=c["classes"], in_chans=c["in_chans"], **over).eval()
    layouts = [False, True] if c["dims"] in LAST else [False]
    log(f"\n### inference (eval, no autograd): {c['label']}, {torch.get_num_threads()} thread(s), "
        f"{_clock['name']} clock, {rounds} rounds")
    log("| layout | batch | ATen ms | ours ms | ATen/ours per round |")
    log("|---|---|---|---|---|")
    whole: dict[str, Any] = {}
    for last in layouts:
        model = base.to(memory_format=LAST[c["dims"]]) if last else base
        for batch in (c["batch"], 1):
            x = torch.randn(batch, c["in_chans"], *[c["res"]] * c["dims"])
            x = x.contiguous(memory_format=LAST[c["dims"]]) if last else x

            t, r = crop_timing(model, x, rounds)
            name = f"{'channels_last' if last else 'NCHW'}, batch {batch}"
            whole[name] = dict(times=t, ratio=r, median_ms={k: statistics.median(v) * 1e3 for k, v in t.items()})
            log(f"| {'channels_last' if last else 'NCHW'} | {batch} | {statistics.median(t['aten']) * 1e3:.2f} | "
                f"{statistics.median(t['ours']) * 1e3:.2f} | {fmt_ratio(r)} |")
    log("layers the crop changes (forward alone, the benchmark batch):")
    layers = []
    for last in layouts:
        model = base.to(memory_format=LAST[c["dims"]]) if last else base.to(memory_format=torch.contiguous_format)
        x = torch.randn(c["batch"], c["in_chans"], *[c["res"]] * c["dims"])
        for cfg in depthwise_layers(model, x.contiguous(memory_format=LAST[c["dims"]]) if last else x):
            plan = plan_depthwise(cfg["shape"][2:], cfg["kernel"], cfg["stride"], cfg["padding"])
            if not crop_pays_for_inference(plan, cfg["last"]):
                continue
            ch = cfg["shape"][1]  # the module in the model's layout, the input in the one it has there
            m = DEPTHWISE_CONV[c["dims"]](ch, ch, cfg["kernel"], cfg["stride"], cfg["padding"], groups=ch).eval()
            m = m.to(memory_format=LAST[c["dims"]]) if last else m
            xin = torch.randn(cfg["shape"])
            xin = xin.contiguous(memory_format=LAST[c["dims"]]) if cfg["last"] else xin

            t, r = crop_timing(m, xin, rounds)
            log(f"  {'channels_last' if last else 'NCHW'} model: {layer_label(cfg)} live "
                f"{'x'.join(map(str, plan.kernel))}: ATen {statistics.median(t['aten']) * 1e3:.2f} ms, ours "
                f"{statistics.median(t['ours']) * 1e3:.2f} ms, {fmt_ratio(r)}")
            layers.append(dict(cfg, model_channels_last=last, shape=list(cfg["shape"]), live_kernel=plan.kernel,
                               times=t, ratio=r, median_ms={k: statistics.median(v) * 1e3 for k, v in t.items()},
                               label=layer_label(cfg)))
    return dict(whole=whole, layers=layers)


def inner_for(fn: Callable[[], Any], target_s: float = 0.01) -> int:
    """Calls per timed sample so one sample lasts about `target_s` (small layers are otherwise timer noise)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, min(200, int(target_s / max(time.perf_counter() - t0, 1e-6))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds (under 2 minutes on one core)")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, each run in turn (default 1)")
    ap.add_argument("--sections", default="layers,methods,step")
    ap.add_argument("--models", default="tour,b0,mnist1d", help=f"some of {sorted(MODELS)}")
    ap.add_argument("--contiguous", action="store_true", help="NCHW models and inputs instead of channels_last")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per timing (default 15; 10 for steps)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time (default) or process CPU time (for one thread on a shared core)")
    ap.add_argument("--out", default="results/bench/depthwise.json")
    args = ap.parse_args(argv)
    _clock["name"] = args.clock
    _layout["last"] = not args.contiguous
    sections = [s for s in args.sections.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    known = ("layers", "methods", "step", "compiled", "overhead", "infer", "bn_act", "native_dw", "pointwise1d",
             "pointwise2d")
    bad = [m for m in models if m not in MODELS] + [s for s in sections if s not in known]
    if bad:
        ap.error(f"unknown model(s)/section(s) {bad}: models {sorted(MODELS)}, sections layers, methods, step, "
                 "compiled, overhead, infer, bn_act, native_dw, pointwise1d, pointwise2d")
    threads = parse_threads(ap, args.threads)
    # models are seeded with torch.manual_seed(0); no training, so no epochs or init to state
    lines, log, t_start, record, result = bench_start("depthwise benchmark", threads, args.quick, argv, args.clock)
    for th in threads:
        torch.set_num_threads(th)
        for key in models:
            run: dict[str, Any] = {}
            if "layers" in sections:
                run["layers"] = section_layers(key, args.rounds or (3 if args.quick else 15), log)
            if "methods" in sections:
                run["methods"] = section_methods(key, args.rounds or (3 if args.quick else 15), log)
            if "step" in sections:
                quick_rounds = 3 if key == "b0" else 5
                run["step"] = section_step(key, args.rounds or (quick_rounds if args.quick else 10), log)
            if "overhead" in sections and MODELS[key]["timm"]:
                log(f"\n### SGD step at small batches (fixed cost per step): {describe(key)}")
                run["overhead"] = section_overhead(key, args.rounds or (3 if args.quick else 10), log)
            if "compiled" in sections:
                run["compiled"] = section_compiled(key, args.rounds or (3 if args.quick else 10), log)
            if "infer" in sections:
                run["infer"] = section_infer(key, args.rounds or (3 if args.quick else 15), log)
            if "bn_act" in sections:
                run["bn_act"] = section_bn_act(key, args.rounds or (3 if args.quick else 15), log)
            if "native_dw" in sections:
                run["native_dw"] = section_native_dw(key, args.rounds or (3 if args.quick else 15), log)
            if "pointwise2d" in sections and MODELS[key]["dims"] == 2:
                run["pointwise2d"] = section_pointwise2d(key, args.rounds or (3 if args.quick else 11), log)
            result["runs"][f"{key}@{th}"] = run
        if "pointwise1d" in sections:  # not tied to a model: once per thread count
            result["runs"][f"pointwise1d@{th}"] = section_pointwise1d(args.rounds or (3 if args.quick else 9), log)
    write_bench_result(args.out, result, record, lines, log, t_start, threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
