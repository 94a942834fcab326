"""`mbconv export` (ONNX, checked in ONNX Runtime against PyTorch) and `mbconv bench` (quick latency)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ..cli import _positive_int

BACKENDS = ("eager", "compile", "onnx", "int8")


def _model(args: argparse.Namespace) -> tuple[Any, int | None, str]:
    """(eval model, default resolution or None, description) from a zoo NAME or a --checkpoint run."""
    if bool(args.model) == bool(getattr(args, "checkpoint", None)):
        raise ValueError("give a model NAME or --checkpoint DIR (exactly one)")
    if args.model:
        from ..net import MBConvNet
        from ..zoo import get_spec

        over = {k: v for k, v in (("num_classes", args.num_classes), ("in_chans", args.in_chans),
                                  ("dims", args.dims)) if v is not None}
        if args.width_mult is not None:
            over["width_mult"] = args.width_mult
        spec = get_spec(args.model, **over)
        return MBConvNet(spec).eval(), None, spec.name
    from ..workflow import load_run

    model, run, ck = load_run(args.checkpoint)
    res = (run.get("data") or {}).get("resolution")
    return model.eval(), res, str(ck)


def _resolution(args: argparse.Namespace, model: Any, default: int | None) -> int:
    return args.resolution or default or model.spec.resolution


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..deploy import check_onnx, export_onnx

    torch.set_num_threads(args.threads)
    out = args.out or args.onnx
    if not out:
        raise ValueError("give the output file: --out model.onnx")
    if not str(out).endswith(".onnx"):
        raise ValueError(f"output {out} should end in .onnx")
    model, default_res, what = _model(args)
    res = _resolution(args, model, default_res)
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


def _export_int8(args: argparse.Namespace, model: Any, res: int, out: str, what: str) -> int:
    import torch

    try:
        from ..quant.onnx_int8 import quantize_onnx
    except ImportError as e:
        raise ValueError(f"--int8 needs mbconv.quant.onnx_int8 (not available: {e})") from None
    from ..deploy import export_onnx

    if args.data:
        from ..data import load_dataset

        ds = load_dataset(args.data, "train", resolution=res)
        n = min(len(ds), args.calib_samples)
        calib = torch.stack([ds[i][0] for i in range(n)])
    else:
        calib = torch.randn(args.calib_samples, model.spec.in_chans, *([res] * model.spec.dims))
        print("warning: no --data: calibrating on random inputs (fine for timing, not for accuracy)")
    fp32 = Path(out).with_name(Path(out).stem + ".fp32.onnx")
    export_onnx(model, fp32, res, input_name="x")  # quantize_onnx feeds calibration batches as "x"
    quantize_onnx(fp32, out, [b.numpy() for b in calib.split(32)])
    print(f"{what} -> {fp32} (fp32) -> {out} (int8 QDQ, calibrated on {len(calib)} "
          f"{'samples of ' + args.data if args.data else 'random inputs'})")
    return 0




def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..deploy import channels_last_input, compile_model, export_onnx, ort_session, prepare_inference
    from ..roofline import time_calls

    torch.set_num_threads(args.threads)
    model, default_res, what = _model(args)
    res = _resolution(args, model, default_res)
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
        else:
            path = Path(tmp) / "model.onnx"
            if args.backend == "onnx":
                export_onnx(model, path, res)
            else:
                try:
                    from ..quant.onnx_int8 import quantize_onnx
                except ImportError as e:
                    raise ValueError(f"--backend int8 needs mbconv.quant.onnx_int8 (not available: {e})") from None
                fp32 = Path(tmp) / "model.fp32.onnx"
                export_onnx(model, fp32, res, input_name="x")
                quantize_onnx(fp32, path, [torch.randn(16, *x.shape[1:]).numpy() for _ in range(4)])
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


def _model_args(sp: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    sp.add_argument("model", nargs="?", help="zoo name (see `mbconv list`) or block strings")
    if checkpoint:
        sp.add_argument("--checkpoint", help="a trained run or checkpoint directory instead of NAME")
    sp.add_argument("--num-classes", type=_positive_int)
    sp.add_argument("--in-chans", type=_positive_int)
    sp.add_argument("--dims", type=int, choices=(1, 2, 3))
    sp.add_argument("--width-mult", type=float)
    sp.add_argument("--resolution", type=_positive_int, help="input size (default: the run's or the spec's)")
    sp.add_argument("--threads", type=_positive_int, default=1)


def register(add: Any) -> None:
    sp = add("export", cmd_export, "export to ONNX (BN folded, static pads, clean graph) and check it in ONNX "
                                   "Runtime against PyTorch")
    _model_args(sp)
    sp.add_argument("--out", help="output .onnx file")
    sp.add_argument("--onnx", help="same as --out")
    sp.add_argument("--opset", type=int, default=17)
    sp.add_argument("--static-batch", action="store_true", help="batch axis fixed to 1 (default: dynamic)")
    sp.add_argument("--tol", type=float, default=1e-4, help="max abs diff allowed between ORT and PyTorch")
    sp.add_argument("--int8", action="store_true", help="also quantize to int8 (ORT static QDQ; mbconv.quant)")
    sp.add_argument("--data", help="calibration dataset for --int8")
    sp.add_argument("--calib-samples", type=_positive_int, default=256)
    sp = add("bench", cmd_bench, "quick inference latency of one model on one backend (see `make bench` for the "
                                 "comparison against timm and ONNX Runtime)")
    _model_args(sp)
    sp.add_argument("--batch", type=_positive_int, default=1)
    sp.add_argument("--backend", choices=BACKENDS, default="eager")
    sp.add_argument("--rounds", type=_positive_int, default=10)
