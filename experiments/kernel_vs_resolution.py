"""Experiment E (claim e): do larger depthwise kernels pay off at higher input resolution, at matched MACs?

EfficientNet answers resolution with depth (kernels fixed); MixConv finds accuracy rising from 3x3 to 7x7 and
falling beyond; EfficientNetV2 prefers 3x3 plus more layers; effective-receptive-field (ERF) theory says the ERF
grows as k sqrt(L), so covering a fixed fraction of a larger image needs k ~ R or L ~ R^2 (science.md §5).

Protocol. The bundled `textures` task (5 classes of scikit-image textures, 32 px patches, train and test from
disjoint image regions) resampled to R px (same field of view, different sampling). A small 2-D MBConv-SE net
(stem 3x3/2, C = 16; two stride-1 blocks; a stride-2 stage of two blocks, C = 24; t = 4; head 64) with every
depthwise kernel k. For each R the budget is the k = 3 net's exact MACs; k = 5 and 7 nets are brought
to the same MACs within 3 % by a smaller expansion ratio t (MBConv cost is linear in t; channel widths stay;
checked by `cost.spec_cost`). The default mode adds "k = 3, deeper" nets (2x blocks, t lowered to the budget);
--extended also k = 9 and R = 96. Every net is trained identically (AdamW 3e-3, wd 0.05, label smoothing 0.1,
batch 64, shift augmentation) and measured: test accuracy, theoretical RF, and the ERF
(|d centre feature / d input| over 64 test images, radius holding 95 % of the mass; Luo et al. 2016) relative to
the half-side of the image (ERF / FOV).

Confirm (e): the accuracy-optimal k at matched MACs grows with R and ERF/FOV explains most of the accuracy
variation. Refute: k = 3 (with more depth, in the default mode) is optimal at every R.

    PYTHONPATH=src .venv/bin/python experiments/kernel_vs_resolution.py --quick     # R 16/32, k 3/7, 1 seed,
                                                                                   # 4 epochs: a few minutes
    PYTHONPATH=src .venv/bin/python experiments/kernel_vs_resolution.py             # R 16/32/64, k 3/5/7 + deeper
                                                                                   # k3, 3 seeds, 8 epochs: ~1 h
    PYTHONPATH=src .venv/bin/python experiments/kernel_vs_resolution.py --extended  # + R 96, k 9, 20 epochs: ~5 h

Results: experiments/results/kernel_vs_resolution[_quick|_extended]/ (results.json, summary.json, fig_*.png);
trained checkpoints cached under results/cache/kernel_vs_resolution/ (gitignored), so a rerun retrains nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RECIPE, mode_config, read_metrics  # experiments/ is on sys.path when a script runs

from mbconv import stability as S
from mbconv.cost import spec_cost
from mbconv.data import load_dataset
from mbconv.net import MBConvNet
from mbconv.provenance import RunRecord
from mbconv.report import plt, savefig, write_json
from mbconv.scaling_search import with_total_blocks
from mbconv.spec import NetSpec, parse_arch, plan_blocks, spec_replace_blocks
from mbconv.train import Trainer

ROOT = Path(__file__).resolve().parent
CACHE = ROOT.parent / "results" / "cache" / "kernel_vs_resolution"
# Sized for the 2-core machine (the project's rule: the default mode about an hour, --quick a few minutes).
QUICK = dict(resolutions=(16, 32), kernels=(3, 7), deeper=False, seeds=1, epochs=4)
FULL = dict(resolutions=(16, 32, 64), kernels=(3, 5, 7), deeper=True, seeds=3, epochs=8)
EXTENDED = dict(resolutions=(16, 32, 64, 96), kernels=(3, 5, 7, 9), deeper=True, seeds=3, epochs=20)  # ~5 h
DATA = "textures"


def log(msg: str) -> None:
    print(f"[E {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def net_spec(k: int, resolution: int, classes: int) -> NetSpec:
    arch = f"ir_r2_k{k}_s1_e4_c16_se0.25;ir_r2_k{k}_s2_e4_c24_se0.25"
    return NetSpec(stages=parse_arch(arch), name=f"k{k}", in_chans=1, num_classes=classes, stem_chs=16,
                   head_chs=64, resolution=resolution, channel_divisor=1, drop_rate=0.1)


def receptive_field(spec: NetSpec) -> int:
    """Theoretical receptive field (input px) of the last block's output: 1 + sum (k - 1) * jump."""
    rf, jump = spec.stem_kernel, spec.stem_stride
    for p in plan_blocks(spec):
        rf += (p.kernel - 1) * jump
        jump *= p.stride
    return rf


def configs(cfg: dict, resolution: int, classes: int) -> list[tuple[str, NetSpec, dict]]:
    """(label, spec, info) at matched MACs for one resolution."""
    base = net_spec(3, resolution, classes)
    budget = spec_cost(base).macs
    out = [("k3", base, {"kernel": 3, "ratio": 1.0, "expand": 4.0, "blocks": base.num_blocks})]
    variants = [(f"k{k}", net_spec(k, resolution, classes), k) for k in cfg["kernels"] if k != 3]
    if cfg["deeper"]:
        variants.append(("k3_deep", with_total_blocks(base, 2 * base.num_blocks), 3))
    for label, spec, k in variants:
        scaled, t = match_budget(spec, budget)
        ratio = spec_cost(scaled).macs / budget
        if abs(ratio - 1) > 0.03:
            raise ValueError(f"{label} at {resolution} px misses the MAC budget: x{ratio:.3f}")
        out.append((label, dataclasses.replace(scaled, name=label), {
            "kernel": k, "ratio": ratio, "expand": t, "blocks": scaled.num_blocks}))
    return out


def match_budget(spec: NetSpec, budget: int) -> tuple[NetSpec, float]:
    """The spec with one expansion ratio t for every block (t >= 1, steps of 0.01) whose exact MACs are closest to
    `budget`. MBConv cost is linear in t, so this matches within ~1 %; channel widths (the residual stream and the
    RF-relevant depthwise sizes) stay as they are: a bigger kernel is paid for by a thinner expansion."""
    best = None
    for i in range(0, 701):
        t = round(1.0 + i / 100, 2)
        cand = spec_replace_blocks(spec, lambda si, bi, b, t=t: dataclasses.replace(b, expand=t))
        err = abs(spec_cost(cand).macs / budget - 1)
        if best is None or err < best[0]:
            best = (err, cand, t)
    return best[1], best[2]


def run_one(label: str, spec: NetSpec, resolution: int, seed: int, epochs: int, mode: str) -> dict[str, Any]:
    train_ds = load_dataset(DATA, "train", resolution=resolution, augment=True, seed=seed)
    val_ds = load_dataset(DATA, "val", resolution=resolution)
    test_ds = load_dataset(DATA, "test", resolution=resolution)
    torch.manual_seed(seed)
    model = MBConvNet(spec)
    torch.nn.init.zeros_(model.classifier.weight)  # the project's recipe (docs/architecture.md)
    if spec.dims == 2:
        model = model.to(memory_format=torch.channels_last)
    out = CACHE / mode / f"r{resolution}_{label}_s{seed}_e{epochs}"
    cfg = RECIPE.train_config(epochs, seed, out, resume=True, progress="none", save_best=False)
    Trainer(model, train_ds, test_ds, cfg, spec={"net": spec.to_dict()}, val_ds=val_ds).fit()
    rows = read_metrics(out)
    model.eval()
    x = torch.stack([test_ds[i][0] for i in range(64)])
    erf = S.effective_receptive_field(model.forward_features, x)
    c = spec_cost(spec)
    return {"label": label, "resolution": resolution, "seed": seed, "test_acc": rows[-1]["test_acc"],
            "test_loss": rows[-1]["test_loss"], "val_acc": rows[-1]["val_acc"],
            "erf_radius": erf["radius"], "erf_frac": erf["radius_frac"], "rf": receptive_field(spec),
            "rf_frac": receptive_field(spec) / resolution, "macs": c.macs, "params": c.params,
            "expand": spec.stages[0].blocks[0].expand, "blocks": spec.num_blocks}


def summarise(runs: list[dict], cfg: dict) -> dict[str, Any]:
    table = []
    labels = sorted({r["label"] for r in runs}, key=lambda s: (s.startswith("k3_"), int(s[1]), s))
    for res in cfg["resolutions"]:
        for lab in labels:
            rs = [r for r in runs if r["resolution"] == res and r["label"] == lab]
            if not rs:
                continue
            acc = [r["test_acc"] for r in rs]
            val = [r["val_acc"] for r in rs if r.get("val_acc") is not None]  # none in runs before issue 17
            table.append({"resolution": res, "label": lab, "n": len(rs), "acc_mean": statistics.mean(acc),
                          "val_acc_mean": statistics.mean(val) if len(val) == len(rs) else None,
                          "acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                          "erf_frac": statistics.mean(r["erf_frac"] for r in rs), "rf_frac": rs[0]["rf_frac"],
                          "macs": rs[0]["macs"], "params": rs[0]["params"], "expand": rs[0]["expand"],
                          "blocks": rs[0]["blocks"]})
    best = {}
    # the kernel is chosen on the validation split; runs from before it existed were chosen on test, and say so
    on_val = all(t["val_acc_mean"] is not None for t in table)
    key = "val_acc_mean" if on_val else "acc_mean"
    for res in cfg["resolutions"]:
        rows = [t for t in table if t["resolution"] == res]
        b = max(rows, key=lambda t: t[key])
        best[str(res)] = {"label": b["label"], "acc": b["acc_mean"], "chosen_on": "val" if on_val else "test",
                          "margin_over_k3": b["acc_mean"] - next(t["acc_mean"] for t in rows if t["label"] == "k3")}
    # How much of the accuracy variation (within each resolution) does ERF/FOV explain?
    xs, ys = [], []
    for res in cfg["resolutions"]:
        rows = [t for t in table if t["resolution"] == res]
        ma, me = statistics.mean(t["acc_mean"] for t in rows), statistics.mean(t["erf_frac"] for t in rows)
        xs += [t["erf_frac"] - me for t in rows]
        ys += [t["acc_mean"] - ma for t in rows]
    sxx = sum(x * x for x in xs)
    syy = sum(y * y for y in ys)
    r2 = (sum(x * y for x, y in zip(xs, ys)) ** 2 / (sxx * syy)) if sxx > 0 and syy > 0 else math.nan
    order = [int(best[str(r)]["label"][1]) if best[str(r)]["label"] != "k3_deep" else 3 for r in cfg["resolutions"]]
    monotone = all(a <= b for a, b in zip(order, order[1:])) and order[-1] > order[0]
    if monotone:
        rule = "confirm: the accuracy-optimal kernel grows with resolution"
    elif all(o == 3 for o in order):
        rule = "refute: k = 3 is optimal at every resolution"
    else:
        rule = "inconclusive: the optimal kernel does not grow monotonically with resolution"
    return {"table": table, "best_by_resolution": best, "optimal_kernel_order": order,
            "erf_r2_within_resolution": r2, "rule_outcome": rule}


def figures(runs: list[dict], summary: dict, cfg: dict, out: Path) -> None:
    p = plt()
    table = summary["table"]
    labels = sorted({t["label"] for t in table}, key=lambda s: (s.startswith("k3_"), int(s[1]), s))
    fig, ax = p.subplots(1, 3, figsize=(15, 4))
    cycle = p.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, lab in enumerate(labels):
        rows = [t for t in table if t["label"] == lab]
        c = cycle[i % len(cycle)]
        ax[0].errorbar([t["resolution"] for t in rows], [100 * t["acc_mean"] for t in rows],
                       [100 * t["acc_sd"] for t in rows], marker="o", capsize=3, label=lab, color=c)
        ax[1].plot([t["resolution"] for t in rows], [t["erf_frac"] for t in rows], marker="o", label=f"{lab} ERF",
                   color=c)
        ax[1].plot([t["resolution"] for t in rows], [min(1.0, t["rf_frac"]) for t in rows], ls=":", color=c,
                   label=f"{lab} RF (capped)")
    ax[0].set_xlabel("input resolution (px)")
    ax[0].set_ylabel("test accuracy (%)")
    ax[0].set_title("accuracy at matched MACs per resolution")
    ax[0].set_xscale("log", base=2)
    ax[1].set_xlabel("input resolution (px)")
    ax[1].set_ylabel("radius / half-side")
    ax[1].set_title("effective (95 % mass) and theoretical receptive field")
    ax[1].set_xscale("log", base=2)
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=6, ncol=2)
    for j, res in enumerate(cfg["resolutions"]):
        rs = [r for r in runs if r["resolution"] == res]
        ax[2].scatter([r["erf_frac"] for r in rs], [100 * r["test_acc"] for r in rs], s=14,
                      color=cycle[j % len(cycle)], label=f"{res} px")
    ax[2].set_xlabel("ERF / FOV")
    ax[2].set_ylabel("test accuracy (%)")
    ax[2].set_title("every run, by resolution")
    ax[2].legend(fontsize=8)
    savefig(fig, out / "fig_kernel_resolution.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="R 16/32, k 3/7, 1 seed, 4 epochs (a few minutes)")
    ap.add_argument("--extended", action="store_true", help="+ R 96, k 9, 20 epochs (~5 h)")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarise-only", action="store_true", help="recompute summary and figures from results.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mode, cfg = mode_config(ap, args, QUICK, FULL, EXTENDED)
    for k in ("seeds", "epochs"):
        if getattr(args, k):
            cfg[k] = getattr(args, k)
    out = Path(args.out) if args.out else ROOT / "results" / (
        "kernel_vs_resolution" + ("" if mode == "full" else f"_{mode}"))
    out.mkdir(parents=True, exist_ok=True)
    if args.summarise_only:
        saved = json.loads((out / "results.json").read_text())
        summary = summarise(saved["runs"], saved["meta"]["config"])
        write_json(out / "summary.json", {"meta": saved["meta"], **summary})
        figures(saved["runs"], summary, saved["meta"]["config"], out)
        report(summary)
        return
    classes = load_dataset(DATA, "test").info.num_classes
    t0 = time.time()
    record = RunRecord(seeds=list(range(cfg["seeds"])), epochs=cfg["epochs"],
                       init="tf init (MBConvNet default) after torch.manual_seed(seed), zero classifier")
    runs = []
    for res in cfg["resolutions"]:
        for label, spec, info in configs(cfg, res, classes):
            log(f"R={res} {label}: t={spec.stages[0].blocks[0].expand:.2f}, {spec.num_blocks} blocks, MACs "
                f"x{info['ratio']:.3f} "
                f"of the k3 budget ({spec_cost(spec).macs / 1e6:.2f} M), RF {receptive_field(spec)} px")
            for seed in range(cfg["seeds"]):
                t1 = time.time()
                r = run_one(label, spec, res, seed, cfg["epochs"], mode)
                runs.append(r)
                log(f"   seed {seed}: acc {100 * r['test_acc']:.1f} %  ERF/FOV {r['erf_frac']:.2f}  "
                    f"({time.time() - t1:.0f} s)")
    summary = summarise(runs, cfg)
    meta = {"mode": mode, "config": cfg, "data": DATA, "seconds": time.time() - t0, "command": " ".join(sys.argv),
            "torch": torch.__version__, "provenance": record.as_dict()}
    write_json(out / "results.json", {"meta": meta, "runs": runs})
    write_json(out / "summary.json", {"meta": meta, **summary})
    figures(runs, summary, cfg, out)
    report(summary)
    log(f"done in {time.time() - t0:.0f} s -> {out}")


def report(summary: dict) -> None:
    for t in summary["table"]:
        log(f"R={t['resolution']:3d} {t['label']:8s} acc {100 * t['acc_mean']:.1f} +- {100 * t['acc_sd']:.1f} %  "
            f"ERF/FOV {t['erf_frac']:.2f}  RF/R {t['rf_frac']:.2f}  t={t['expand']:.2f}")
    log(f"best by resolution: {summary['best_by_resolution']}; ERF R^2 (within resolution) "
        f"{summary['erf_r2_within_resolution']:.2f}; {summary['rule_outcome']}")


if __name__ == "__main__":
    main()
