"""CLI: `mbconv quantize` (PTQ / QAT, accuracy and per-block SQNR), `mbconv quant-noise` (predicted vs measured
SQNR per block) and `mbconv int8` (ONNX Runtime int8 export and timing vs ORT fp32)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_args import (
    add_model_arguments,
    int_list,
    model_from_args,
    model_overrides,
    nonnegative_int,
    positive_float,
    positive_int,
    text,
)
from ..model_source import ModelSource


def _bits(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if not 2 <= v <= 8 and v != 16:
        raise argparse.ArgumentTypeError(f"bits must be in 2..8 (or 16): {s!r}")
    return v


def _override(s: str) -> tuple[str, int | None]:
    pat, sep, bits = s.rpartition("=")
    if not sep or not pat:
        raise argparse.ArgumentTypeError(f"expected PATTERN=BITS (BITS 0 = float), got {s!r}")
    try:
        b = int(bits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits of override {s!r} is not an integer") from None
    if b != 0 and not 2 <= b <= 16:
        raise argparse.ArgumentTypeError(f"bits of override {s!r} must be 0 (float) or in 2..16")
    return pat, b or None


def _config(args: argparse.Namespace) -> Any:
    from ..quant.insert import QuantConfig

    return QuantConfig(wbits=args.wbits, abits=args.abits, w_per_channel=not args.per_tensor_weights,
                       a_per_channel=args.per_channel, w_calib=args.w_calib or args.calib, a_calib=args.calib,
                       placement=args.placement, first_last_bits=args.first_last_bits,
                       overrides=dict(args.override or []), learn_step=args.lsq)


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, dict]:
    """(model, train set, test set, info) of the --checkpoint run, on its own data or --data."""
    from ..model_source import model_from_source, run_dataset

    src = model_from_source(checkpoint=args.checkpoint, overrides=model_overrides(args))
    train = run_dataset(src.run or {}, args.data, "train")
    test = run_dataset(src.run or {}, args.data, "test")
    d = (src.run or {}).get("data") or {}
    return src.model, train, test, {"checkpoint": src.description, "data": args.data or d.get("name"),
                                    "resolution": d.get("resolution")}


def _fmt_db(v: float | None) -> str:
    return "   -  " if v is None else f"{v:6.2f}"


def cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from ..quant.figures import fig_block_sqnr, fig_site_sqnr
    from ..quant.noise import measure_sqnr
    from ..quant.ptq import ptq
    from ..quant.qat import qat
    from ..train import evaluate

    torch.set_num_threads(args.threads)
    cfg = _config(args)
    model, train, test, info = _load(args)
    fp = evaluate(model, test)["acc"]
    q = ptq(model, cfg, train, num_samples=args.calib_samples)
    acc = evaluate(q, test)["acc"]
    result: dict[str, Any] = {**info, "config": cfg.to_dict(), "fp32_acc": fp, "ptq_acc": acc}
    if args.qat_epochs:
        r = qat(q, train, epochs=args.qat_epochs, lr=args.qat_lr, test_ds=test,
                log=None if args.json else print)
        result["qat_acc"] = r["test_acc"]
        acc = r["test_acc"]
    rep = measure_sqnr(q, test, num_samples=args.sqnr_samples)
    result.update(sqnr_blocks=rep["blocks"], sqnr_sites=rep["sites"], output_sqnr_db=rep["output_db"],
                  top1_agreement=rep["top1_agreement"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ..report import write_json

    write_json(out / "quantize.json", result)
    figs = [fig_site_sqnr(rep["sites"], out / "fig_site_sqnr.png", f"W{cfg.wbits}A{cfg.abits} local SQNR"),
            fig_block_sqnr([{"block": b["block"], "measured_db": b["sqnr_db"]} for b in rep["blocks"]],
                           out / "fig_block_sqnr.png", f"W{cfg.wbits}A{cfg.abits}: SQNR per block output")]
    if args.export:
        from ..export import int8_benchmark

        result["int8"] = int8_benchmark(model, train, args.export, test_data=test, batch_sizes=(1,))
        write_json(out / "quantize.json", result)
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    print(f"{info['checkpoint']} on {info['data']}: W{cfg.wbits}A{cfg.abits} "
          f"({'per-channel' if cfg.w_per_channel else 'per-tensor'} weights, "
          f"{'per-channel (maps)' if cfg.a_per_channel else 'per-tensor'} activations, calib {cfg.a_calib}, "
          f"placement {cfg.placement})")
    print(f"  accuracy fp32 {100 * fp:.2f} %   PTQ {100 * result['ptq_acc']:.2f} %"
          + (f"   QAT ({args.qat_epochs} ep) {100 * result['qat_acc']:.2f} %" if args.qat_epochs else "")
          + f"   top-1 agreement {100 * (rep['top1_agreement'] or 0):.1f} %   output SQNR "
            f"{rep['output_db']:.2f} dB")
    print(f"\n{'block':16s} {'SQNR dB':>8s}   worst quantizer inside (local SQNR dB)")
    by_block: dict[str, list[tuple[str, dict]]] = {}
    for s, v in rep["sites"].items():
        by_block.setdefault(v["block"] or "-", []).append((s, v))
    for b in rep["blocks"]:
        worst = min(by_block.get(b["block"], []), key=lambda kv: kv[1]["local_db"], default=None)
        w = f"{worst[0]} ({worst[1]['local_db']:.1f})" if worst else ""
        print(f"{b['block']:16s} {b['sqnr_db']:8.2f}   {w}")
    if args.export:
        r = result["int8"]
        lat = r["latency"]["1"]
        print(f"\nint8 ONNX: {r['int8_onnx']}  ORT int8 acc {100 * r['accuracy']['ort_int8']:.2f} %  speed-up "
              f"x{lat['speedup']:.2f} at batch 1")
    print(f"\nwrote {out / 'quantize.json'} and {', '.join(str(f) for f in figs)}")
    return 0


def cmd_quant_noise(args: argparse.Namespace) -> int:
    import torch

    from ..quant.figures import fig_block_sqnr
    from ..quant.noise_model import compare
    from ..quant.ptq import ptq

    torch.set_num_threads(args.threads)
    cfg = _config(args)
    model, train, test, info = _load(args)
    q = ptq(model, cfg, train, num_samples=args.calib_samples)
    r = compare(q, test, num_samples=args.sqnr_samples, gains=not args.no_gains, gain_samples=args.gain_samples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ..report import write_json

    gains = r.get("gains") or {}
    write_json(out / "quant_noise.json", {**info, "config": cfg.to_dict(), "rows": r["rows"],
                                          "output_measured_db": r["measured"]["output_db"],
                                          "noise_gain_to_output": {s: g.get("output") for s, g in gains.items()},
                                          "gains": gains})
    fig = fig_block_sqnr(r["rows"], out / "fig_pred_vs_measured.png",
                         f"W{cfg.wbits}A{cfg.abits}: predicted vs measured SQNR per block")
    if args.json:
        print(json.dumps(r["rows"]))
        return 0
    g = not args.no_gains
    print(f"{'block':16s} {'measured':>9s} {'model':>7s} {'err':>6s}" + (f" {'gains':>7s} {'err':>6s}" if g else ""))
    for row in r["rows"]:
        print(f"{row['block']:16s} {row['measured_db']:9.2f} {_fmt_db(row['model_db']):>7s} "
              f"{_fmt_db(row['model_err_db']):>6s}"
              + (f" {_fmt_db(row['gains_db']):>7s} {_fmt_db(row['gains_err_db']):>6s}" if g else ""))
    if gains:
        sites = r["measured"]["sites"]
        contrib = sorted(((g.get("output", 0.0) * sites[s]["noise"], s) for s, g in gains.items()), reverse=True)
        total = sum(c for c, _ in contrib) or 1.0
        print("\nlargest contributors to the output noise (gain to logits x local noise power):")
        for c, s in contrib[:8]:
            print(f"  {s:44s} gain {gains[s]['output']:10.4g}  share {100 * c / total:5.1f} %")
    print(f"(dB; model = analytic second-moment propagation, gains = Hutchinson JVP noise gains; err = predicted - "
          f"measured)\nwrote {out / 'quant_noise.json'} and {fig}")
    return 0


def cmd_int8(args: argparse.Namespace) -> int:
    import torch

    from ..export import int8_benchmark

    torch.set_num_threads(args.threads)
    sizes = args.batch_sizes
    if args.checkpoint:
        model, train, test, info = _load(args)
        r = int8_benchmark(model, train, args.out, test_data=test, method=args.calib,
                           calib_samples=args.calib_samples, batch_sizes=sizes, repeats=args.repeats,
                           threads=args.threads, rewrite_pool=not args.no_pool_rewrite)
    else:
        model, calib, info = random_model(model_from_args(args, seed=0))
        r = int8_benchmark(model, calib, args.out, method=args.calib, calib_samples=args.calib_samples,
                           batch_sizes=sizes, repeats=args.repeats, threads=args.threads,
                           rewrite_pool=not args.no_pool_rewrite)
    r.update(info)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['fp32_onnx']} -> {r['int8_onnx']} (QDQ, per-channel s8 weights, u8 activations, calibration "
          f"{r['calibration']} on {r['calib_samples']} samples, {r['threads']} thread(s), pooling "
          f"{'as GlobalAveragePool' if r['pool_rewrite'] else 'as exported (ReduceMean)'})")
    print(f"{'batch':>5s} {'ORT fp32 ms':>12s} {'ORT int8 ms':>12s} {'speed-up':>9s}  (median; min-based)")
    for bs, v in r["latency"].items():
        print(f"{bs:>5s} {v['ort_fp32']['median_ms']:12.2f} {v['ort_int8']['median_ms']:12.2f} "
              f"{v['speedup']:8.2f}x  ({v['speedup_min']:.2f}x)")
    if "accuracy" in r and r["accuracy"]:
        a = r["accuracy"]
        print(f"accuracy on {r['test_samples']} test samples: torch fp32 {100 * a['torch_fp32']:.2f} %, ORT fp32 "
              f"{100 * a['ort_fp32']:.2f} %, ORT int8 {100 * a['ort_int8']:.2f} %; top-1 agreement int8 vs fp32 "
              f"{100 * r['top1_agreement_int8_vs_fp32']:.2f} %")
    print(f"model size: fp32 {r['size_bytes']['fp32'] / 2**20:.2f} MiB, int8 {r['size_bytes']['int8'] / 2**20:.2f} MiB")
    return 0


def random_model(src: ModelSource) -> tuple[Any, Any, dict]:
    """A freshly built model (`src`, e.g. a zoo NAME) with BatchNorm statistics re-estimated on random inputs, so
    activation ranges look like a trained net's (for speed benchmarks when no checkpoint is at hand); returns
    (model, calibration inputs, info)."""
    import torch

    m, res = src.model, src.resolution
    shape = (m.spec.in_chans, *([res] * m.spec.dims))
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average over the batches below
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(8, *shape))
    m.eval()
    calib = torch.randn(32, *shape)
    return m, calib, {"model": src.description, "resolution": res,
                      "weights": "random (BN statistics on random inputs)"}


# -- registration ------------------------------------------------------------------------------------------
def _quant_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--checkpoint", type=text, required=True, help="run directory or checkpoint directory")
    sp.add_argument("--data", type=text, help="dataset (default: the run's own)")
    sp.add_argument("--wbits", type=_bits, default=8, help="weight bits (2-8)")
    sp.add_argument("--abits", type=_bits, default=8, help="activation bits (2-8)")
    sp.add_argument("--per-channel", action="store_true",
                    help="per-channel activation ranges too (on feature maps; pooled sites stay per-tensor)")
    sp.add_argument("--per-tensor-weights", action="store_true", help="one range per weight tensor")
    sp.add_argument("--calib", choices=("minmax", "percentile", "mse"), default="minmax",
                    help="activation range calibration")
    sp.add_argument("--w-calib", choices=("minmax", "percentile", "mse"), help="weight calibration (default: --calib)")
    sp.add_argument("--placement", choices=("runtime", "full", "weights", "acts"), default="runtime")
    sp.add_argument("--first-last-bits", type=_bits, help="bits of the input, first and last layers")
    sp.add_argument("--override", type=_override, action="append", metavar="PATTERN=BITS",
                    help="per-site bits by glob on site names, e.g. '*depthwise.conv:weight=8' (0 = float)")
    sp.add_argument("--lsq", action="store_true", help="learned step sizes (LSQ) for QAT")
    sp.add_argument("--calib-samples", type=positive_int, default=512)
    sp.add_argument("--sqnr-samples", type=positive_int, default=256)
    sp.add_argument("--threads", type=positive_int, default=1)
    sp.add_argument("--json", action="store_true")


def register(add: Any) -> None:
    sp = add("quantize", cmd_quantize, "post-training quantization (optionally QAT) of a trained run: accuracy "
                                       "fp vs quantized, per-block SQNR, figures")
    _quant_args(sp)
    sp.add_argument("--qat-epochs", type=nonnegative_int, default=0,
                    help="quantization-aware fine-tuning epochs after PTQ")
    sp.add_argument("--qat-lr", type=positive_float, default=2e-4)
    sp.add_argument("--out", type=text, default="results/quantize", help="folder for JSON and figures")
    sp.add_argument("--export", type=text, metavar="MODEL.onnx",
                    help="also export ORT int8 (QDQ) and time it vs ORT fp32")
    sp = add("quant-noise", cmd_quant_noise, "predicted (analytic model, Hutchinson noise gains) vs measured "
                                             "SQNR per block")
    _quant_args(sp)
    sp.add_argument("--no-gains", action="store_true", help="skip the Hutchinson-gain prediction (slow)")
    sp.add_argument("--gain-samples", type=positive_int, default=32)
    sp.add_argument("--out", type=text, default="results/quant_noise")
    sp = add("int8", cmd_int8, "export to ONNX, quantize to int8 with ONNX Runtime (QDQ, u8/s8, per-channel), "
                               "time ORT int8 vs ORT fp32 (and accuracy for a trained run)")
    sp.add_argument("--checkpoint", type=text, help="trained run (accuracy is measured on its test split)")
    sp.add_argument("--model", type=text, default="efficientnet_b0",
                    help="zoo model with random weights (no --checkpoint)")
    add_model_arguments(sp, name="none", checkpoint=False, resolution=True)
    sp.add_argument("--data", type=text, help="dataset (default: the run's own)")
    sp.add_argument("--out", type=text, default="results/int8/model.onnx", help="int8 model path (fp32 next to it)")
    sp.add_argument("--calib", choices=("minmax", "percentile", "entropy"), default="minmax")
    sp.add_argument("--calib-samples", type=positive_int, default=256)
    sp.add_argument("--batch-sizes", type=int_list, default=(1, 16), help="comma-separated, e.g. 1,16")
    sp.add_argument("--repeats", type=positive_int, default=20)
    sp.add_argument("--threads", type=positive_int, default=1)
    sp.add_argument("--no-pool-rewrite", action="store_true",
                    help="keep the exporter's ReduceMean pooling (ORT's plain static recipe, for comparison)")
    sp.add_argument("--json", action="store_true")
