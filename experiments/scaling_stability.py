"""Experiment D (claim d): is the Jacobian product of compound-scaled nets better conditioned than depth-only?

The design frames exploding/vanishing gradients as a product of block Jacobians and claims that compound scaling
keeps that product better behaved than scaling depth alone. Theory (Hanin & Nica 2019) predicts that the
fluctuation Var[log ||J u||^2] of a product of random layers grows with sum_l 1/width_l ~ depth/width, so at
equal MACs depth-only should be worst *in plain nets*; with BN and residuals growth is polynomial and any
difference may be small (science.md §4).

Protocol. A small 1-D MBConv-SE base for MNIST-1D (`stability.comparison_base_spec`: stem + 4 shape-keeping
blocks, C = 16, length 40, so the whole trunk is one square map with an exact spectrum) is scaled to `factor` x
its MACs by depth-only, width-only, resolution-only (input length), EfficientNet compound (1.2, 1.1, 1.15) and
dWr (Dollar et al. 2021, alpha = 0.8), each within 3 % of the target as checked by `cost.spec_cost`
(`scaling_search.equal_cost_family`). Each net is built in architectural variants (`stability.VARIANTS`: BN +
residual, no residual, no BN, ...) for several seeds, and measured at init (BN statistics calibrated on 256
training samples, so eval-mode BN acts as in training) and after training (AdamW 3e-3, wd 0.05, label smoothing
0.1, batch 64, no augmentation, no gradient clipping; identical for all):

- the exact singular values of the trunk Jacobian (stem output -> last block) at one input, double precision, BN
  folded: sigma_max, sigma_min, kappa, std(log sigma), Pennington's spread, mean sigma^2;
- Var and mean of log ||J u||^2 over inputs x unit directions u (JVPs);
- per-block Hutchinson gains (mean sigma^2 of each block's Jacobian) and their product;
- the per-block gradient profile (||dL/dh|| and ||dL/dW||, cross-entropy on 64 training samples) and a signal
  propagation plot (per-block activation RMS);
- training: loss after the first epoch (62 steps: "loss after N steps"), final test loss and accuracy.

Confirm (science.md §4): in the BN + residual variant, compound shows >= 20 % smaller Var[log ||J u||^2] or
std(log sigma) than depth-only, same sign in >= 4/5 seeds, and the ordering predicts trainability. Partly: only in
the no-residual / no-BN variants. Refute: no consistent difference in BN + residual, or depth-only better.

    PYTHONPATH=src .venv/bin/python experiments/scaling_stability.py --quick     # factor 2, BN+res, 2 seeds,
                                                                                # 1 epoch: a few minutes
    PYTHONPATH=src .venv/bin/python experiments/scaling_stability.py             # factor 2, 3 variants, 5 seeds,
                                                                                # 3 epochs: about an hour
    PYTHONPATH=src .venv/bin/python experiments/scaling_stability.py --extended  # factors 2/4/8, 5 variants,
                                                                                # 5 seeds, 5 epochs: ~6-7 h

Results: experiments/results/scaling_stability[_quick|_extended]/ (results.json: every run; summary.json: means,
paired compound-vs-depth tests and the rule's outcome; fig_*.png). Trained checkpoints are cached under
results/cache/scaling_stability/ (gitignored): a rerun retrains nothing and only re-measures.
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
from common import RECIPE, mode_config, read_metrics  # experiments/ is on sys.path when a script runs

from mbconv import stability as S
from mbconv.cost import spec_cost
from mbconv.data import load_dataset
from mbconv.provenance import RunRecord
from mbconv.report import plt, savefig, write_json
from mbconv.scaling_search import STRATEGIES, equal_cost_family
from mbconv.train import Trainer, TrainingDivergedError

ROOT = Path(__file__).resolve().parent
CACHE = ROOT.parent / "results" / "cache" / "scaling_stability"
# Sized for the 2-core machine (the project's rule: the default mode about an hour, --quick a few minutes).
QUICK = dict(factors=(2.0,), variants=("bn_res",), seeds=2, epochs=1, inputs=2, probes=4, exact_limit=1500)
FULL = dict(factors=(2.0,), variants=("bn_res", "bn_nores", "nobn_res"), seeds=5, epochs=3, inputs=4, probes=8,
            exact_limit=1500)
# The design's whole grid (factors 2/4/8, every variant): ~6-7 h on one core, run it with --extended.
EXTENDED = dict(factors=(2.0, 4.0, 8.0), variants=tuple(S.VARIANTS), seeds=5, epochs=5, inputs=8, probes=16,
                exact_limit=2600)
METRICS = ("log_norm_var", "std_log_sigma", "log10_kappa", "spread", "log_norm_mean", "grad_ratio")


def log(msg: str) -> None:
    print(f"[D {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def data(length: int) -> tuple[Any, Any]:
    return (load_dataset("mnist1d", "train", resolution=length, augment=False),
            load_dataset("mnist1d", "test", resolution=length))


def measure(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, cfg: dict, seed: int) -> dict[str, Any]:
    """Trunk spectrum, log-norm statistics, gains, gradient profile and signal propagation of one net."""
    st = S.trunk_stats(model, xs[: cfg["inputs"]], exact_limit=cfg["exact_limit"], probes=cfg["probes"], seed=seed)
    s = st.pop("svals")
    qs = torch.linspace(0, 1, 65, dtype=torch.float64)
    st["log_sigma_quantiles"] = [round(float(v), 5) for v in torch.quantile(s.clamp_min(1e-300).log(), qs)]
    st["log10_kappa"] = math.log10(st["kappa"]) if math.isfinite(st["kappa"]) else math.inf
    gp = S.gradient_profile(model, xs[:64], ys[:64], mode="batchnorm", seed=seed)
    st["act_grad"] = [r["act_grad"] for r in gp]
    st["param_grad"] = [r["param_grad"] for r in gp]
    st["grad_ratio"] = gp[0]["act_grad"] / gp[-1]["act_grad"] if gp[-1]["act_grad"] > 0 else math.inf
    sp = S.signal_propagation(model, xs[:64], mode="batchnorm")
    st["act_rms"] = [r["rms"] for r in sp]
    st["branch_var"] = [r["branch_var"] for r in sp]
    return st


def train(model: torch.nn.Module, spec: Any, variant: str, seed: int, epochs: int, out: Path,
          train_ds: Any, test_ds: Any) -> dict[str, Any]:
    cfg = RECIPE.train_config(epochs, seed, out, warmup_epochs=min(RECIPE.warmup_epochs, epochs / 4), resume=True,
                              progress="none", save_best=False)
    try:
        Trainer(model, train_ds, test_ds, cfg, spec={"net": spec.to_dict(), "variant": variant}).fit()
    except TrainingDivergedError as e:
        return {"diverged": True, "error": str(e), "test_acc": 0.1, "test_loss": math.nan,
                "first_train_loss": math.nan, "first_test_loss": math.nan, "train_loss": math.nan}
    rows = read_metrics(out)
    first, last = rows[0], rows[-1]
    return {"diverged": False, "first_train_loss": first["train_loss"], "first_test_loss": first["test_loss"],
            "first_test_acc": first["test_acc"], "train_loss": last["train_loss"], "test_loss": last["test_loss"],
            "test_acc": last["test_acc"], "steps": last["step"], "epochs": len(rows)}


def run_one(spec: Any, strategy: str, variant: str, factor: float, seed: int, cfg: dict, mode: str) -> dict:
    train_ds, test_ds = data(spec.resolution)
    xs = torch.stack([train_ds[i][0] for i in range(256)])
    ys = torch.as_tensor([int(train_ds[i][1]) for i in range(256)])
    model = S.build_variant(spec, variant, seed)
    S.calibrate_batchnorm(model, xs)
    init = measure(model, xs, ys, cfg, seed)
    model = S.build_variant(spec, variant, seed)  # fresh: the trainer owns BN statistics from here on
    tr = train(model, spec, variant, seed, cfg["epochs"],
               CACHE / mode / f"x{factor:g}_{strategy}_{variant}_s{seed}_e{cfg['epochs']}", train_ds, test_ds)
    trained = None if tr["diverged"] else measure(model.eval(), xs, ys, cfg, seed)
    return {"strategy": strategy, "variant": variant, "factor": factor, "seed": seed, "init": init,
            "trained": trained, "train": tr}


def clean(obj: Any) -> Any:
    """Strict JSON: non-finite floats become the strings 'inf', '-inf', 'nan'; tuples become lists."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_compact(path: Path, obj: Any) -> None:
    """JSON with one run per line (small files for the repository)."""
    from mbconv.report import atomic_write_text

    if isinstance(obj, dict) and "runs" in obj:
        body = ",\n".join(json.dumps(r, separators=(",", ":")) for r in obj["runs"])
        meta = json.dumps(obj["meta"], separators=(",", ":"))
        atomic_write_text(path, f'{{"meta":{meta},\n"runs":[\n{body}\n]}}\n')
    else:
        atomic_write_text(path, json.dumps(obj, separators=(",", ":")))


def mean_sd(v: list[float]) -> tuple[float, float]:
    v = [x for x in v if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def summarise(runs: list[dict], specs: dict, cfg: dict) -> dict[str, Any]:
    from scipy.stats import wilcoxon

    table, tests = [], []
    for factor in cfg["factors"]:
        for variant in cfg["variants"]:
            by = {s: sorted([r for r in runs if r["factor"] == factor and r["variant"] == variant
                             and r["strategy"] == s], key=lambda r: r["seed"]) for s in ("base",) + STRATEGIES}
            for s, rs in by.items():
                row = {"factor": factor, "variant": variant, "strategy": s, "n": len(rs),
                       **{k: specs[(factor, s)][k] for k in ("macs_ratio", "blocks", "width", "length",
                                                              "sum_inv_width", "params")}}
                for when in ("init", "trained"):
                    for m in METRICS:
                        row[f"{when}_{m}"] = mean_sd([r[when][m] for r in rs if r[when] is not None])
                for m in ("first_train_loss", "first_test_loss", "test_loss", "test_acc"):
                    row[m] = mean_sd([r["train"][m] for r in rs])
                row["diverged"] = sum(r["train"]["diverged"] for r in rs)
                table.append(row)
            comp, dep = by["compound"], by["depth"]
            for when in ("init", "trained"):
                for m in ("log_norm_var", "std_log_sigma"):
                    pairs = [(c[when][m], d[when][m]) for c, d in zip(comp, dep)
                             if c[when] is not None and d[when] is not None]
                    if not pairs:
                        continue
                    rel = [1 - c / d for c, d in pairs if d > 0]
                    wins = sum(c < d for c, d in pairs)
                    try:
                        p = float(wilcoxon([c for c, _ in pairs], [d for _, d in pairs]).pvalue)
                    except ValueError:
                        p = math.nan
                    med = statistics.median(rel) if rel else math.nan
                    tests.append({"factor": factor, "variant": variant, "when": when, "metric": m,
                                  "compound_mean": statistics.mean(c for c, _ in pairs),
                                  "depth_mean": statistics.mean(d for _, d in pairs),
                                  "mean_rel_reduction": statistics.mean(rel) if rel else math.nan,
                                  "median_rel_reduction": med, "compound_smaller_in": wins, "n": len(pairs),
                                  "wilcoxon_p": p, "rule_met": bool(rel) and med >= 0.2 and wins >= 0.8 * len(pairs)})
            for m in ("first_train_loss", "test_loss"):
                tl = [(c["train"][m], d["train"][m]) for c, d in zip(comp, dep)]
                ok = [(c, d) for c, d in tl if math.isfinite(c) and math.isfinite(d)]
                tests.append({"factor": factor, "variant": variant, "when": "training", "metric": m,
                              "compound_mean": mean_sd([c for c, _ in ok])[0],
                              "depth_mean": mean_sd([d for _, d in ok])[0],
                              "compound_smaller_in": sum(c < d for c, d in ok), "n": len(tl),
                              "trains_better": len(ok) > 0 and sum(c < d for c, d in ok) >= 0.8 * len(tl)})
    # science.md §4: confirm = the conditioning rule (median per-seed reduction >= 20 % and compound smaller in
    # >= 4/5 seeds, for Var[log||Ju||^2] or std(log sigma), at init or trained) holds in BN + residual AND that
    # ordering predicts trainability (compound's loss after the first epoch lower in >= 4/5 seeds).
    verdict = {}
    for factor in cfg["factors"]:
        both = {}
        for v in cfg["variants"]:
            ts = [t for t in tests if t["factor"] == factor and t["variant"] == v]
            cond = any(t.get("rule_met") for t in ts)
            train_ok = any(t.get("trains_better") for t in ts if t["metric"] == "first_train_loss")
            both[v] = {"conditioning_rule": cond, "compound_trains_better": train_ok}
        ok = [v for v, b in both.items() if b["conditioning_rule"] and b["compound_trains_better"]]
        if "bn_res" in ok:
            outcome = "confirm"
        elif ok:
            outcome = f"partly confirm (only in {ok})"
        else:
            outcome = "refute (rule not met in any variant)"
        verdict[f"x{factor:g}"] = {"outcome": outcome, "by_variant": both}
    return {"table": table, "tests": tests, "rule_outcome": verdict}


def figures(runs: list[dict], cfg: dict, out: Path) -> list[Path]:
    p = plt()
    factor = cfg["factors"][0]
    variants = cfg["variants"]
    strategies = ("base",) + STRATEGIES
    colors = dict(zip(strategies, p.rcParams["axes.prop_cycle"].by_key()["color"]))
    paths = []
    fig, ax = p.subplots(2, len(variants), figsize=(4.2 * len(variants), 6.5), squeeze=False)
    for j, v in enumerate(variants):
        for i, when in enumerate(("init", "trained")):
            a = ax[i][j]
            for s in strategies:
                r = next((r for r in runs if r["factor"] == factor and r["variant"] == v and r["strategy"] == s
                          and r["seed"] == 0), None)
                if r is None or r[when] is None:
                    continue
                q = r[when]["log_sigma_quantiles"]
                a.plot([k / (len(q) - 1) for k in range(len(q))], q[::-1], label=s, color=colors[s])
            a.set_title(f"{v}, {when}", fontsize=9)
            a.set_xlabel("rank / n")
            a.set_ylabel("log sigma (trunk Jacobian)")
    ax[0][0].legend(fontsize=7)
    fig.suptitle(f"Singular values of the trunk Jacobian at x{factor:g} MACs (seed 0)")
    paths.append(savefig(fig, out / "fig_spectra.png"))

    fig, ax = p.subplots(3, len(variants), figsize=(4.2 * len(variants), 9), squeeze=False)
    for j, v in enumerate(variants):
        for i, (when, key, lab) in enumerate((("init", "act_grad", "||dL/dh|| at init"),
                                              ("trained", "act_grad", "||dL/dh|| trained"),
                                              ("init", "act_rms", "activation RMS at init"))):
            a = ax[i][j]
            lo, hi = math.inf, 0.0
            for s in strategies:
                rs = [r for r in runs if r["factor"] == factor and r["variant"] == v and r["strategy"] == s
                      and r[when] is not None]
                if not rs:
                    continue
                n = len(rs[0][when][key])
                mean = [statistics.mean(r[when][key][b] for r in rs) for b in range(n)]
                a.plot([(b + 1) / n for b in range(n)], mean, marker=".", label=s, color=colors[s])
                lo, hi = min(lo, min(mean)), max(hi, max(mean))
            if hi > 1.5 * lo > 0:  # log only when the range is wide (BN-normalised RMS is ~1 everywhere)
                a.set_yscale("log")
            a.set_title(f"{v}: {lab}", fontsize=9)
            a.set_xlabel("block / blocks")
    ax[0][0].legend(fontsize=7)
    fig.suptitle(f"Gradient profiles and signal propagation at x{factor:g} MACs (mean over seeds)")
    paths.append(savefig(fig, out / "fig_profiles.png"))

    fig, ax = p.subplots(1, 4, figsize=(17, 3.8))
    width = 0.8 / len(variants)
    for k, (when, m, lab) in enumerate((("init", "log_norm_var", "Var[log||Ju||^2] at init"),
                                        ("trained", "log_norm_var", "Var[log||Ju||^2] trained"),
                                        ("init", "std_log_sigma", "std(log sigma) at init"),
                                        ("train", "test_acc", "test accuracy"))):
        a = ax[k]
        for j, v in enumerate(variants):
            means, sds = [], []
            for s in strategies:
                vals = [(r["train"][m] if when == "train" else (r[when][m] if r[when] else None)) for r in runs
                        if r["factor"] == factor and r["variant"] == v and r["strategy"] == s]
                mu, sd = mean_sd([x for x in vals if x is not None])
                means.append(mu)
                sds.append(sd)
            a.bar([i + j * width for i in range(len(strategies))], means, width, yerr=sds, label=v, capsize=2)
        a.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(strategies))], strategies,
                     rotation=30, fontsize=8)
        a.set_title(lab, fontsize=9)
        if m == "log_norm_var":
            a.set_yscale("log")
    ax[0].legend(fontsize=7)
    fig.suptitle(f"Equal MACs (x{factor:g}): mean +- sd over seeds")
    paths.append(savefig(fig, out / "fig_metrics.png"))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="factor 2, BN+residual only, 2 seeds, 1 epoch (~4 min)")
    ap.add_argument("--extended", action="store_true", help="factors 2/4/8, every variant, 5 epochs (~6-7 h)")
    ap.add_argument("--seeds", type=int, help="override the number of seeds")
    ap.add_argument("--epochs", type=int, help="override the training epochs")
    ap.add_argument("--variants", help="comma-separated subset of the variants")
    ap.add_argument("--out", help="results folder (default experiments/results/scaling_stability[_quick|_extended])")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarise-only", action="store_true", help="recompute summary and figures from results.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mode, cfg = mode_config(ap, args, QUICK, FULL, EXTENDED)
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.variants:
        cfg["variants"] = tuple(v.strip() for v in args.variants.split(","))
        bad = [v for v in cfg["variants"] if v not in S.VARIANTS]
        if bad:
            ap.error(f"unknown variant(s) {bad}; known: {list(S.VARIANTS)}")
    out = Path(args.out) if args.out else ROOT / "results" / (
        "scaling_stability" + ("" if mode == "full" else f"_{mode}"))
    out.mkdir(parents=True, exist_ok=True)
    if args.summarise_only:
        saved = json.loads((out / "results.json").read_text())
        meta, runs = saved["meta"], saved["runs"]
        cfg = meta["config"]
        specs = {(float(k.split("_", 1)[0][1:]), k.split("_", 1)[1]): v for k, v in meta["specs"].items()}
        summary = summarise(runs, specs, cfg)
        write_compact(out / "results.json", clean(saved))
        write_json(out / "summary.json", clean({"meta": meta, **summary}))
        figures(runs, cfg, out)
        report(summary)
        return
    t0 = time.time()
    record = RunRecord(seeds=list(range(cfg["seeds"])), epochs=cfg["epochs"],
                       init="tf init after torch.manual_seed(seed) (stability.build_variant)")
    base = S.comparison_base_spec()
    specs: dict[tuple[float, str], dict] = {}
    nets = {}
    for factor in cfg["factors"]:
        fam = equal_cost_family(base, factor, tol=0.03)  # raises if any strategy misses 3 %
        for s, spec in [("base", base)] + [(k, v[0]) for k, v in fam.items()]:
            c = spec_cost(spec)
            nets[(factor, s)] = spec
            specs[(factor, s)] = {"macs": c.macs, "macs_ratio": c.macs / spec_cost(base).macs, "params": c.params,
                                  "blocks": spec.num_blocks, "width": spec.stages[0].out_chs,
                                  "length": spec.resolution, "sum_inv_width": S.sum_inverse_width(spec),
                                  "spec": spec.to_dict()}
            log(f"x{factor:g} {s:10s}: {spec.num_blocks:2d} blocks, C={spec.stages[0].out_chs}, "
                f"L={spec.resolution}, MACs x{specs[(factor, s)]['macs_ratio']:.3f}")
    runs = []
    for factor in cfg["factors"]:
        for variant in cfg["variants"]:
            for s in ("base",) + STRATEGIES:
                for seed in range(cfg["seeds"]):
                    t1 = time.time()
                    r = run_one(nets[(factor, s)], s, variant, factor, seed, cfg, mode)
                    runs.append(r)
                    tr = r["trained"] or {}
                    log(f"x{factor:g} {variant:10s} {s:10s} seed {seed}: init Var[log|Ju|^2] "
                        f"{r['init']['log_norm_var']:.4f} std log s {r['init']['std_log_sigma']:.3f} | trained "
                        f"{tr.get('log_norm_var', math.nan):.4f} {tr.get('std_log_sigma', math.nan):.3f} | "
                        f"loss1 {r['train']['first_train_loss']:.3f} acc {100 * r['train']['test_acc']:.1f} % "
                        f"({time.time() - t1:.0f} s)")
    meta = {"mode": mode, "config": cfg, "seconds": time.time() - t0, "command": " ".join(sys.argv),
            "torch": torch.__version__, "specs": {f"x{f:g}_{s}": v for (f, s), v in specs.items()},
            "provenance": record.as_dict()}
    write_compact(out / "results.json", clean({"meta": meta, "runs": runs}))
    summary = summarise(runs, specs, cfg)
    write_json(out / "summary.json", clean({"meta": meta, **summary}))
    figures(runs, cfg, out)
    log(f"done in {time.time() - t0:.0f} s -> {out}")
    report(summary)


def report(summary: dict) -> None:
    for t in summary["tests"]:
        if "mean_rel_reduction" in t:
            log(f"x{t['factor']:g} {t['variant']:10s} {t['when']:8s} {t['metric']:14s}: compound "
                f"{t['compound_mean']:.4g} vs depth {t['depth_mean']:.4g}, median reduction "
                f"{100 * t['median_rel_reduction']:.0f} %, smaller in {t['compound_smaller_in']}/{t['n']} seeds, "
                f"p {t['wilcoxon_p']:.3g}")
        else:
            log(f"x{t['factor']:g} {t['variant']:10s} {t['metric']}: compound {t['compound_mean']:.4g} vs depth "
                f"{t['depth_mean']:.4g}, compound lower in {t['compound_smaller_in']}/{t['n']} seeds")
    log(f"rule outcome: {summary['rule_outcome']}")


if __name__ == "__main__":
    main()
