"""Tour chapter: quantize the tour model (PTQ at 8 and 4 bits), measure SQNR per quantizer and per block, compare
with the analytic model and the Hutchinson-gain prediction, and run it as real int8 on ONNX Runtime."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..report import write_json
from .context import TourContext, torch_threads


def _tour_run(ctx: TourContext) -> str:
    if "tour_run" in ctx.state:
        return ctx.state["tour_run"]
    from .train import chapter_train, tour_run_config

    out = tour_run_config(ctx).out
    if not (Path(out) / "best" / "meta.json").exists():
        ctx.log("quant: no trained tour model yet, running the train chapter first")
        chapter_train(ctx)
    ctx.state["tour_run"] = out
    return out


def se_placement_summary(results: Path) -> dict[str, Any] | None:
    """The SE-placement experiment's summary under `results` (a folder like experiments/results), if there."""
    p = results / "se_placement_quant" / "summary.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def chapter_quant(ctx: TourContext) -> None:
    # Small batches of a small net: one intra-op thread is faster and does not fight other jobs for cores
    # (on a busy 2-core machine two threads made this chapter ~6x slower).
    with torch_threads(1):
        _chapter_quant(ctx)


def _chapter_quant(ctx: TourContext) -> None:
    from ..data import load_dataset
    from ..export import int8_benchmark
    from ..quant.figures import fig_block_sqnr, fig_site_sqnr
    from ..quant.insert import QuantConfig
    from ..quant.noise import measure_sqnr
    from ..quant.noise_model import compare
    from ..quant.ptq import ptq
    from ..train import evaluate
    from ..workflow import load_run

    t0 = time.time()
    run_dir = _tour_run(ctx)
    model, run, ck = load_run(run_dir)
    d = run["data"]
    train = load_dataset(d["name"], "train", resolution=d["resolution"])
    test = load_dataset(d["name"], "test", resolution=d["resolution"])
    quick = ctx.quick
    test_eval = torch.utils.data.Subset(test, range(256)) if quick else test
    calib_n = 128 if quick else 512
    ch = ctx.report.chapter("Quantization: PTQ at 8 and 4 bits, where the noise comes from, and real int8")
    ch.text("The trained tour model is BN-folded and fake-quantized (mbconv.quant): uniform affine quantizers on "
            "every conv/linear weight (symmetric, per output channel unless noted) and on every tensor an int8 "
            "runtime stores (per-tensor asymmetric activations: conv outputs, SE output, residual adds, pooled "
            "features, logits), calibrated on training images. Mixed precision keeps the input, first and last "
            "layers at 8 bits where noted." + (" QUICK MODE: 20-step model, small subsets; numbers are "
                                               "illustrative only." if quick else ""))
    fp = evaluate(model, test_eval)["acc"]
    configs = [("W8A8 per-channel weights", QuantConfig(8, 8)),
               ("W8A8 per-tensor weights", QuantConfig(8, 8, w_per_channel=False)),
               ("W4A8 (first/last 8)", QuantConfig(4, 8, first_last_bits=8)),
               ("W8A4 MSE (first/last 8)", QuantConfig(8, 4, a_calib="mse", first_last_bits=8)),
               ("W4A4 MSE (first/last 8)", QuantConfig(4, 4, w_calib="mse", a_calib="mse", first_last_bits=8))]
    if quick:
        configs = [configs[0], configs[4]]
    rows, results, qmodels = [], [], {}
    n_sqnr = 256 if quick else 512
    for label, cfg in configs:
        q = ptq(model, cfg, train, num_samples=calib_n)
        rep = measure_sqnr(q, test, num_samples=n_sqnr)
        acc = evaluate(q, test_eval)["acc"]
        rows.append([label, 100 * fp, 100 * acc, 100 * (acc - fp), rep["output_db"], 100 * rep["top1_agreement"]])
        results.append({"config": label, "settings": cfg.to_dict(), "fp32_acc": fp, "acc": acc,
                        "output_sqnr_db": rep["output_db"], "top1_agreement": rep["top1_agreement"],
                        "blocks": rep["blocks"]})
        qmodels[label] = (q, rep)
    ch.table(f"Post-training quantization of the tour model ({len(test_eval)} test images; calibration on "
             f"{calib_n} training images)", ["config", "fp32 acc %", "quantized acc %", "change (pt)",
                                             "logit SQNR dB", f"top-1 agreement % (first {n_sqnr})"], rows)
    lo_label = configs[-1][0]
    for label in (configs[0][0], lo_label):
        q, rep = qmodels[label]
        safe = label.split()[0].lower()
        ch.figure(f"{label}: local SQNR of every quantizer (its own noise, on the input it sees), coloured by "
                  f"kind", fig_site_sqnr(rep["sites"], ctx.out / f"fig_quant_sites_{safe}.png", label))

    # predicted vs measured per block: analytic model always; Hutchinson gains in the full tour only
    cfg_pm = QuantConfig(8, 6)
    q = ptq(model, cfg_pm, train, num_samples=calib_n)
    cmp = compare(q, test, num_samples=64 if quick else 256, gains=not quick, gain_samples=16)
    fig = fig_block_sqnr(cmp["rows"], ctx.out / "fig_quant_pred_vs_measured.png",
                         "W8A6: SQNR per block, predicted vs measured")
    ch.figure("SQNR vs depth at W8A6: measured (quantized vs float network), the analytic second-moment model "
              "(white-noise propagation through conv, folded BN, activation, SE gate and residual)" +
              ("" if quick else " and the linearised prediction from Hutchinson noise gains (JVPs of the float "
                                "net)") + "; right: prediction error per block", fig)
    errs = [abs(r["model_err_db"]) for r in cmp["rows"] if r["model_err_db"] is not None]
    g_errs = [abs(r["gains_err_db"]) for r in cmp["rows"] if r.get("gains_err_db") is not None]
    ch.text(f"Analytic model: median |error| {sorted(errs)[len(errs) // 2]:.2f} dB, max {max(errs):.2f} dB over "
            f"{len(errs)} blocks" + (f"; Hutchinson gains: median {sorted(g_errs)[len(g_errs) // 2]:.2f} dB, max "
                                     f"{max(g_errs):.2f} dB" if g_errs else "") + ". The white-noise model is "
            "accurate where noise enters and drifts downstream (noise stops being white); the gains use the real "
            "Jacobians and stay close until the noise is no longer small.")

    # real int8
    int8 = int8_benchmark(model, train, ctx.out / "tour_int8.onnx", test_data=test_eval,
                          calib_samples=128 if quick else 256, batch_sizes=(1,) if quick else (1, 16),
                          repeats=5 if quick else 50)
    lat_rows = [[bs, v["ort_fp32"]["median_ms"], v["ort_int8"]["median_ms"], v["speedup"]]
                for bs, v in int8["latency"].items()]
    ch.table("ONNX Runtime (CPU, 1 thread): fp32 vs static int8 (QDQ, per-channel s8 weights, u8 activations, "
             "calibrated on training images), timed in the same run, interleaved; median latency",
             ["batch", "ORT fp32 ms", "ORT int8 ms", "speed-up"], lat_rows)
    a = int8.get("accuracy") or {}
    ch.text(f"Accuracy on {int8.get('test_samples')} test images: torch fp32 {100 * a.get('torch_fp32', 0):.2f} %, "
            f"ORT fp32 {100 * a.get('ort_fp32', 0):.2f} %, ORT int8 {100 * a.get('ort_int8', 0):.2f} %; int8 vs "
            f"fp32 top-1 agreement {100 * int8.get('top1_agreement_int8_vs_fp32', 0):.2f} %. The tour model is "
            f"tiny (32 px), so fixed per-op overheads dominate and int8 gains little; see docs/bench/int8.md for "
            f"EfficientNet-B0 at 224 px.")
    se = None if ctx.results is None else se_placement_summary(ctx.results)
    if ctx.results is None:
        ch.text("SE placement under quantization: skipped (no results folder given; `mbconv tour --results "
                "experiments/results` shows the committed experiment).")
    elif se:
        ch.text("SE placement under quantization (experiments/se_placement_quant.py, " + se.get("mode", "?") +
                " mode): " + se.get("headline", ""))
        if se.get("table"):
            ch.table(se.get("table_caption", "SE placement"), se["table"]["header"], se["table"]["rows"])
    else:
        ch.text("SE placement under quantization: run `python experiments/se_placement_quant.py --quick` "
                "(results in experiments/results/se_placement_quant/).")
    write_json(ctx.out / "quant_result.json", {"checkpoint": str(ck), "quick": quick, "ptq": results,
                                               "pred_vs_measured": cmp["rows"], "int8": int8,
                                               "seconds": time.time() - t0})
    ctx.log(f"quant chapter done in {time.time() - t0:.0f} s")

