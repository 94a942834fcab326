"""1-D maps channels-last (`mbconv.layers.channels_last_1d`) against contiguous maps: per layer and per step.

    .venv/bin/python -m benchmarks.layout1d [--quick] [--threads 2] [--sections dw,pw,step]
        [--out results/bench/layout1d.json]

Sections:
- dw: depthwise 1-D layers (lengths 40-1000, kernels 3 and 5, strides 1 and 2), forward + backward: the native
  kernels on a channels-last map (what the trainer's step runs now) against each path on a contiguous map (the
  native kernels with their transposes, `DepthwiseConvFunction`, ATen) and the best of those; the measurements
  behind `native_dw_pays` for channels-last 1-D maps;
- pw: 1x1 convs on 1-D maps, forward + backward: one `F.linear` product on a channels-last map against the
  batched product W @ x (`pointwise_matmul`) and oneDNN's conv1d on a contiguous one;
- step: SGD training steps of 1-D networks as the trainer runs them (1x1 products, lean layers): the MNIST-1D net
  at length 40 (batch 64) and 400 (batch 32), `efficientnet1d_b0` at length 40 (batch 64) and, with 12 input
  channels, at 1000 (batch 8); each with channels-last maps and contiguous ones (`use_channels_last_1d(False)`),
  ours and on ATen's depthwise (`use_fast_backward(False)`), copies with the same weights.

Timings are interleaved (`benchmarks.depthwise.interleaved`: each round runs every variant once, in a rotated
order); ratios are per round (theirs / ours, > 1: channels-last faster), median (min-max).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.depthwise import fmt_ratio, inner_for, interleaved, train_step_fn, with_contiguous_1d
from benchmarks.run import bench_start, parse_threads, ratio_stats, write_bench_result
from mbconv.layers.channels_last_1d import to_channels_last_1d
from mbconv.layers.depthwise import DepthwiseConvFunction
from mbconv.layers.memory import lean_layers
from mbconv.layers.native_depthwise import NativeDepthwiseFn
from mbconv.layers.pointwise import fast_pointwise, pointwise_matmul

# (N, C, L, kernel, stride)
DW_LAYERS = [(64, 128, 40, 5, 1), (64, 192, 20, 5, 2), (32, 128, 400, 5, 1), (32, 128, 400, 5, 2),
             (32, 192, 100, 5, 1), (32, 128, 200, 3, 1), (8, 96, 1000, 3, 1), (8, 96, 1000, 5, 2)]
# (N, Cin, Cout, L)
PW_LAYERS = [(64, 32, 128, 40), (64, 128, 32, 40), (64, 192, 64, 10), (32, 32, 128, 400), (32, 128, 32, 400),
             (8, 96, 576, 1000), (8, 576, 96, 1000)]
# (label, model name, input channels, length, batch)
STEP_MODELS = [("mbconv1d_se4 L40 b64", "mbconv1d_se4", 1, 40, 64),
               ("mbconv1d_se4 L400 b32", "mbconv1d_se4", 1, 400, 32),
               ("efficientnet1d_b0 L40 b64", "efficientnet1d_b0", 1, 40, 64),
               ("efficientnet1d_b0 12ch L1000 b8", "efficientnet1d_b0", 12, 1000, 8)]


def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of `fn` on a fresh leaf copy of `x` (its layout kept) with output gradient `g`."""
    def run() -> None:
        fn(x.clone().requires_grad_()).backward(g)
    return run


def timed_rows(variants: dict[str, Callable[[], None]], ref: str, rounds: int) -> dict[str, Any]:
    t = interleaved(variants, rounds, inner=inner_for(variants[ref]))
    med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
    return dict(times=t, median_us=med, ratios={k: ratio_stats(t[k], t[ref]) for k in t if k != ref})


def dw_variants(n: int, c: int, length: int, k: int, s: int) -> dict[str, Callable[[], None]]:
    """Forward + backward of one depthwise 1-D layer (zero padding k // 2) on each path and layout."""
    torch.manual_seed(0)
    x, w, p = torch.randn(n, c, length), torch.randn(c, 1, k, requires_grad=True), k // 2
    g = torch.randn(n, c, (length + 2 * p - k) // s + 1)

    def native(a: torch.Tensor) -> torch.Tensor:
        return NativeDepthwiseFn.apply(a, w, None, (s,), (p,))

    def function(a: torch.Tensor) -> torch.Tensor:
        return DepthwiseConvFunction.apply(a, w, None, (s,), (p,))

    def aten(a: torch.Tensor) -> torch.Tensor:
        return F.conv1d(a, w, None, s, p, 1, c)

    return {"native, channels-last": fwd_bwd(native, to_channels_last_1d(x), to_channels_last_1d(g)),
            "native, contiguous": fwd_bwd(native, x, g), "Function, contiguous": fwd_bwd(function, x, g),
            "ATen, contiguous": fwd_bwd(aten, x, g)}


def section_dw(rounds: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    log("\n### depthwise 1-D layers, forward + backward (us): native on channels-last vs each contiguous path")
    log("| layer | native, channels-last | native, contiguous | Function, contiguous | ATen, contiguous "
        "| best contiguous / channels-last per round |")
    log("|---|---|---|---|---|---|")
    rows = []
    for n, c, length, k, s in DW_LAYERS:
        r = timed_rows(dw_variants(n, c, length, k, s), "native, channels-last", rounds)
        contiguous = [name for name in r["median_us"] if name.endswith("contiguous")]
        best = min(contiguous, key=lambda name: r["median_us"][name])
        r["best_contiguous"] = best
        label = f"N{n} C{c} L{length} k{k} s{s}"
        m = r["median_us"]
        log(f"| {label} | {m['native, channels-last']:.0f} | {m['native, contiguous']:.0f} "
            f"| {m['Function, contiguous']:.0f} | {m['ATen, contiguous']:.0f} "
            f"| {best}: {fmt_ratio(r['ratios'][best])} |")
        rows.append(dict(layer=[n, c, length, k, s], label=label, **r))
    return rows


def pw_variants(n: int, cin: int, cout: int, length: int) -> dict[str, Callable[[], None]]:
    """Forward + backward of one 1x1 conv on a 1-D map, each product and layout."""
    torch.manual_seed(0)
    x, w = torch.randn(n, cin, length), torch.randn(cout, cin, 1, requires_grad=True)
    g = torch.randn(n, cout, length)

    def linear(a: torch.Tensor) -> torch.Tensor:
        return F.linear(a.transpose(1, 2), w.flatten(1)).transpose(1, 2)

    return {"F.linear, channels-last": fwd_bwd(linear, to_channels_last_1d(x), to_channels_last_1d(g)),
            "W @ x, contiguous": fwd_bwd(lambda a: pointwise_matmul(a, w, None), x, g),
            "conv1d, contiguous": fwd_bwd(lambda a: F.conv1d(a, w), x, g)}


def section_pw(rounds: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    log("\n### 1x1 convs on 1-D maps, forward + backward (us): one product on channels-last vs contiguous paths")
    log("| layer | F.linear, channels-last | W @ x, contiguous | conv1d, contiguous | W @ x / linear "
        "| conv1d / linear |")
    log("|---|---|---|---|---|---|")
    rows = []
    for n, cin, cout, length in PW_LAYERS:
        r = timed_rows(pw_variants(n, cin, cout, length), "F.linear, channels-last", rounds)
        m, q = r["median_us"], r["ratios"]
        label = f"N{n} {cin}->{cout} L{length}"
        log(f"| {label} | {m['F.linear, channels-last']:.0f} | {m['W @ x, contiguous']:.0f} | "
            f"{m['conv1d, contiguous']:.0f} | {fmt_ratio(q['W @ x, contiguous'])} "
            f"| {fmt_ratio(q['conv1d, contiguous'])} |")
        rows.append(dict(layer=[n, cin, cout, length], label=label, **r))
    return rows


def section_step(rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    from mbconv import create_model

    out = {}
    for label, name, chans, length, batch in STEP_MODELS:
        torch.manual_seed(0)
        net = create_model(name, num_classes=10, in_chans=chans).train()
        fast_pointwise(net)
        lean_layers(net)  # as the Trainer prepares it
        x, y = torch.randn(batch, chans, length), torch.randint(0, 10, (batch,))
        v: dict[str, Callable[[], None]] = {
            "ours": train_step_fn(net, x, y, True),
            "ours, contiguous 1-D maps": functools.partial(with_contiguous_1d,
                                                           train_step_fn(copy.deepcopy(net), x, y, True)),
            "ours, ATen depthwise": train_step_fn(copy.deepcopy(net), x, y, False),
            "ours, ATen depthwise, contiguous 1-D maps": functools.partial(
                with_contiguous_1d, train_step_fn(copy.deepcopy(net), x, y, False))}
        t = interleaved(v, rounds, inner=1, warmup=2)
        med = {k: statistics.median(s) * 1e3 for k, s in t.items()}
        ratios = {k: ratio_stats(t[k], t["ours"]) for k in t if k != "ours"}
        log(f"\n{label}: " + ", ".join(f"{k} {m:.1f} ms" for k, m in med.items()))
        for k, r in ratios.items():
            log(f"  {k} / ours per round: {fmt_ratio(r)}")
        out[label] = dict(times=t, median_ms=med, ratios=ratios)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds (about a minute)")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, each run in turn (default 2)")
    ap.add_argument("--sections", default="dw,pw,step")
    ap.add_argument("--out", default="results/bench/layout1d.json")
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in ("dw", "pw", "step")]
    if bad:
        ap.error(f"unknown section(s) {bad}: expected some of dw, pw, step")
    threads = parse_threads(ap, args.threads)
    lines, log, t_start, record, result = bench_start("1-D layout benchmark", threads, args.quick, argv)
    for th in threads:
        torch.set_num_threads(th)
        log(f"\n## {th} thread(s), wall clock")
        run: dict[str, Any] = {}
        if "dw" in sections:
            run["dw"] = section_dw(3 if args.quick else 11, log)
        if "pw" in sections:
            run["pw"] = section_pw(3 if args.quick else 11, log)
        if "step" in sections:
            run["step"] = section_step(3 if args.quick else 10, log)
        result["runs"][str(th)] = run
    write_bench_result(args.out, result, record, lines, log, t_start, threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
