"""The squeeze-and-excitation layers of a training step in native kernels (`mbconv.layers.native_se`) against
`SqueezeExciteFn` (layers/se.py, what they ran on before), per SE layer of the model and summed over the network.

    .venv/bin/python -m benchmarks.se [--threads 2] [--models tour,b0] [--quick] [--out results/bench/se.json]

For every distinct SE input of the model (shape and layout as the network feeds it, squeeze width, activation and
gate), one forward + backward of each Function on the same input, weights (at the scale of a trained SE: unit-
variance products; N(0, 1) weights drive the gate into float32 denormals, which no trained network has) and
output gradient, timed interleaved (benchmarks.depthwise.interleaved), with the pick of `native_se_applies`, and
the network's sum (each layer times its count) with those picks. The measurements behind `NATIVE_SE_MIN_PIXELS`.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from torch import nn

from benchmarks.depthwise import MODELS, build_ours, describe, fmt_ratio, inner_for, interleaved, model_input
from benchmarks.run import bench_start, parse_threads, ratio_stats, write_bench_result
from mbconv.layers.native_se import NativeSqueezeExciteFn, native_se_applies
from mbconv.layers.se import SqueezeExcite, SqueezeExciteFn


def se_layers(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Distinct SE configurations of `model` met by a forward on `x`: input shape and strides, squeeze width,
    (activation, gate) types, with counts."""
    seen: dict[tuple, dict[str, Any]] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        t = inp[0]
        key = (tuple(t.shape), t.stride(), mod.conv_reduce.out_channels, type(mod.act), type(mod.gate))
        seen.setdefault(key, dict(shape=key[0], stride=key[1], reduced=key[2], acts=(key[3], key[4]), count=0))
        seen[key]["count"] += 1

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SqueezeExcite)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return list(seen.values())


def section_se(key: str, rounds: int, log: Any) -> dict[str, Any]:
    model = build_ours(key)
    layers = se_layers(model, model_input(key))
    rows, total = [], {"SqueezeExciteFn": 0.0, "picked": 0.0}
    log(f"\n### SE, forward + backward per layer: {describe(key)}, {rounds} rounds")
    log("| layer (N, C, spatial) -> R | count | SqueezeExciteFn ms | native ms | SqueezeExciteFn / native per round "
        "| rule picks |")
    log("|---|---|---|---|---|---|")
    for cfg in layers:
        g = torch.Generator().manual_seed(0)
        n, c, *spatial = cfg["shape"]
        r, k = cfg["reduced"], (1,) * len(spatial)
        x = torch.empty_strided(cfg["shape"], cfg["stride"]).copy_(torch.randn(cfg["shape"], generator=g))
        x.requires_grad_(True)
        ws = [(torch.randn(r, c, *k, generator=g) / c ** 0.5).requires_grad_(True),
              (torch.randn(r, generator=g) * 0.1).requires_grad_(True),
              (torch.randn(c, r, *k, generator=g) / r ** 0.5).requires_grad_(True),
              (torch.randn(c, generator=g) * 0.1).requires_grad_(True)]
        gy = torch.empty_like(x).copy_(torch.randn(cfg["shape"], generator=g))
        picks = native_se_applies(x, *ws, cfg["acts"])

        def run(fn: type, x: torch.Tensor = x, ws: list = ws, gy: torch.Tensor = gy, acts: tuple = cfg["acts"]
                ) -> None:
            fn.apply(x, *ws, acts).backward(gy)

        variants = {"SqueezeExciteFn": lambda: run(SqueezeExciteFn), "native": lambda: run(NativeSqueezeExciteFn)}
        t = interleaved(variants, rounds, inner=inner_for(variants["native"]))
        ratio = ratio_stats(t["SqueezeExciteFn"], t["native"])
        med = {name: statistics.median(v) for name, v in t.items()}
        total["SqueezeExciteFn"] += med["SqueezeExciteFn"] * cfg["count"]
        total["picked"] += med["native" if picks else "SqueezeExciteFn"] * cfg["count"]
        label = f"N{n} C{c} {'x'.join(map(str, spatial))} -> {r}"
        log(f"| {label} | {cfg['count']} | {med['SqueezeExciteFn'] * 1e3:.3f} | {med['native'] * 1e3:.3f} "
            f"| {fmt_ratio(ratio)} | {'native' if picks else 'SqueezeExciteFn'} |")
        rows.append(dict(label=label, shape=cfg["shape"], reduced=r, count=cfg["count"],
                         acts=[a.__name__ for a in cfg["acts"]], picks_native=picks, times=t, ratio=ratio,
                         median_ms={name: v * 1e3 for name, v in med.items()}))
    log(f"network total (sum of medians x count): SqueezeExciteFn {total['SqueezeExciteFn'] * 1e3:.1f} ms, with the "
        f"rule's picks {total['picked'] * 1e3:.1f} ms, x{total['SqueezeExciteFn'] / total['picked']:.2f}")
    return {"layers": rows, "total_ms": {name: v * 1e3 for name, v in total.items()},
            "total_ratio": total["SqueezeExciteFn"] / total["picked"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 15")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, each run in turn (default 2)")
    ap.add_argument("--models", default="tour,b0", help=f"some of {sorted(MODELS)}")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default="results/bench/se.json")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if any(m not in MODELS for m in models):
        ap.error(f"unknown model(s) {[m for m in models if m not in MODELS]}: expected some of {sorted(MODELS)}")
    threads = parse_threads(ap, args.threads)
    lines, log, t_start, record, result = bench_start("SE benchmark", threads, args.quick, argv)
    for th in threads:
        torch.set_num_threads(th)
        for key in models:
            result["runs"][f"{key}@{th}"] = section_se(key, args.rounds or (3 if args.quick else 15), log)
    write_bench_result(args.out, result, record, lines, log, t_start, threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
