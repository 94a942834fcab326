"""Experiment F (claim f): does SE *before* the depthwise conv give a better signal-to-quantization-noise ratio
than the standard SE *after* it in deep, heavily quantized MBConv stacks?

    python experiments/se_placement_quant.py --quick      # L in {4, 8}, 2 seeds, 6 epochs, reduced PTQ grid
    python experiments/se_placement_quant.py              # L in {4, 8, 16, 32}, 5 seeds, 20 epochs, full grid,
                                                          # plus 2-D stacks on MNIST 5k (L in {4, 8, 16},
                                                          # 14 px input, 7x7 maps, 48 MSE-calibrated configs)

The full mode is far beyond the project's one-hour rule (about a CPU-day on this machine: 60 MNIST-1D nets with 96
PTQ configurations each, 45 MNIST 5k nets with 48). It is built to run in chunks: `--depths 4,8 --seeds 0-4
--datasets mnist1d` in one process or session, `--depths 16` in another; nets and their evaluations are cached (an
evaluated net is never retrained), and a final run without the chunk options only aggregates. `--workers N` trains
and evaluates N nets side by side (one process each), `--device cuda` trains and evaluates on a GPU (TF32 off, so
that rounding does not add noise of its own), `--deadline-s` stops starting new nets after a time and `--no-summary`
only fills the cache. Which chunks ran, where and how long: docs/claims/f_quant_se_placement.md.

Nets: stem (24 ch, stride 1 in 1-D, 2 in 2-D) -> L stride-1 MBConv blocks (t=4, k=5, ReLU6, SE 0.25, residual) ->
1x1 head (96) -> pool -> classifier; three variants trained identically (same seeds, recipe, steps): SE after DW
(standard), SE before DW (the design's hypothesis) and no SE (control). Checkpoints are cached (a rerun skips
training).

PTQ (mbconv.quant): weights per-channel symmetric, activations asymmetric per-tensor (and per-channel, the P1
control), calibration by MSE-optimal ranges (and min/max in the full 1-D run) on 512 training samples, at two
quantizer placements: 'runtime' (where an int8 runtime stores tensors: conv/linear inputs and outputs) and
'full' (the analytic model's placement, also the gate values). Plus a short QAT at W4A4. Metrics: accuracy drop,
output (logit) SQNR, pre-pool feature SQNR, Lin et al.'s sum rule, and the per-block placement inequality of
science.md §6.8 evaluated from measured float statistics. Results: experiments/results/se_placement_quant/.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RECIPE, paired, read_metrics, seed_list, t_ci  # experiments/ is on sys.path when a script runs

from mbconv.data import load_dataset
from mbconv.layers import fuse_bn
from mbconv.provenance import RunRecord
from mbconv.quant.insert import QuantConfig, quantizers
from mbconv.quant.noise import measure_sqnr
from mbconv.quant.ptq import copy_ranges, prepare, ptq
from mbconv.quant.qat import qat
from mbconv.report import plt, savefig, write_json
from mbconv.spec import NetSpec, parse_arch
from mbconv.train import evaluate
from mbconv.workflow import load_run, train_run

VARIANTS = {"se_post": ("after_dw", True), "se_pre": ("before_dw", True), "no_se": ("after_dw", False)}
OUT = Path(__file__).parent / "results" / "se_placement_quant"
# MNIST 5k's 28 px digits are averaged to 14 px (bilinear at exactly half = 2x2 means) and the stride-2 stem
# leaves 7x7 maps for the blocks: 4x cheaper than 28 px, so the 45 2-D nets fit in ~1.5 h on 2 cores.
INPUT_RES = {"mnist1d": 40, "mnist5k": 14}
# The 2-D arm calibrates activations by MSE only (48 of the 96 configurations; the 1-D arm adds min/max): even so
# its evaluation takes about as long as its training.
CALIBS = {"mnist1d": ("mse", "minmax"), "mnist5k": ("mse",)}
INIT = "tf init, zero classifier; weights after torch.manual_seed(derive_seed(seed, 'init')) (workflow.train_run)"


def stack_spec(depth: int, variant: str, data: str) -> NetSpec:
    pos, se = VARIANTS[variant]
    block = f"ir_r{depth}_k5_s1_e4_c24" + ("_se0.25" if se else "")
    dims, stem_stride = (1, 1) if data == "mnist1d" else (2, 2)  # 2-D: 14 px in, 7x7 after the stem
    return NetSpec(stages=parse_arch(block), name=f"stack{depth}_{variant}", dims=dims, in_chans=1,
                   num_classes=10, stem_chs=24, stem_stride=stem_stride, head_chs=96, resolution=INPUT_RES[data],
                   act="relu6", se_position=pos, drop_rate=0.1)


def run_dir(cache: Path, data: str, depth: int, variant: str, seed: int, epochs: int) -> Path:
    return cache / data / f"L{depth}_{variant}_s{seed}_e{epochs}"


def train(depth: int, variant: str, seed: int, data: str, epochs: int, batch: int, cache: Path,
          device: str = "cpu") -> Path:
    out = run_dir(cache, data, depth, variant, seed, epochs)
    if ((out / "metrics.jsonl").exists() and len(read_metrics(out)) >= epochs
            and (out / "best" / "meta.json").exists()):
        return out
    train_run(RECIPE.run_config(model=stack_spec(depth, variant, data), data=data, resolution=INPUT_RES[data],
                                out=str(out), epochs=epochs, batch_size=batch, seed=seed, resume=True,
                                progress="none", extra_train={"device": device}))
    return out


# -- the placement inequality (science.md §6.8) from measured float statistics --------------------------------
@torch.no_grad()
def placement_inequality(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, float]]:
    """Per SE block: predicted SE-pre advantage 10 log10(R2^2 sum w g^2 / (R3'^2 sum w a^2)) in dB (> 0: SE-pre
    adds less per-tensor requantization noise in front of the projection), from one float forward pass."""
    m = fuse_bn(model)
    rec: dict[str, dict[str, torch.Tensor]] = {}
    hooks = []
    for name, b in m.named_modules():
        if getattr(b, "se", None) is None or not hasattr(b, "depthwise"):
            continue
        r = rec.setdefault(name, {})
        hooks.append(b.depthwise.register_forward_pre_hook(lambda mod, a, r=r: r.__setitem__("dw_in", a[0])))
        hooks.append(b.depthwise.register_forward_hook(lambda mod, a, o, r=r: r.__setitem__("dw_out", o)))
        hooks.append(b.se.register_forward_pre_hook(lambda mod, a, r=r: r.__setitem__("se_in", a[0])))
        hooks.append(b.se.gate.register_forward_hook(lambda mod, a, o, r=r: r.__setitem__("g", o)))
        r["pre"] = torch.tensor(float(b.se_position == "before_dw"))
        r["w"] = b.project.conv.weight.detach().pow(2).flatten(1).sum(0)  # w_c = ||W_proj[:, c]||^2
    m(x)
    for h in hooks:
        h.remove()
    rows = []
    for name, r in rec.items():
        g = r["g"]  # (N, C, 1)
        g_rms = g.pow(2).mean((0, 2)).sqrt()
        rms = lambda t: t.pow(2).transpose(0, 1).flatten(1).mean(1).sqrt()  # noqa: E731
        a = rms(r["dw_out"]) / rms(r["dw_in"]).clamp_min(1e-12)  # DW gain per channel (incl. folded BN, act)
        if bool(r["pre"]):
            r3p = r["dw_in"].abs().max()  # gated expand output, measured
            r2 = (r["dw_out"].abs().amax((0, 2)) / g_rms.clamp_min(1e-6)).max()  # ungated DW output (estimate)
        else:
            r2 = r["dw_out"].abs().max()  # DW output, measured
            r3p = (r["dw_in"] * g).abs().max()  # gate applied before DW (estimate)
        w = r["w"]
        lhs = float(r3p.pow(2) * (w * a.pow(2)).sum())
        rhs = float(r2.pow(2) * (w * g_rms.pow(2)).sum())
        rows.append({"block": name, "pre_advantage_db": 10 * math.log10(rhs / max(lhs, 1e-30)),
                     "R2": float(r2), "R3p": float(r3p), "gate_rms_mean": float(g_rms.mean()),
                     "dw_gain_cv": float(a.std() / a.mean().clamp_min(1e-12))})
    return rows


# -- main -----------------------------------------------------------------------------------------------------
def grid(quick: bool, calibs: tuple[str, ...] = ("mse", "minmax")) -> list[dict[str, Any]]:
    """Quick: W8 x A{4,3} per-tensor x {runtime, full}, W8A4 per-channel and W4A4 per-tensor (runtime): 6 configs,
    MSE ranges. Full: W{8,4,3} x A{8,6,4,3} x granularity x placement x `calibs` (96 configs with MSE and
    min/max)."""
    out = []
    if quick:
        for ab in (4, 3):
            for placement in ("runtime", "full"):
                out.append(dict(wbits=8, abits=ab, a_per_channel=False, placement=placement, a_calib="mse"))
        out.append(dict(wbits=8, abits=4, a_per_channel=True, placement="runtime", a_calib="mse"))
        out.append(dict(wbits=4, abits=4, a_per_channel=False, placement="runtime", a_calib="mse"))
        return out
    for calib in calibs:
        for placement in ("runtime", "full"):
            for per_ch in (False, True):
                for ab in (8, 6, 4, 3):
                    for wb in (8, 4, 3):
                        out.append(dict(wbits=wb, abits=ab, a_per_channel=per_ch, placement=placement, a_calib=calib))
    return out


def cfg_key(c: dict[str, Any]) -> str:
    return (f"W{c['wbits']}A{c['abits']}_{'ch' if c['a_per_channel'] else 'tensor'}_{c['placement']}_"
            f"{c['a_calib']}")


@torch.no_grad()
def calibrate_weights(q: torch.nn.Module) -> None:
    """Weight ranges only (activation ranges were copied)."""
    for fq in quantizers(q, ["weight"]).values():
        fq.calibrate_from(q.get_submodule(fq.host).parametrizations["weight"].original)
        fq.mode = "quant"


def evaluate_model(run: Path, data: str, quick: bool, qat_steps: int, log, device: str = "cpu") -> dict[str, Any]:
    model, meta, _ = load_run(run)
    model = model.to(device)
    train_ds = load_dataset(data, "train", resolution=meta["data"]["resolution"])
    test_ds = load_dataset(data, "test", resolution=meta["data"]["resolution"])
    fp = evaluate(model, test_ds)["acc"]
    calib = torch.stack([train_ds[i][0] for i in range(256 if quick else 512)]).to(device)
    xs = torch.stack([test_ds[i][0] for i in range(512)]).to(device)
    res: dict[str, Any] = {"fp32_acc": fp, "ptq": {}, "device": str(device), "torch": torch.__version__}
    shared: dict[tuple, torch.nn.Module] = {}  # activation ranges do not depend on the weight bits: calibrate once
    for c in grid(quick, CALIBS[data]):
        cfg = QuantConfig(wbits=c["wbits"], abits=c["abits"], a_per_channel=c["a_per_channel"],
                          placement=c["placement"], a_calib=c["a_calib"], w_calib="minmax",
                          a_per_channel_pooled=True,  # what the committed results ran with (see the claims doc)
                          calib_max_samples=2**14 if quick else 2**16)
        key = (c["abits"], c["a_per_channel"], c["placement"], c["a_calib"])
        if key in shared:
            q = prepare(model, cfg)
            copy_ranges(shared[key], q)
            calibrate_weights(q)
        else:
            q = shared[key] = ptq(model, cfg, calib)
        rep = measure_sqnr(q, xs, num_samples=256, batch_size=256)
        blocks = {b["block"]: b["sqnr_db"] for b in rep["blocks"]}
        lin = sum(10 ** (-v["local_db"] / 10) for v in rep["sites"].values() if math.isfinite(v["local_db"]))
        res["ptq"][cfg_key(c)] = {**c, "acc": evaluate(q, test_ds)["acc"], "output_db": rep["output_db"],
                                  "features_db": blocks.get("head"), "lin_sum_rule_db": -10 * math.log10(lin),
                                  "blocks_db": blocks}
    if qat_steps:
        q = ptq(model, QuantConfig(4, 4, a_calib="mse", calib_max_samples=2**14), calib)
        before = evaluate(q, test_ds)["acc"]
        r = qat(q, train_ds, epochs=1, lr=5e-4, test_ds=test_ds, max_steps=qat_steps)
        res["qat_W4A4"] = {"ptq_acc": before, "qat_acc": r["test_acc"], "steps": r["steps"],
                           "output_db": measure_sqnr(q, xs, num_samples=256, batch_size=256)["output_db"]}
    res["inequality"] = placement_inequality(model, xs)
    return res


def summarize(rows: list[dict[str, Any]], quick: bool, depths: list[int], seeds: list[int],
              data: str) -> dict[str, Any]:
    by = {(r["depth"], r["variant"], r["seed"]): r for r in rows if r["data"] == data}
    keys = sorted({k for r in by.values() for k in r["ptq"]})
    summary: dict[str, Any] = {"float": {}, "configs": {}, "pre_minus_post": {}, "inequality": {}, "qat": {}}
    for L in depths:
        for v in VARIANTS:
            accs = [by[(L, v, s)]["fp32_acc"] for s in seeds if (L, v, s) in by]
            if not accs:
                continue
            summary["float"][f"L{L}_{v}"] = t_ci([100 * a for a in accs])
            ineq = [b["pre_advantage_db"] for s in seeds if (L, v, s) in by for b in by[(L, v, s)]["inequality"]]
            if ineq:
                summary["inequality"][f"L{L}_{v}"] = {"mean_db": statistics.mean(ineq),
                                                      "frac_pre_better": sum(i > 0 for i in ineq) / len(ineq)}
            q = [by[(L, v, s)].get("qat_W4A4") for s in seeds if (L, v, s) in by]
            if q and all(q):
                summary["qat"][f"L{L}_{v}"] = {"ptq_acc": t_ci([100 * x["ptq_acc"] for x in q]),
                                               "qat_acc": t_ci([100 * x["qat_acc"] for x in q])}
        for k in keys:
            for v in VARIANTS:
                rs = [by[(L, v, s)] for s in seeds if (L, v, s) in by and k in by[(L, v, s)]["ptq"]]
                if not rs:
                    continue
                summary["configs"][f"L{L}_{v}_{k}"] = {
                    "output_db": t_ci([r["ptq"][k]["output_db"] for r in rs]),
                    "drop_pt": t_ci([100 * (r["fp32_acc"] - r["ptq"][k]["acc"]) for r in rs]),
                    "lin_db": t_ci([r["ptq"][k]["lin_sum_rule_db"] for r in rs])}
            both = [s for s in seeds if (L, "se_post", s) in by and (L, "se_pre", s) in by]  # paired by seed
            pre, post = [by[(L, "se_pre", s)] for s in both], [by[(L, "se_post", s)] for s in both]
            if not both:
                continue
            summary["pre_minus_post"][f"L{L}_{k}"] = {
                "output_db": paired([r["ptq"][k]["output_db"] for r in pre],
                                    [r["ptq"][k]["output_db"] for r in post]),
                "drop_pt": paired([100 * (r["fp32_acc"] - r["ptq"][k]["acc"]) for r in pre],
                                  [100 * (r["fp32_acc"] - r["ptq"][k]["acc"]) for r in post])}
    # How often SE-pre wins across the 96 configurations at each depth. The configurations share the same nets,
    # so they are not independent tests: this is a description of consistency, not a combined p-value.
    summary["sign_count"] = {}
    for L in depths:
        ds = [v["output_db"] for k, v in summary["pre_minus_post"].items() if k.startswith(f"L{L}_")]
        tensor = [v["output_db"] for k, v in summary["pre_minus_post"].items()
                  if k.startswith(f"L{L}_") and "_tensor_" in k]
        summary["sign_count"][f"L{L}"] = {
            "configs": len(ds), "pre_better": sum(d["mean"] > 0 for d in ds),
            "pre_better_p05": sum(d["mean"] > 0 and d["p_ttest"] < 0.05 for d in ds),  # nan p: not counted
            "post_better_p05": sum(d["mean"] < 0 and d["p_ttest"] < 0.05 for d in ds),
            "per_tensor_configs": len(tensor), "per_tensor_pre_better": sum(d["mean"] > 0 for d in tensor),
            "per_tensor_mean_db": statistics.mean(d["mean"] for d in tensor) if tensor else float("nan")}
    return summary


def _depth_axis(ax: Any, depths: list[int], ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("blocks L")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def figures(summary: dict[str, Any], depths: list[int], out: Path, tag: str, ref: str) -> list[Path]:
    p = plt()
    paths = []
    depths = [L for L in depths if any(k.startswith(f"L{L}_") for k in summary["configs"])]  # those with nets
    fig, axes = p.subplots(1, 2, figsize=(11, 3.8))
    for ax, placement in zip(axes, ("runtime", "full")):
        key = ref.replace("runtime", placement)
        for v in VARIANTS:  # a variant may lack some depths (a chunk run with --variants)
            ds = [L for L in depths if f"L{L}_{v}_{key}" in summary["configs"]]
            ys = [summary["configs"][f"L{L}_{v}_{key}"]["output_db"] for L in ds]
            ax.errorbar(ds, [y[0] for y in ys], yerr=[0 if math.isnan(y[1]) else y[1] for y in ys], marker="o",
                        capsize=3, label=v)
        base = summary["configs"][f"L{depths[0]}_se_post_{key}"]["output_db"][0]
        ax.plot(depths, [base - 10 * math.log10(L / depths[0]) for L in depths], "k:", lw=1, label="-10 log10 L")
        _depth_axis(ax, depths, "logit SQNR (dB)", f"{key} ({tag})")
    paths.append(savefig(fig, out / f"fig_sqnr_vs_depth_{tag}.png"))
    fig, ax = p.subplots(figsize=(9, 3.8))
    keys = sorted({k.split("_", 1)[1] for k in summary["pre_minus_post"]})
    L = depths[-1]
    ks = [k for k in keys if f"L{L}_{k}" in summary["pre_minus_post"]]
    d = [summary["pre_minus_post"][f"L{L}_{k}"]["output_db"] for k in ks]
    ax.bar(range(len(ks)), [x["mean"] for x in d], yerr=[0 if math.isnan(x["ci95"]) else x["ci95"] for x in d],
           capsize=2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(ks)), ks, rotation=75, fontsize=6)
    ax.set_ylabel("SQNR(SE-pre) - SQNR(SE-post) dB")
    ax.set_title(f"L={L}: paired SE-pre minus SE-post logit SQNR (mean, 95% CI over seeds; {tag})", fontsize=9)
    paths.append(savefig(fig, out / f"fig_pre_minus_post_L{L}_{tag}.png"))
    if len(depths) > 1:  # the hypothesis is about depth: the paired difference against L, for a few configs
        fig, ax = p.subplots(figsize=(6.5, 3.8))
        for k in ("W8A8_tensor_runtime_mse", "W8A4_tensor_runtime_mse", "W8A4_tensor_full_mse",
                  "W8A4_ch_runtime_mse", "W4A4_tensor_runtime_mse", "W8A3_tensor_runtime_mse"):
            ds = [L for L in depths if f"L{L}_{k}" in summary["pre_minus_post"]]
            d = [summary["pre_minus_post"][f"L{L}_{k}"]["output_db"] for L in ds]
            if not d:
                continue
            ax.errorbar(ds, [x["mean"] for x in d], yerr=[0 if math.isnan(x["ci95"]) else x["ci95"] for x in d],
                        marker="o", capsize=3, label=k.replace("_mse", ""))
        ax.axhline(0, color="k", lw=0.5)
        _depth_axis(ax, depths, "SQNR(SE-pre) - SQNR(SE-post) dB",
                    f"paired SE-pre minus SE-post logit SQNR vs depth (95% CI over seeds; {tag})")
        paths.append(savefig(fig, out / f"fig_pre_minus_post_vs_depth_{tag}.png"))
    return paths


def run_job(job: dict[str, Any]) -> dict[str, Any] | None:
    """Train (unless cached) and evaluate (unless cached) one net; runs in a worker process with --workers.
    Returns the evaluation, or None when the job was not started before the deadline."""
    torch.set_num_threads(job["threads"])
    if "cuda" in (job["device"], job["eval_device"]):
        # TF32 convs round at ~1e-3: that would be noise of its own next to the 20-50 dB SQNRs measured here.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    run = run_dir(Path(job["cache"]), job["data"], job["depth"], job["variant"], job["seed"], job["epochs"])
    cached = run / f"eval_{job['tag']}.json"
    if cached.exists():  # evaluated before: training is not needed (the weights may not even be here)
        return json.loads(cached.read_text())
    if job["deadline"] and time.time() > job["deadline"]:
        return None
    t = time.time()
    train(job["depth"], job["variant"], job["seed"], job["data"], job["epochs"], job["batch"], Path(job["cache"]),
          device=job["device"])
    t_train = time.time() - t
    t = time.time()
    r = evaluate_model(run, job["data"], job["tag"] == "quick", job["qat_steps"], print, device=job["eval_device"])
    r["seconds"] = {"train": t_train, "eval": time.time() - t, "train_device": job["device"]}
    write_json(cached, r)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--cache", default="results/se_placement_quant_runs", help="trained checkpoints (reused)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    # The full grid is ~1-2 CPU-days here: these select a chunk (e.g. one depth per process and per session);
    # trained nets and each net's evaluation are cached, so a final run over everything only aggregates.
    ap.add_argument("--depths", help="comma-separated subset of the depths, e.g. 4,8")
    ap.add_argument("--seeds", help="seed range, e.g. 0-4 or 2,3")
    ap.add_argument("--datasets", help="comma-separated subset of mnist1d,mnist5k")
    ap.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)} (trained and evaluated)")
    ap.add_argument("--workers", type=int, default=1, help="nets trained and evaluated side by side (processes)")
    ap.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    ap.add_argument("--eval-device", help="PTQ/QAT evaluation device (default: --device)")
    ap.add_argument("--deadline-s", type=float, default=0.0, help="start no new net after this many seconds")
    ap.add_argument("--no-summary", action="store_true", help="only fill the cache (a chunk of a larger run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    depths = [4, 8] if quick else [4, 8, 16, 32]
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    datasets = default_datasets = ["mnist1d"] if quick else ["mnist1d", "mnist5k"]
    try:
        if args.depths:
            depths = [int(d) for d in args.depths.split(",")]
        if args.seeds:
            seeds = seed_list(args.seeds)
    except ValueError:
        ap.error(f"--depths {args.depths!r} / --seeds {args.seeds!r}: expected e.g. --depths 4,8 --seeds 0-4")
    if args.datasets:
        datasets = [d.strip() for d in args.datasets.split(",")]
        bad = [d for d in datasets if d not in ("mnist1d", "mnist5k")]
        if bad:
            ap.error(f"unknown dataset(s) {bad}: choose from mnist1d, mnist5k")
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    if set(variants) - set(VARIANTS):
        ap.error(f"unknown variant(s) {sorted(set(variants) - set(VARIANTS))}: choose from {', '.join(VARIANTS)}")
    if args.workers < 1:
        ap.error(f"--workers {args.workers}: must be >= 1")
    for name, dev in (("--device", args.device), ("--eval-device", args.eval_device)):
        if dev and dev not in ("cpu", "cuda") and not dev.startswith("cuda:"):
            ap.error(f"{name} {dev!r}: expected cpu, cuda or cuda:N")
        if dev and dev.startswith("cuda") and not torch.cuda.is_available():
            ap.error(f"{name} {dev!r}: this machine has no CUDA device; use --device cpu")
    epochs, batch = (4, 128) if quick else (20, 64)
    qat_steps = 20 if quick else 120  # short QAT at W4A4 (batch 64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if quick else "full"
    t0 = time.time()
    record = RunRecord(seeds=seeds, epochs=epochs, init=INIT, device=args.device)
    timing = {"train_s": 0.0, "eval_s": 0.0}

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    def depths_for(data: str) -> list[int]:
        """The 2-D arm stops at L = 16 by default (its L = 32 nets are a chunk of their own, see the claims doc)."""
        return depths if data == "mnist1d" or args.depths else [d for d in depths if d <= 16]

    jobs = []
    for data in datasets:
        ds_depths = depths_for(data)
        # side by side, the deepest (longest) nets go first so that the last ones to finish are short
        for L in sorted(ds_depths, reverse=args.workers > 1):
            for seed in seeds:
                for v in variants:
                    jobs.append(dict(data=data, depth=L, variant=v, seed=seed, epochs=epochs, batch=batch, tag=tag,
                                     qat_steps=qat_steps, cache=args.cache, threads=args.threads, device=args.device,
                                     eval_device=args.eval_device or args.device,
                                     deadline=t0 + args.deadline_s if args.deadline_s else 0.0))

    def done(job: dict[str, Any], r: dict[str, Any] | None) -> dict[str, Any] | None:
        if r is None:
            log(f"{job['data']} L={job['depth']} {job['variant']} seed {job['seed']}: not started (deadline)")
            return None
        timing["train_s"] += r.get("seconds", {}).get("train", 0.0)
        timing["eval_s"] += r.get("seconds", {}).get("eval", 0.0)
        ref = r["ptq"][cfg_key(dict(wbits=8, abits=4, a_per_channel=False, placement="runtime", a_calib="mse"))]
        log(f"{job['data']} L={job['depth']} {job['variant']} seed {job['seed']}: fp32 {100 * r['fp32_acc']:.1f} %, "
            f"W8A4 {100 * ref['acc']:.1f} % SQNR {ref['output_db']:.1f} dB")
        return {"data": job["data"], "depth": job["depth"], "variant": job["variant"], "seed": job["seed"], **r}

    rows: list[dict[str, Any]] = []
    if args.workers == 1:
        for job in jobs:
            row = done(job, run_job(job))
            if row:
                rows.append(row)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for f in as_completed(futures):
                row = done(futures[f], f.result())
                if row:
                    rows.append(row)
    order = {(j["data"], j["depth"], j["variant"], j["seed"]): i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["data"], r["depth"], r["variant"], r["seed"])])
    write_json(out / f"rows_{tag}.json", rows)
    if args.no_summary:
        log(f"cache filled: {len(rows)} of {len(jobs)} nets evaluated (train {timing['train_s']:.0f} s, "
            f"eval {timing['eval_s']:.0f} s summed over processes)")
        return
    ref_key = "W8A4_tensor_runtime_mse"
    cmd = " ".join(["python", "experiments/se_placement_quant.py", *sys.argv[1:]])
    result = {"mode": tag, "depths": depths, "seeds": seeds, "epochs": epochs, "batch": batch, "timing": timing,
              "wall_s": time.time() - t0, "command": cmd,
              "provenance": record.as_dict()}
    for data in datasets:
        ds_depths = depths_for(data)
        s = summarize(rows, quick, ds_depths, seeds, data)
        result[data] = s
        figures(s, ds_depths, out, f"{data}_{tag}", ref_key)
    names = {"mnist1d": "MNIST-1D", "mnist5k": "MNIST 5k (2-D)"}
    table_rows, parts = [], []
    for data in datasets:
        s = result[data]
        ds_depths = [L for L in depths if f"L{L}_{ref_key}" in s["pre_minus_post"]]
        for L in ds_depths:
            for k in ("W8A4_tensor_runtime_mse", "W8A4_tensor_full_mse", "W8A4_ch_runtime_mse",
                      "W4A4_tensor_runtime_mse", "W8A3_tensor_runtime_mse", "W8A3_tensor_full_mse",
                      "W8A3_ch_runtime_mse", "W8A8_tensor_runtime_mse"):
                if f"L{L}_{k}" not in s["pre_minus_post"]:
                    continue
                d = s["pre_minus_post"][f"L{L}_{k}"]
                post, pre, nose = (round(s["configs"][f"L{L}_{v}_{k}"]["output_db"][0], 2)
                                   if f"L{L}_{v}_{k}" in s["configs"] else "-" for v in VARIANTS)
                do, dd = d["output_db"], d["drop_pt"]
                table_rows.append([names[data], L, k, post, pre, nose,
                                   f"{do['mean']:+.2f} ± {do['ci95']:.2f}", f"{dd['mean']:+.2f} ± {dd['ci95']:.2f}"])
        one = [(L, s["pre_minus_post"][f"L{L}_{ref_key}"]["output_db"]) for L in ds_depths]
        parts.append(f"{names[data]}: " + "; ".join(f"L={L} ({d['n']} seeds) {d['mean']:+.2f} ± {d['ci95']:.2f} dB"
                                                     for L, d in one))
    headline = (f"{tag} run: SE-pre minus SE-post logit SQNR at W8A4 per-tensor (runtime placement), paired over "
                "seeds. " + ". ".join(parts))
    result["headline"] = headline
    result["table"] = {"header": ["data", "L", "config", "SE-post dB", "SE-pre dB", "no-SE dB",
                                  "pre - post dB (95% CI)", "pre - post acc drop pt"], "rows": table_rows}
    result["table_caption"] = f"SE placement: logit SQNR (mean over seeds) and paired differences ({tag})"
    write_json(out / f"summary_{tag}.json", result)
    if set(datasets) == set(default_datasets):  # what the tour shows: only a run over all of the mode's data
        write_json(out / "summary.json", result)
    log(f"done: {headline}")
    for data in datasets:
        print(data, json.dumps(result[data]["float"], indent=1))


if __name__ == "__main__":
    main()
