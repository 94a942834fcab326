"""`mbconv export` (ONNX, checked in ONNX Runtime against PyTorch) and `mbconv bench` (quick latency)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ..cli_args import add_model_arguments, model_from_args, nonnegative_float, positive_int, text

BACKENDS = ("eager", "compile", "onnx", "int8", "executorch", "executorch-int8")


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..export import check_onnx, export_onnx

    torch.set_num_threads(args.threads)
    out = args.out or args.onnx
    suffix = "." + args.format
    if not out:
        raise ValueError(f"give the output file: --out model{suffix}")
    if not str(out).endswith(suffix):
        raise ValueError(f"output {out} should end in {suffix}")
    src = model_from_args(args)
    model, res, what = src.model, src.resolution, src.description
    if args.format == "pte":
        return _export_pte(args, model, res, out, what)
    if args.int8:
        return _export_int8(args, model, res, out, what)
    t0 = time.perf_counter()
    info = export_onnx(model, out, res, dynamic_batch=not args.static_batch, opset=args.opset)
    dt = time.perf_counter() - t0
    batch = 1 if args.static_batch else 3
    x = torch.randn(batch, model.spec.in_chans, *([res] * model.spec.dims))
    diff = check_onnx(model, out, x)
    ops = ", ".join(f"{k} {v}" for k, v in sorted(info["ops"].items(), key=lambda kv: -kv[1]))
    print(f"{what} -> {out} ({Path(out).stat().st_size / 2**20:.2f} MiB, input {info['input_shape']}, opset "
          f"{info['opset']}, {dt:.1f} s)")
    print(f"ops: {ops}")
    print(f"ONNX Runtime vs PyTorch on {batch} random input(s): max abs diff {diff:.2e} "
          f"({'ok' if diff <= args.tol else 'FAILED'}, tolerance {args.tol:g})")
    if diff > args.tol:
        raise ValueError(f"ONNX Runtime output differs from PyTorch by {diff:.2e} > {args.tol:g}")
    return 0


def _calibration(args: argparse.Namespace, model: Any, res: int, what: str) -> Any:
    """The --int8 calibration samples: --calib-samples of --data's train split, else random inputs (warned)."""
    import torch

    if args.data:
        from ..data import load_dataset

        ds = load_dataset(args.data, "train", resolution=res)
        if ds.info.in_chans != model.spec.in_chans:  # else ONNX Runtime fails deep inside calibration
            raise ValueError(f"dataset {args.data!r} has {ds.info.in_chans} channel(s) but {what} takes "
                             f"{model.spec.in_chans} (in_chans): calibrate on data with {model.spec.in_chans}")
        n = min(len(ds), args.calib_samples)
        calib = torch.stack([ds[i][0] for i in range(n)])
    else:
        calib = torch.randn(args.calib_samples, model.spec.in_chans, *([res] * model.spec.dims))
        print("warning: no --data: calibrating on random inputs (fine for timing, not for accuracy)")
    return calib


def _export_int8(args: argparse.Namespace, model: Any, res: int, out: str, what: str) -> int:
    calib = _calibration(args, model, res, what)
    from ..export.int8 import BC_DEFAULT_WEIGHTS, export_int8, int8_kernels

    weight = int8_kernels()["weight"]
    # bias correction needs real data (its mean inputs); by default on for the weight grids where it measured
    # better on the validation crops, --bias-correction forces it for the others
    if args.bias_correction and not args.data:
        raise ValueError("--bias-correction needs --data (the correction is measured on real calibration data)")
    bc = bool(args.data and not args.no_bias_correction and (args.bias_correction or weight in BC_DEFAULT_WEIGHTS))
    fp32 = export_int8(model, out, calib, res, bias_correction=bc)["path"]
    print(f"{what} -> {fp32} (fp32) -> {out} (int8 QDQ, {weight} weights, "
          f"{'bias-corrected' if bc else 'no bias correction'}, calibrated on {len(calib)} "
          f"{'samples of ' + args.data if args.data else 'random inputs'})")
    return 0


def _need_phone() -> None:
    """A missing `phone` extra as one error line (the CLI prints ValueErrors), not an ImportError traceback."""
    from ..export.pte import need_executorch

    try:
        need_executorch()
    except ImportError as e:
        raise ValueError(str(e)) from None


def _export_pte(args: argparse.Namespace, model: Any, res: int, out: str, what: str) -> int:
    """--format pte: an ExecuTorch program for XNNPACK (batch 1; int8 with --int8), run against PyTorch."""
    import torch

    from ..export.pte import agreement, export_pte, export_pte_int8, pte_logits, pte_method

    _need_phone()
    x = torch.randn(3, model.spec.in_chans, *([res] * model.spec.dims))
    calib = _calibration(args, model, res, what) if args.int8 else None
    # bias correction needs real data (its mean inputs); on random calibration it would fit noise
    if args.bias_correction and not (args.int8 and args.data):
        raise ValueError("--bias-correction needs --int8 and --data (the correction is measured on real data)")
    bc = bool(args.int8 and args.data and not args.no_bias_correction)
    info = export_pte_int8(model, out, calib, res, bias_correction=bc) if args.int8 else export_pte(model, out, res)
    with torch.no_grad():
        ref = model.eval()(x)
    a = agreement(ref, pte_logits(pte_method(out), x))
    left = ", ".join(f"{k} {v}" for k, v in info["portable_ops"].items()) or "none"
    print(f"{what} -> {out} (ExecuTorch, XNNPACK {'int8' if args.int8 else 'fp32'}, {info['size_bytes'] / 2**20:.2f} "
          f"MiB, input {info['input_shape']}, {info['seconds']:.1f} s; {info['delegate_calls']} delegate call(s), "
          f"ops outside XNNPACK: {left})")
    if args.int8:
        pads = f", {info['folded_pads']} TF pad(s) folded into int8 convs" if info["folded_pads"] else ""
        print(f"ExecuTorch int8 ({'bias-corrected' if bc else 'no bias correction'}{pads}) vs PyTorch fp32 on "
              f"{len(x)} random inputs: top-1 agreement {a['top1_agreement']:.2f}, logit SQNR {a['sqnr_db']:.1f} dB")
        return 0
    ok = a["max_abs_diff"] <= args.tol
    print(f"ExecuTorch vs PyTorch on {len(x)} random inputs: max abs diff {a['max_abs_diff']:.2e} "
          f"({'ok' if ok else 'FAILED'}, tolerance {args.tol:g})")
    if not ok:
        raise ValueError(f"ExecuTorch output differs from PyTorch by {a['max_abs_diff']:.2e} > {args.tol:g}")
    return 0




def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..export import export_onnx, ort_session
    from ..inference import channels_last_input, compile_model, prepare_inference
    from ..latency_search import time_calls

    torch.set_num_threads(args.threads)
    src = model_from_args(args)
    model, res, what = src.model, src.resolution, src.description
    spec = model.spec
    x = torch.randn(args.batch, spec.in_chans, *([res] * spec.dims))
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend in ("eager", "compile"):
            net = prepare_inference(model, res, channels_last=spec.dims > 1)
            xi = channels_last_input(x)
            if args.backend == "compile":
                t0 = time.perf_counter()
                net = compile_model(net, xi)
                print(f"torch.compile (inductor, freezing): {time.perf_counter() - t0:.0f} s")

            def run() -> Any:
                with torch.no_grad():
                    return net(xi)
        elif args.backend.startswith("executorch"):
            from ..export.pte import export_pte, export_pte_int8, pte_method, set_pte_threads

            _need_phone()
            pte = Path(tmp) / "model.pte"
            if args.backend == "executorch":
                export_pte(model, pte, res, batch=args.batch)
            else:  # random calibration: a timing, not an accuracy
                export_pte_int8(model, pte, torch.randn(64, *x.shape[1:]), res, batch=args.batch)
            set_pte_threads(args.threads)
            method = pte_method(pte)

            def run() -> Any:
                return method.execute([x])
        else:
            path = Path(tmp) / "model.onnx"
            if args.backend == "onnx":
                export_onnx(model, path, res)
            else:
                from ..export import export_int8

                export_int8(model, path, torch.randn(64, *x.shape[1:]), res)
            sess = ort_session(path, args.threads)
            feed = {sess.get_inputs()[0].name: x.numpy()}

            def run() -> Any:
                return sess.run(None, feed)
        ts = time_calls(run, args.rounds)
    med = statistics.median(ts)
    print(f"{what} at {res}px, batch {args.batch}, {args.backend}, {args.threads} thread(s): median "
          f"{1e3 * med:.2f} ms (min {1e3 * min(ts):.2f}, max {1e3 * max(ts):.2f}) over {args.rounds} runs; "
          f"{args.batch / med:.1f} img/s")
    return 0


def register(add: Any) -> None:
    sp = add("export", cmd_export, "export to ONNX (BN folded, static pads, clean graph) and check it in ONNX "
                                   "Runtime against PyTorch")
    add_model_arguments(sp, name="optional", resolution=True)
    sp.add_argument("--threads", type=positive_int, default=1)
    sp.add_argument("--format", choices=("onnx", "pte"), default="onnx",
                    help="onnx (ONNX Runtime) or pte (ExecuTorch with XNNPACK, batch 1, for phones; needs "
                         "pip install 'mbconv[phone]')")
    sp.add_argument("--out", type=text, help="output .onnx (or .pte) file")
    sp.add_argument("--onnx", type=text, help="same as --out")
    sp.add_argument("--opset", type=positive_int, default=17)
    sp.add_argument("--static-batch", action="store_true", help="batch axis fixed to 1 (default: dynamic)")
    sp.add_argument("--tol", type=nonnegative_float, default=1e-4, help="max abs diff allowed between ORT and PyTorch")
    sp.add_argument("--int8", action="store_true", help="also quantize to int8 (ORT static QDQ; with --format pte: "
                                                         "PT2E with the XNNPACK quantizer)")
    sp.add_argument("--data", type=text, help="calibration dataset for --int8")
    sp.add_argument("--calib-samples", type=positive_int, default=256)
    bias = sp.add_mutually_exclusive_group()
    bias.add_argument("--bias-correction", action="store_true",
                      help="--int8 --data, ONNX: bias-correct also where the default leaves it off (s8 weights: "
                           "higher logit SQNR, one more flipped unsure validation crop; docs/bench/int8.md)")
    bias.add_argument("--no-bias-correction", action="store_true",
                      help="--int8 --data: skip bias correction (default for pte, and for ONNX where the CPU's "
                           "int8 kernels use u8 weights: the biases cancel the mean shift of the int8 weight "
                           "rounding, measured on --data; docs/bench/int8.md, phone.md)")
    sp = add("bench", cmd_bench, "quick inference latency of one model on one backend (see `make bench` for the "
                                 "comparison against timm and ONNX Runtime)")
    add_model_arguments(sp, name="optional", resolution=True)
    sp.add_argument("--threads", type=positive_int, default=1)
    sp.add_argument("--batch", type=positive_int, default=1)
    sp.add_argument("--backend", choices=BACKENDS, default="eager")
    sp.add_argument("--rounds", type=positive_int, default=10)
