"""Claims (a) and (b) on this CPU: wall-clock cost of a standard conv vs a depthwise-separable conv vs an
MBConv(t) block, next to their exact MAC ratio, and MBConv latency vs the expansion ratio t.

Protocol. One layer (block) at stride 1, Cin = Cout = C, 'same' padding, no bias, no BN or activation (conv work
only, so the MACs are exactly `cost.compare_layer`'s; activations would add memory traffic to every variant):
- standard: k^D conv C -> C;
- separable: k^D depthwise conv on C + 1x1 conv C -> C;
- MBConv(t): 1x1 conv C -> tC, k^D depthwise on tC, 1x1 conv tC -> C (the expansion conv is kept at t = 1 too,
  as in `compare_layer`, so the MACs are exactly linear in t; TF's MBConv1 would drop it).
2-D inputs are R x R in channels_last (the layout `deploy.prepare_inference` uses); 1-D inputs have the same
number of positions (R^2). Batch 1, one thread by default. For each (D, C, k) every variant is timed in the same
interleaved rounds (rotating order; each sample repeats the call until it lasts >= 10 ms, 20 ms in full mode),
and each ratio std / variant is taken per round, then the median (min-max) over rounds: the machine may be shared.

Roofline view: the machine's fp32 matmul peak and copy bandwidth are measured at the start of the same run
(`roofline.measure_machine`), and every variant's MACs, bytes moved and arithmetic intensity come from
`roofline.layer_table` (the op-level counter; its MACs are checked equal to `compare_layer`'s).

Claim (a) expects the wall-clock gain of separable over standard to stay below the MAC ratio k^D C / (k^D + C)
(the depthwise conv moves as many bytes as the pointwise one for k^D / C of its MACs: memory-bound).
Claim (b) expects MBConv latency linear in t (fit a + b t, R^2 near 1).

    PYTHONPATH=src .venv/bin/python experiments/layer_costs.py --quick   # R 28, C 32-256, k 3/5: ~1-2 min
    PYTHONPATH=src .venv/bin/python experiments/layer_costs.py           # R 56, C 32-512, k 3/5/7: ~10-20 min

Results: experiments/results/layer_costs/ (results.json with the mode, fig_ratios.png, fig_t_linear.png,
fig_roofline.png).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mbconv.cost import compare_layer
from mbconv.provenance import RunRecord
from mbconv.report import plt, savefig, write_json
from mbconv.roofline import layer_table, measure_machine

ROOT = Path(__file__).resolve().parents[1]
CONV = {1: nn.Conv1d, 2: nn.Conv2d}


def build(variant: str, c: int, k: int, dims: int) -> nn.Module:
    conv = CONV[dims]
    if variant == "standard":
        return nn.Sequential(conv(c, c, k, padding=k // 2, bias=False))
    if variant == "separable":
        return nn.Sequential(conv(c, c, k, padding=k // 2, groups=c, bias=False), conv(c, c, 1, bias=False))
    t = float(variant.split("t")[1])
    mid = int(round(c * t))
    return nn.Sequential(conv(c, mid, 1, bias=False), conv(mid, mid, k, padding=k // 2, groups=mid, bias=False),
                         conv(mid, c, 1, bias=False))


def time_round(fns: dict[str, Any], reps: dict[str, int], order: list[str]) -> dict[str, float]:
    out = {}
    for name in order:
        fn, n = fns[name], reps[name]
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = (time.perf_counter() - t0) / n
    return out


def run_config(dims: int, c: int, k: int, res: int, ts: list[float], rounds: int, machine: dict,
               min_sample: float) -> dict[str, Any]:
    variants = ["standard", "separable"] + [f"mbconv_t{t:g}" for t in ts]
    shape = (1, c, res, res) if dims == 2 else (1, c, res * res)
    x = torch.randn(*shape)
    mods, fns, info = {}, {}, {}
    for v in variants:
        m = build(v, c, k, dims).eval()
        xi = x
        if dims == 2:
            m = m.to(memory_format=torch.channels_last)
            xi = x.contiguous(memory_format=torch.channels_last)
        mods[v] = m
        rows = layer_table(m, x, machine)
        macs = sum(r.macs for r in rows)
        t = float(v.split("t")[1]) if v.startswith("mbconv") else 6.0
        ref = compare_layer(c, c, k, dims, 1, t)  # per output position; x positions below
        key = {"standard": "standard", "separable": "separable"}.get(v, "mbconv")
        exact = ref[key]["macs"] * (res * res)
        if macs != exact:
            raise AssertionError(f"{v} D{dims} C{c} k{k}: op counter {macs} != compare_layer {exact}")
        nbytes = sum(r.bytes_fp32 for r in rows)
        info[v] = {"macs": macs, "bytes_fp32": nbytes, "intensity_fp32": macs / nbytes,
                   "intensity_int8": macs / (nbytes / 4), "predicted_ms": sum(r.predicted_ms for r in rows),
                   "layers": [{"kind": r.kind, "macs": r.macs, "bytes_fp32": r.bytes_fp32,
                               "intensity_fp32": r.intensity_fp32, "bound": r.bound,
                               "predicted_ms": r.predicted_ms} for r in rows]}

        def fn(m: nn.Module = m, xi: torch.Tensor = xi) -> Any:
            with torch.no_grad():
                return m(xi)
        fns[v] = fn
    reps = {}
    for v, fn in fns.items():  # warm-up, then enough repeats per sample to beat timer and scheduler noise
        fn()
        t0 = time.perf_counter()
        fn()
        reps[v] = max(1, int(min_sample / max(time.perf_counter() - t0, 1e-7)))
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate: no fixed position bias
        for v, s in time_round(fns, reps, order).items():
            samples[v].append(s)
    out = {"dims": dims, "C": c, "k": k, "res": res, "positions": res * res, "variants": {}}
    std = samples["standard"]
    for v in variants:
        ratios = [a / b for a, b in zip(std, samples[v])]
        mac_ratio = info["standard"]["macs"] / info[v]["macs"]
        med = statistics.median(samples[v])
        out["variants"][v] = {**info[v], "ms": 1e3 * med, "ms_min": 1e3 * min(samples[v]),
                              "mac_ratio": mac_ratio, "wall_ratio": statistics.median(ratios),
                              "wall_ratio_min": min(ratios), "wall_ratio_max": max(ratios),
                              "achieved_gflops": 2 * info[v]["macs"] / med / 1e9,
                              "samples_ms": [1e3 * s for s in samples[v]], "reps": reps[v]}
    # claim (b): latency vs t, least squares a + b t
    tt = [t for t in ts]
    ys = [out["variants"][f"mbconv_t{t:g}"]["ms"] for t in ts]
    out["t_fit"] = linear_fit(tt, ys)
    out["t_fit_macs"] = linear_fit(tt, [out["variants"][f"mbconv_t{t:g}"]["macs"] for t in ts])
    return out


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept": a, "slope": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


# -- figures ----------------------------------------------------------------------------------------------------
def fig_ratios(results: list[dict], path: Path) -> Path:
    p = plt()
    fig, ax = p.subplots(figsize=(6.5, 4.2))
    for v, marker in (("separable", "o"), ("mbconv_t6", "s")):
        for dims, color in ((1, "tab:orange"), (2, "tab:blue")):
            sel = [r for r in results if r["dims"] == dims and v in r["variants"]]
            if sel:
                ax.scatter([r["variants"][v]["mac_ratio"] for r in sel], [r["variants"][v]["wall_ratio"] for r in sel],
                           marker=marker, c=color, label=f"{v}, {dims}-D", alpha=0.8)
    allv = [r["variants"][v]["mac_ratio"] for r in results for v in ("separable", "mbconv_t6") if v in r["variants"]]
    lo, hi = min(allv + [0.5]) / 1.5, max(allv) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="wall-clock = MAC ratio")
    ax.axhline(1, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MAC ratio standard / variant (exact)")
    ax.set_ylabel("wall-clock ratio standard / variant (median)")
    ax.set_title("speed-up over a standard conv: measured vs MACs")
    ax.legend(fontsize=7)
    return savefig(fig, path)


def fig_t_linear(results: list[dict], ts: list[float], path: Path) -> Path:
    p = plt()
    fig, axes = p.subplots(1, 2, figsize=(11, 4))
    for ax, dims in zip(axes, (1, 2)):
        for r in [r for r in results if r["dims"] == dims and r["k"] == 3]:
            ys = [r["variants"][f"mbconv_t{t:g}"]["ms"] for t in ts]
            f = r["t_fit"]
            line = ax.plot(ts, ys, "o", label=f"C={r['C']} (R^2 {f['r2']:.3f})")[0]
            ax.plot(ts, [f["intercept"] + f["slope"] * t for t in ts], "-", color=line.get_color(), lw=1)
        ax.set_xlabel("expansion ratio t")
        ax.set_ylabel("median latency (ms)")
        ax.set_yscale("log")
        ax.set_title(f"MBConv(t), k=3, {dims}-D: latency vs t with linear fits")
        ax.legend(fontsize=7)
    return savefig(fig, path)


def fig_layers_roofline(results: list[dict], machine: dict, path: Path) -> Path:
    """Intensity of every conv layer in the runs (one point per (D, C, k, kind)) on this machine's roofline, with
    each variant's achieved rate (whole variant: its layers are not timed separately)."""
    p = plt()
    fig, ax = p.subplots(figsize=(7, 4.3))
    peak, bw = machine["peak_gflops"], machine["bandwidth_gbs"]
    colors = {"standard": "tab:purple", "separable": "tab:red", "mbconv_t1": "tab:olive", "mbconv_t6": "tab:blue"}
    xs = []
    for v, col in colors.items():
        sel = [r["variants"][v] for r in results if v in r["variants"]]
        if sel:
            xs += [s["intensity_fp32"] for s in sel]
            ax.scatter([s["intensity_fp32"] for s in sel], [s["achieved_gflops"] for s in sel], c=col, s=20,
                       label=v, alpha=0.8)
    for kind in ("depthwise", "pointwise"):
        ks = sorted({(r["dims"], r["C"], r["k"], lay["intensity_fp32"]) for r in results
                     for lay in r["variants"]["separable"]["layers"] if lay["kind"] == kind})
        for i, (_, _, _, inten) in enumerate(ks):
            ax.axvline(inten, color="tab:red" if kind == "depthwise" else "tab:blue", lw=0.4, alpha=0.4,
                       label=f"{kind} layer intensity" if i == 0 else None)
        xs += [k[3] for k in ks]
    lo, hi = min(xs) / 2, max(max(xs) * 2, 4 * machine["ridge_macs_per_byte"])
    g = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(g, [min(peak, 2 * x * bw) for x in g], "k-", lw=1.5, label=f"roof {peak:.0f} GFLOP/s, {bw:.1f} GB/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs / byte, fp32)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("single layers / blocks on this CPU's roofline")
    ax.legend(fontsize=7)
    return savefig(fig, path)


def summarize(results: list[dict], ts: list[float]) -> dict[str, Any]:
    sep = [r["variants"]["separable"] for r in results]
    eff = [s["wall_ratio"] / s["mac_ratio"] for s in sep]
    below = sum(s["wall_ratio"] < s["mac_ratio"] for s in sep)
    r2 = [r["t_fit"]["r2"] for r in results]
    mb_eff = [r["variants"]["mbconv_t6"]["wall_ratio"] / r["variants"]["mbconv_t6"]["mac_ratio"] for r in results
              if "mbconv_t6" in r["variants"]]
    return {"configs": len(results), "separable_wall_below_mac": below,
            "separable_wall_over_mac_median": statistics.median(eff), "separable_wall_over_mac_min": min(eff),
            "separable_wall_over_mac_max": max(eff), "mbconv_t6_wall_over_mac_median": statistics.median(mb_eff),
            "t_fit_r2_median": statistics.median(r2), "t_fit_r2_min": min(r2),
            "t_fit_intercept_share_median": statistics.median(
                r["t_fit"]["intercept"] / (r["t_fit"]["intercept"] + r["t_fit"]["slope"] * max(ts))
                for r in results)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        res, cs, ks, ts, rounds, min_sample = 28, [32, 64, 128, 256], [3, 5], [1, 2, 3, 4, 6], 21, 10e-3
    else:
        res, cs, ks, ts, rounds, min_sample = 56, [32, 64, 128, 256, 512], [3, 5, 7], [1, 2, 3, 4, 6], 21, 20e-3
    out = Path(args.out) if args.out else ROOT / "experiments/results/layer_costs"  # mode is in results.json
    t_start = time.time()
    record = RunRecord()  # timings only: no seeds, epochs or init
    machine = measure_machine(args.threads)
    print(f"machine ({args.threads} thread(s)): matmul peak {machine['peak_gflops']:.1f} GFLOP/s, copy "
          f"{machine['bandwidth_gbs']:.1f} GB/s, ridge {machine['ridge_macs_per_byte']:.2f} MACs/byte", flush=True)
    results = []
    print(f"{'D':>1s} {'C':>4s} {'k':>1s} {'variant':11s} {'ms':>8s} {'MAC ratio':>9s} {'wall ratio':>18s} "
          f"{'MAC/B':>6s} {'GFLOP/s':>7s}")
    for dims in (1, 2):
        for k in ks:
            for c in cs:
                r = run_config(dims, c, k, res, ts, rounds, machine, min_sample)
                results.append(r)
                for v, s in r["variants"].items():
                    print(f"{dims:>1d} {c:>4d} {k:>1d} {v:11s} {s['ms']:8.3f} {s['mac_ratio']:9.2f} "
                          f"{s['wall_ratio']:6.2f} ({s['wall_ratio_min']:.2f}-{s['wall_ratio_max']:.2f}) "
                          f"{s['intensity_fp32']:6.2f} {s['achieved_gflops']:7.1f}")
                f = r["t_fit"]
                print(f"  t-fit: {f['intercept']:.3f} + {f['slope']:.3f} t ms, R^2 {f['r2']:.4f}", flush=True)
    machine_end = measure_machine(args.threads)
    summary = summarize(results, ts)
    print("summary:", {k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()})
    write_json(out / "results.json", {"mode": "quick" if args.quick else "full", "threads": args.threads,
                                      "res": res, "C": cs, "k": ks, "t": ts, "rounds": rounds,
                                      "machine_start": machine, "machine_end": machine_end, "summary": summary,
                                      "seconds": time.time() - t_start, "results": results,
                                      "command": " ".join(sys.argv), "provenance": record.as_dict()})
    fig_ratios(results, out / "fig_ratios.png")
    fig_t_linear(results, ts, out / "fig_t_linear.png")
    fig_layers_roofline(results, machine, out / "fig_roofline.png")
    print(f"-> {out} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
