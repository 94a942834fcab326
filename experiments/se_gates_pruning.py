"""Experiment C, claim (c): SE is cheap and helps; near-zero gates give prunable structured sparsity.

    PYTHONPATH=src .venv/bin/python experiments/se_gates_pruning.py --quick          # ~7 min on a busy 2-core box
    PYTHONPATH=src .venv/bin/python experiments/se_gates_pruning.py                  # full (estimate in the docstring)
    PYTHONPATH=src .venv/bin/python experiments/se_gates_pruning.py --bench          # tour-model pruning benchmark
                                                          (--bench-jobs N: do N of its 10 jobs now; reruns resume)

Per dataset (MNIST-1D: the 4-block 1-D MBConv-SE net of benchmarks/accuracy.py; MNIST 5k: a 5-block 2-D MBConv-SE
net at 28 px), with the project's recipe (AdamW 3e-3, wd 0.05, warm-up 1 epoch, cosine, label smoothing 0.1):

1. SE vs no-SE, paired by seed: exact params/MACs overhead (cost.spec_cost) and final-epoch test accuracy
   (mean difference, 95 % t-CI, paired t-test, Wilcoxon signed-rank).
2. Gate statistics of every SE model on the test split: fraction of channels consistently suppressed
   (p99 < 0.05) and saturated (p1 > 0.95), histograms by depth.
3. Pruning (same fraction of expanded channels in every block, so every criterion removes the same MACs):
   accuracy vs MACs removed for mean gate, gate x activation, BN gamma, L1 of project columns and random
   (several draws), without fine-tuning and after a 1-epoch fine-tune; plus pruning exactly the consistently
   suppressed channels. Channel scores come from training inputs; accuracy from the test split.
4. Control: the same nets trained with the gate sparsity regulariser lam * sum_c mean_batch(g_c)
   (`GatePenalty(reduction='sum')`, science.md's form) for several lam; their gate statistics and pruning curves.

`--bench`: the tour model (EfficientNet-B0 spec, width 0.5, 32 px, 30 epochs on MNIST 5k; trained once and cached)
pruned to >= 30 % fewer MACs by each criterion at equal MACs, before and after a short fine-tune. `--bench-seed S`
trains the tour model and fine-tunes with seed S (random draws S*10 ..) into bench_s{S}/ (issue 17's pre-registered
rerun: S = 1); its pruned model is the checkpoint the validation split chose (best/), and the fine-tune's reported
accuracy is its last epoch (the epoch the validation split would choose is recorded beside it).

Everything else evaluates the *last* checkpoint of each run (no selection on the test split). The first bench (seed
0, in bench/) pruned the tour model's best/ checkpoint, which that trainer chose on the *test* split.

Trained checkpoints are cached under results/se_gates_pruning/ (gitignored; reruns skip training). JSON and PNG
results go to experiments/results/se_gates_pruning/{quick,full,bench}/.

Cost on the shared 2-core machine while busy (load 4-6): --quick took 420 s (265 s training, the rest pruning;
205 s on a rerun with cached checkpoints). Per epoch: MNIST-1D SE net 7-8 s, no-SE 4 s; 2-D SE net 7 s, no-SE
5 s (an idle core is ~2x faster). Full mode = 50 training runs' worth of epochs (~50 min busy) + pruning curves
of 6 models per dataset with 6 ratios x (4 criteria + 10 random draws) x (plain, compensated) and 10 one-epoch
fine-tunes each (~40 min busy): about 90 min busy, roughly 50 min on an idle core. Not run yet.
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
from common import RECIPE, paired, read_metrics  # experiments/ is on sys.path when a script runs

from mbconv.cost import spec_cost
from mbconv.data import load_dataset
from mbconv.gates import (
    GatePenalty,
    fig_channel_stats,
    fig_histograms_by_depth,
    gate_stats,
    record_gates,
    summarize,
)
from mbconv.prune import (
    PrunePlan,
    apply_plan,
    channel_means,
    channel_scores,
    finetune,
    make_plan,
    prunable_blocks,
    ratio_for_macs,
)
from mbconv.report import plt as _plt
from mbconv.report import savefig, write_json
from mbconv.spec import NetSpec, parse_arch, spec_replace_blocks
from mbconv.train import Trainer, evaluate
from mbconv.workflow import build_for_data, data_meta, describe_selection, load_run, train_run

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "results" / "se_gates_pruning"
OUT = ROOT / "experiments" / "results" / "se_gates_pruning"

# the MNIST-1D net of benchmarks/accuracy.py (copied so this script runs on its own)
MNIST1D_ARCH = "ir_r1_k5_s1_e4_c32_se0.25;ir_r1_k5_s2_e4_c48_se0.25;ir_r1_k5_s1_e4_c48_se0.25;ir_r1_k5_s2_e4_c64_se0.25"
MNIST2D_ARCH = "ir_r1_k3_s1_e4_c16_se0.25;ir_r2_k3_s2_e4_c24_se0.25;ir_r2_k3_s2_e4_c40_se0.25"
CRITERIA = ("gate", "gate_act", "bn", "l1", "random")

FULL = dict(seeds=5, epochs={"mnist1d": 20, "mnist5k": 15}, ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6), draws=10,
            ft_ratios=(0.3, 0.5), ft_epochs=1, prune_seeds=3, lams=(1e-4, 1e-3, 1e-2), calib=1000)
QUICK = dict(seeds=2, epochs={"mnist1d": 5, "mnist5k": 3}, ratios=(0.2, 0.4, 0.6), draws=3, ft_ratios=(0.4,),
             ft_epochs=1, prune_seeds=1, lams=(1e-2,), calib=500)


def spec_for(data: str, se: bool = True) -> NetSpec:
    if data == "mnist1d":
        spec = NetSpec(stages=parse_arch(MNIST1D_ARCH), name="mbconv1d_se4", dims=1, in_chans=1, num_classes=10,
                       stem_chs=32, stem_stride=1, head_chs=256, resolution=40, drop_rate=0.1)
    else:
        spec = NetSpec(stages=parse_arch(MNIST2D_ARCH), name="mbconv2d_se5", dims=2, in_chans=1, num_classes=10,
                       stem_chs=16, stem_stride=2, head_chs=128, resolution=28, drop_rate=0.1)
    if not se:
        spec = spec_replace_blocks(spec, lambda si, bi, b: dataclasses.replace(b, se_ratio=0.0))
        spec = dataclasses.replace(spec, name=spec.name.replace("_se", "_nose"))
    return spec


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- training (cached) ---------------------------------------------------------------------------------------
def train(cache: Path, data: str, seed: int, epochs: int, se: bool = True, lam: float = 0.0) -> Path:
    """Train (or resume/skip) one run; returns its directory."""
    name = f"{data}_{'se' if se else 'nose'}_s{seed}" + (f"_lam{lam:g}" if lam else "")
    out = cache / name
    cfg = RECIPE.run_config(model=spec_for(data, se), data=data, out=str(out), epochs=epochs, seed=seed, resume=True,
                            progress="none")
    t0 = time.time()
    if not lam:
        train_run(cfg)
    else:  # workflow.train_run with the gate penalty attached to the trainer's loss
        tr_ds = load_dataset(data, "train", augment=True, seed=seed)
        te_ds = load_dataset(data, "test")
        model = build_for_data(cfg.model, tr_ds.info, tr_ds.info.native_size[0])
        tcfg = RECIPE.train_config(epochs, seed, out, resume=True, progress="none")
        meta = {"net": model.spec.to_dict(), "data": data_meta(tr_ds, data, tr_ds.info.native_size[0]),
                "gate_penalty": {"lam": lam, "reduction": "sum"}}
        trainer = Trainer(model, tr_ds, te_ds, tcfg, spec=meta, val_ds=load_dataset(data, "val"))
        GatePenalty(trainer.model, lam, reduction="sum").attach(trainer)
        trainer.fit()
    if time.time() - t0 > 5:
        log(f"trained {name} ({epochs} epochs) in {time.time() - t0:.0f} s")
    return out


def final_acc(run: Path) -> float:
    return float(read_metrics(run)[-1]["test_acc"])


# -- pruning -------------------------------------------------------------------------------------------------
def prune_curves(run: Path, data: str, cfg: dict, label: str, criteria: tuple[str, ...] = CRITERIA,
                 ft: bool = True) -> dict[str, Any]:
    """Accuracy vs MACs removed for each criterion (no fine-tune; and 1-epoch fine-tune at cfg['ft_ratios'])."""
    model, meta, _ = load_run(run / "last")
    test = load_dataset(data, "test")
    train_plain = load_dataset(data, "train")
    train_aug = load_dataset(data, "train", augment=True, seed=0)
    calib = torch.utils.data.Subset(train_plain, range(cfg["calib"]))
    cal = record_gates(model, calib)
    means = channel_means(model, calib)
    base = evaluate(model, test)["acc"]
    base_cost = spec_cost(model.spec)
    rows: list[dict[str, Any]] = []

    def measure(pruned: torch.nn.Module, crit: str, ratio: float, draw: int, finetuned: bool) -> None:
        c = spec_cost(pruned.spec)
        rows.append({"model": label, "criterion": crit, "ratio": ratio, "draw": draw, "finetuned": finetuned,
                     "macs_removed": 1 - c.macs / base_cost.macs, "params_removed": 1 - c.params / base_cost.params,
                     "acc": evaluate(pruned, test)["acc"]})

    for crit in criteria:
        draws = range(cfg["draws"]) if crit == "random" else range(1)
        for draw in draws:
            scores = channel_scores(model, crit, recording=cal, seed=draw)
            for r in cfg["ratios"]:
                plan = make_plan(scores, r, criterion=crit)
                measure(apply_plan(model, plan), crit, r, draw, False)
                measure(apply_plan(model, plan, means=means), f"{crit}+mc", r, draw, False)  # mean-compensated
            if ft and draw == 0:
                for r in cfg["ft_ratios"]:
                    pruned = apply_plan(model, make_plan(scores, r, criterion=crit))
                    finetune(pruned, train_aug, None, epochs=cfg["ft_epochs"], lr=1e-3, seed=0)
                    measure(pruned, crit, r, 0, True)
    # exactly the consistently suppressed channels (p99 of the gate < 0.05 on training inputs)
    st = {s.block: s for s in gate_stats(cal)}
    keep, mids = {}, {}
    for b in prunable_blocks(model):
        s = st.get(b.name)
        if b.se_on_mid and s is not None and 0 < s.suppressed.numel():
            k = torch.nonzero(s.p99 >= s.low).flatten()
            keep[b.name], mids[b.name] = (k if len(k) else torch.tensor([int(s.p99.argmax())])), b.mid
    n_sup = sum(mids[n] - len(k) for n, k in keep.items())
    if keep:
        plan = PrunePlan(keep, mids, "suppressed")
        frac = n_sup / sum(b.mid for b in prunable_blocks(model))
        measure(apply_plan(model, plan), "suppressed", frac, 0, False)
        measure(apply_plan(model, plan, means=means), "suppressed+mc", frac, 0, False)
    return {"model": label, "base_acc": base, "suppressed_channels": n_sup, "rows": rows}


def summarize_curves(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean accuracy drop (pt) per (criterion, ratio, finetuned) over models and random draws."""
    agg: dict[tuple, list[float]] = {}
    macs: dict[tuple, float] = {}
    for c in curves:
        for r in c["rows"]:
            key = (r["criterion"], r["ratio"], r["finetuned"])
            agg.setdefault(key, []).append(100 * (r["acc"] - c["base_acc"]))
            macs[key] = r["macs_removed"]
    out = []
    for (crit, ratio, fted), v in sorted(agg.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        out.append({"criterion": crit, "ratio": ratio, "finetuned": fted, "macs_removed": macs[(crit, ratio, fted)],
                    "drop_mean_pt": statistics.mean(v), "drop_sd_pt": statistics.stdev(v) if len(v) > 1 else 0.0,
                    "n": len(v)})
    return out


# -- figures -------------------------------------------------------------------------------------------------
def fig_pruning(summary: list[dict[str, Any]], path: Path, title: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {c: f"C{i}" for i, c in enumerate(CRITERIA)}
    for ax, fted in zip(axes, (False, True)):
        for crit in [c + suffix for suffix in ("", "+mc") for c in (*CRITERIA, "suppressed")]:
            pts = sorted((r["macs_removed"], r["drop_mean_pt"], r["drop_sd_pt"]) for r in summary
                         if r["criterion"] == crit and r["finetuned"] == fted)
            if not pts:
                continue
            x = [100 * p[0] for p in pts]
            base, mc = crit.removesuffix("+mc"), crit.endswith("+mc")
            if base == "suppressed":
                ax.scatter(x, [p[1] for p in pts], marker="*" if not mc else "P", s=150, color="k", zorder=5,
                           label="p99(g)<0.05 only" + (" +mc" if mc else ""))
            else:
                ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=crit,
                            color=colours[base], ls="--" if mc else "-", alpha=0.6 if mc else 1.0)
        ax.axhline(0, color="gray", ls=":")
        ax.set_xlabel("MACs removed (%)")
        ax.set_ylabel("accuracy change (pt)")
        ax.set_title("after a 1-epoch fine-tune" if fted else "no fine-tuning (dashed: +mean compensation)")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return savefig(fig, path)


def fig_regulariser(gate_values: dict[str, torch.Tensor], summaries: dict[str, list[dict]], path: Path,
                    title: str) -> Path:
    plt = _plt()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    for name, g in gate_values.items():
        h = torch.histc(g.clamp(0, 1), bins=40, min=0, max=1)
        a0.plot(((torch.arange(40) + 0.5) / 40).numpy(), (h / h.sum()).numpy(), label=name)
    a0.set_yscale("log")
    a0.set_xlabel("gate value")
    a0.set_ylabel("fraction of (input, channel) values")
    a0.legend(fontsize=8)
    a0.set_title("gate distribution (test split)")
    for name, summ in summaries.items():
        for crit, style in (("gate", "-"), ("bn", "--")):
            pts = sorted((r["macs_removed"], r["drop_mean_pt"]) for r in summ
                         if r["criterion"] == crit and not r["finetuned"])
            if pts:
                a1.plot([100 * p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{name} {crit}")
    a1.set_xlabel("MACs removed (%)")
    a1.set_ylabel("accuracy change, no fine-tune (pt)")
    a1.legend(fontsize=7)
    a1.set_title("pruning by gate (solid) and BN gamma (dashed)")
    fig.suptitle(title)
    return savefig(fig, path)


# -- one dataset ---------------------------------------------------------------------------------------------
def run_dataset(data: str, cfg: dict, cache: Path, out: Path) -> dict[str, Any]:
    ep = cfg["epochs"][data]
    res: dict[str, Any] = {"data": data, "epochs": ep}
    se_spec, nose_spec = spec_for(data, True), spec_for(data, False)
    cs, cn = spec_cost(se_spec), spec_cost(nose_spec)
    res["cost"] = {"se": {"params": cs.params, "macs": cs.macs}, "nose": {"params": cn.params, "macs": cn.macs},
                   "se_params_overhead": cs.params / cn.params - 1, "se_macs_overhead": cs.macs / cn.macs - 1}
    # 1. SE vs no-SE, paired by seed
    seeds = list(range(cfg["seeds"]))
    se_runs = [train(cache, data, s, ep, True) for s in seeds]
    nose_runs = [train(cache, data, s, ep, False) for s in seeds]
    acc_se, acc_nose = [final_acc(r) for r in se_runs], [final_acc(r) for r in nose_runs]
    res["se_vs_nose"] = {"acc_se": acc_se, "acc_nose": acc_nose, "diff": paired(acc_se, acc_nose)}
    ov = res["cost"]
    log(f"{data}: SE {statistics.mean(acc_se):.4f} vs no-SE {statistics.mean(acc_nose):.4f} "
        f"(+{100 * ov['se_macs_overhead']:.2f} % MACs, +{100 * ov['se_params_overhead']:.1f} % params)")
    # 2. gate statistics on the test split
    test = load_dataset(data, "test")
    gates = []
    for s, r in zip(seeds, se_runs):
        model, _, _ = load_run(r / "last")
        rec = record_gates(model, test)
        stats = gate_stats(rec)
        gates.append({"seed": s, "summary": summarize(stats, rec), "blocks": [x.row() for x in stats]})
        if s == 0:
            fig_histograms_by_depth(rec, out / f"fig_gates_depth_{data}.png", f"{data}: SE gate values by depth")
            fig_channel_stats(stats, out / f"fig_gates_channels_{data}.png", f"{data}: SE gates per channel")
            gate_values = {"lam 0": torch.cat([g.flatten() for g in rec.gates])}
    res["gates"] = gates
    # 3. pruning curves (SE models)
    curves = []
    for s in seeds[: cfg["prune_seeds"]]:
        t0 = time.time()
        curves.append(prune_curves(se_runs[s], data, cfg, f"se_s{s}"))
        log(f"{data}: pruning curves of se_s{s} in {time.time() - t0:.0f} s")
    res["pruning"] = curves
    res["pruning_summary"] = summarize_curves(curves)
    fig_pruning(res["pruning_summary"], out / f"fig_pruning_{data}.png",
                f"{data}: accuracy change vs MACs removed (mean over {len(curves)} seed(s); random: over draws)")
    # 4. regulariser control
    reg: dict[str, Any] = {}
    summaries = {"lam 0": res["pruning_summary"]}
    for lam in cfg["lams"]:
        r = train(cache, data, 0, ep, True, lam)
        model, _, _ = load_run(r / "last")
        rec = record_gates(model, test)
        stats = gate_stats(rec)
        cur = prune_curves(r, data, cfg, f"se_s0_lam{lam:g}", criteria=("gate", "gate_act", "bn", "random"))
        summ = summarize_curves([cur])
        reg[f"{lam:g}"] = {"acc": final_acc(r), "gates": summarize(stats, rec), "pruning": cur,
                           "pruning_summary": summ}
        summaries[f"lam {lam:g}"] = summ
        gate_values[f"lam {lam:g}"] = torch.cat([g.flatten() for g in rec.gates])
        sup = reg[f"{lam:g}"]["gates"]["frac_suppressed"]
        log(f"{data}: lam {lam:g}: acc {final_acc(r):.4f}, suppressed {100 * sup:.1f} % of channels")
    res["regularised"] = reg
    fig_regulariser(gate_values, summaries, out / f"fig_regulariser_{data}.png",
                    f"{data}: gate sparsity regulariser lam * sum_c mean(g_c)")
    return res


def fig_se_vs_nose(results: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, (data, r) in zip(axes[0], results.items()):
        a, b = r["se_vs_nose"]["acc_se"], r["se_vs_nose"]["acc_nose"]
        for i, (x, y) in enumerate(zip(b, a)):
            ax.plot([0, 1], [100 * x, 100 * y], "o-", color="C0", alpha=0.7, label="seed pairs" if i == 0 else None)
        ax.set_xticks([0, 1], ["no SE", "SE"])
        ax.set_ylabel("final test accuracy (%)")
        d = r["se_vs_nose"]["diff"]
        m, h = d["mean"], d["ci95"]
        ax.set_title(f"{data}: SE - noSE = {100 * m:+.2f} pt"
                     + ("" if math.isnan(h) else f" [{100 * (m - h):+.2f}, {100 * (m + h):+.2f}]"))
    return savefig(fig, path)


# -- benchmark on the tour model -----------------------------------------------------------------------------
def bench(out: Path, epochs_ft: int = 3, target: float = 0.30, draws: int = 3,
          max_jobs: int | None = None, seed: int = 0) -> dict[str, Any]:
    from mbconv.chapters.train import TOUR_MODEL
    from mbconv.provenance import RunRecord

    record = RunRecord(seeds={"train": seed, "finetune": seed, "random_draws": [10 * seed + i for i in range(draws)]},
                       epochs={"train": 30, "finetune": epochs_ft},
                       init="tf init, zero classifier; weights after torch.manual_seed(derive_seed(seed, 'init'))")
    run = CACHE / f"tour_b0w05_s{seed}"
    cfg = RECIPE.run_config(**TOUR_MODEL, out=str(run), epochs=30, resume=True, progress="plain", seed=seed)
    t0 = time.time()
    train_run(cfg)  # cached: returns at once when the 30 epochs are done
    log(f"tour model ready ({time.time() - t0:.0f} s)")
    model, meta, ck = load_run(run)  # best/ when the validation split chose it (workflow.find_checkpoint)
    d = meta["data"]
    test = load_dataset(d["name"], "test", resolution=d["resolution"])
    val = load_dataset(d["name"], "val", resolution=d["resolution"])
    train_aug = load_dataset(d["name"], "train", resolution=d["resolution"], augment=True, seed=seed)
    calib = torch.utils.data.Subset(load_dataset(d["name"], "train", resolution=d["resolution"]), range(1000))
    cal = record_gates(model, calib)
    means = channel_means(model, calib)
    base_best = evaluate(model, test)["acc"]
    base_last = evaluate(load_run(run / "last")[0], test)["acc"]
    base_cost = spec_cost(model.spec)
    res: dict[str, Any] = {"checkpoint": str(ck), "base_acc_best": base_best, "base_acc_last": base_last,
                           "base_params": base_cost.params, "base_macs": base_cost.macs, "target_macs_removed": target,
                           "finetune_epochs": epochs_ft, "finetune_lr": 1e-3, "seed": seed,
                           "selection": describe_selection(ck), "rows": []}
    rec = record_gates(model, test)  # gate statistics of the tour model on the test split
    st = gate_stats(rec)
    res["gates"] = {"summary": summarize(st, rec), "blocks": [x.row() for x in st]}
    fig_histograms_by_depth(rec, out / "fig_gates_depth_tour.png", "tour model: SE gate values by depth")
    jobs = [(c, 0, "per_block") for c in ("gate", "gate_act", "bn", "l1")]
    jobs += [("random", 10 * seed + s, "per_block") for s in range(draws)]
    jobs += [("gate", 0, "global"), ("bn", 0, "global")]
    jobs += [("none", 0, "per_block")]  # control: the unpruned model fine-tuned the same way
    prev = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {}
    if all(prev.get(k) == res[k] for k in ("checkpoint", "target_macs_removed", "finetune_epochs", "base_macs")):
        res["rows"] = prev.get("rows", [])  # resumable: finished jobs are kept, not redone
        res["chunks"] = prev.get("chunks", [])  # the commands that ran the earlier jobs
    done = {(r["criterion"], r["draw"], r["scope"]) for r in res["rows"]}
    todo = [j for j in jobs if j not in done][:max_jobs]
    res.setdefault("chunks", []).append({"command": record.as_dict()["command"], "jobs": [list(j) for j in todo]})
    for crit, draw, scope in todo:
        t1 = time.time()
        scores = channel_scores(model, "bn" if crit == "none" else crit, recording=cal, seed=draw)
        ratio = 0.0 if crit == "none" else ratio_for_macs(model, scores, target, scope=scope, criterion=crit)
        plan = make_plan(scores, ratio, scope=scope, criterion=crit)
        acc_mc = evaluate(apply_plan(model, plan, means=means), test)["acc"]
        pruned = apply_plan(model, plan)
        c = spec_cost(pruned.spec)
        acc0 = evaluate(pruned, test)["acc"]
        row = finetune(pruned, train_aug, test, epochs=epochs_ft, lr=1e-3, seed=seed, val_ds=val)
        r = {"criterion": crit, "draw": draw, "scope": scope, "ratio": ratio, "params": c.params, "macs": c.macs,
             "macs_removed": 1 - c.macs / base_cost.macs, "params_removed": 1 - c.params / base_cost.params,
             "acc_pruned": acc0, "acc_pruned_compensated": acc_mc, "acc_finetuned": row["test_acc"],
             "val_acc_finetuned": row["val_acc"], "acc_finetuned_at_best_val_epoch": row["test_acc_at_best"],
             "seconds": time.time() - t1}
        res["rows"].append(r)
        log(f"bench {crit}/{scope}/{draw}: ratio {ratio:.3f}, MACs -{100 * r['macs_removed']:.1f} %, acc "
            f"{100 * acc0:.1f} -> {100 * r['acc_finetuned']:.2f} % ({r['seconds']:.0f} s)")
        write_json(out / "bench.json", {**res, "provenance": record.as_dict()})
    if len(res["rows"]) < len(jobs):
        log(f"bench: {len(res['rows'])}/{len(jobs)} jobs done; rerun --bench to continue")
        return res
    plt = _plt()
    fig, (ax, az) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{r['criterion'] if r['criterion'] != 'none' else 'unpruned'}"
              f"{'' if r['scope'] == 'per_block' else ' (global)'}"
              + (f" #{r['draw']}" if r["criterion"] == "random" else "") for r in res["rows"]]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [100 * r["acc_pruned"] for r in res["rows"]], 0.4, label="pruned, no fine-tune")
    ax.bar([i + 0.2 for i in x], [100 * r["acc_finetuned"] for r in res["rows"]], 0.4,
           label=f"after {epochs_ft}-epoch fine-tune")
    ax.axhline(100 * base_best, color="k", ls=":", label="unpruned (best ckpt)")
    ax.axhline(100 * base_best - 0.5, color="r", ls=":", label="target: -0.5 pt")
    ax.set_xticks(list(x), labels, rotation=30, fontsize=8)
    ax.set_ylim(max(0, min(100 * r["acc_pruned"] for r in res["rows"]) - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"tour model, ~{100 * target:.0f} % fewer MACs by each criterion (+ unpruned control)")
    ax.legend(fontsize=8)
    az.barh(list(x), [100 * r["acc_finetuned"] for r in res["rows"]], color="C1")
    az.axvline(100 * base_best, color="k", ls=":")
    az.axvline(100 * base_last, color="gray", ls="--", label="unpruned (last ckpt)")
    az.axvline(100 * base_best - 0.5, color="r", ls=":")
    az.set_yticks(list(x), labels, fontsize=8)
    az.set_xlim(96.5, 98.6)
    az.set_xlabel(f"test accuracy after the {epochs_ft}-epoch fine-tune (%)")
    az.set_title("zoom (1 SE of a 1000-sample accuracy ~ 0.44 pt)")
    az.legend(fontsize=8)
    savefig(fig, out / "fig_bench.png")
    write_json(out / "bench.json", {**res, "provenance": record.as_dict()})
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, few epochs: a smoke run of every part")
    ap.add_argument("--only", choices=("mnist1d", "mnist5k"))
    ap.add_argument("--bench", action="store_true", help="only the tour-model pruning benchmark")
    ap.add_argument("--bench-epochs", type=int, default=3)
    ap.add_argument("--bench-jobs", type=int, default=None, help="at most this many bench jobs now (resumable)")
    ap.add_argument("--bench-seed", type=int, default=0, help="seed of the tour model and fine-tunes (0: bench/)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared CPUs: one thread per process is fastest here
    t0 = time.time()
    if args.bench:
        out = OUT / ("bench" if args.bench_seed == 0 else f"bench_s{args.bench_seed}")
        out.mkdir(parents=True, exist_ok=True)
        bench(out, epochs_ft=args.bench_epochs, max_jobs=args.bench_jobs, seed=args.bench_seed)
        log(f"bench done in {time.time() - t0:.0f} s -> {out}")
        return 0
    mode = "quick" if args.quick else "full"
    cfg = QUICK if args.quick else FULL
    from mbconv.provenance import RunRecord

    record = RunRecord(seeds=list(range(cfg["seeds"])), epochs=cfg["epochs"],
                       init="tf init, zero classifier; weights after torch.manual_seed(derive_seed(seed, 'init'))")
    cache, out = CACHE / mode, OUT / mode
    out.mkdir(parents=True, exist_ok=True)
    results = {}

    def merged() -> dict:
        # --only runs one dataset (two can run side by side on two cores): keep the other dataset's results,
        # re-read at write time because the other process may have finished meanwhile
        if args.only and (out / "results.json").exists():
            old = json.loads((out / "results.json").read_text()).get("results", {})
            return {**{k: v for k, v in old.items() if k not in results}, **results}
        return results

    for data in ("mnist1d", "mnist5k"):
        if args.only and data != args.only:
            continue
        results[data] = run_dataset(data, cfg, cache, out)
        write_json(out / "results.json", {"mode": mode, "config": {k: v for k, v in cfg.items()},
                                          "results": merged(), "seconds": time.time() - t0})
    results = merged()
    fig_se_vs_nose(results, out / "fig_se_vs_nose.png")
    write_json(out / "results.json", {"mode": mode, "config": dict(cfg), "results": results,
                                      "seconds": time.time() - t0, "command": " ".join(sys.argv),
                                      "provenance": record.as_dict()})
    log(f"{mode} done in {time.time() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
