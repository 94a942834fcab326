"""Experiment G.1: MNIST-1D with a 1-D MBConv-SE net vs a plain 1-D CNN, the shuffled control, and a Pareto front.

    PYTHONPATH=src .venv/bin/python experiments/mnist1d_benchmark.py [--quick] [--seeds 0-4] [--parts main,pareto]

Claim (issue 8, item 2): the 4-block 1-D MBConv-SE net (`mbconv1d_se4`) reaches >= 99.3 % mean test accuracy on
MNIST-1D (default split, >= 5 seeds, mean +- 95 % t-CI) with fewer parameters and MACs than a plain 1-D CNN
(`cnn1d_plain`) trained in the same run with the same recipe to the same accuracy. The plain CNN at half width
(`cnn1d_plain_w0.5`: fewer MACs and params than the MBConv) runs with the same seeds, so "the same accuracy at
fewer MACs" can be checked in both directions. Control: the same MBConv net
on spatially shuffled signals (one fixed permutation) must drop far below (MNIST-1D paper: CNN 94 % -> 56 %).
Pareto front: accuracy vs MACs of the compound-scaled 1-D family `efficientnet1d_b0` at phi = -2..2, next to plain
CNNs of three widths.

Recipe (all runs): AdamW lr 3e-3, wd 0.05, warm-up 1 epoch + cosine, label smoothing 0.1, batch 64, the mnist1d
augmentation of mbconv.data (circular shift <= 3 + noise 0.05). Reported accuracy = the LAST epoch's test accuracy
(no selection on the test split); the validation split (399 signals carved from the 4000 training signals, so 3601
train) is evaluated every epoch and is what any choice reads. Runs are cached under
results/experiments/mnist1d_benchmark/ (git-ignored); reruns only aggregate. ``--label NAME`` keeps a separate set
of runs and output files (the pre-registered rerun of issue 17: ``--seeds 5-9 --parts main --label rerun17``). Full
mode: main 20 epochs x seeds 0-4; Pareto 10 epochs x seed 0 (the e6 family members cost up to ~25 s/epoch on a
shared core). --quick: 5 epochs, seed 0, both parts. The machine is shared: run the full mode in chunks (--parts
main --seeds 0-1, then --seeds 2-4, then --parts pareto); every chunk re-aggregates all cached runs of the mode.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# experiments/ is on sys.path when a script runs
from common import markdown_table, mean_ci_text, paired_by_key, seed_list, t_ci  # noqa: E402

from mbconv import zoo_nd  # noqa: E402
from mbconv.data_nd import load_signal_splits  # noqa: E402
from mbconv.provenance import RunRecord  # noqa: E402
from mbconv.report import plt, savefig, write_json  # noqa: E402
from mbconv.workflow import fit_spec  # noqa: E402

CNN_WIDTHS = (0.25, 0.5, 1.0)
TARGET = 0.993
# The weight-init scheme of every run this script trains (workflow.build_for_data with the run's seed).
INIT = "tf init; weights drawn after torch.manual_seed(derive_seed(seed, 'init')) (derived stream)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 epochs, seed 0 (a few minutes)")
    ap.add_argument("--seeds", default=None, help="seeds of the main comparison, e.g. 0-4 (default 0-4; quick 0)")
    ap.add_argument("--pareto-seeds", default=None, help="seeds of the Pareto family (default 0; quick 0)")
    ap.add_argument("--epochs", type=int, default=None, help="main comparison epochs, default 20 (quick 5)")
    ap.add_argument("--pareto-epochs", type=int, default=None, help="Pareto epochs, default 10 (quick 5)")
    ap.add_argument("--pareto-phis", default="-2,-1,0,1,2", help="phis of the compound-scaled family")
    ap.add_argument("--parts", default="main,pareto", help="main (MBConv/CNN/shuffled) and/or pareto")
    ap.add_argument("--models", default=None, help="subset of the main runs, e.g. mbconv1d_se4,cnn1d_plain")
    ap.add_argument("--runs", default=str(ROOT / "results/experiments/mnist1d_benchmark"))
    ap.add_argument("--out", default=str(ROOT / "experiments/results/mnist1d_benchmark"))
    ap.add_argument("--label", default=None, help="a separate set of runs and result files (default: by mode)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is fastest overall
    mode = "quick" if args.quick else "full"
    epochs = args.epochs or (5 if args.quick else 20)
    seeds = seed_list(args.seeds or ("0" if args.quick else "0-4"))
    pseeds = seed_list(args.pareto_seeds or "0")
    pepochs = args.pareto_epochs or (5 if args.quick else 10)
    parts = set(args.parts.split(","))
    suffix = f"_{args.label}" if args.label else ""
    runs_main = Path(args.runs) / f"main_{mode}_e{epochs}{suffix}"
    runs_pareto = Path(args.runs) / f"pareto_{mode}_e{pepochs}{suffix}"
    out = Path(args.out)
    t_start = time.time()
    record = RunRecord(seeds={"main": seeds, "pareto": pseeds}, epochs={"main": epochs, "pareto": pepochs},
                       init=INIT)

    data = {False: load_signal_splits("mnist1d", seed=0), True: load_signal_splits("mnist1d", seed=0, shuffled=True)}

    def run(runs: Path, ep: int, tag: str, spec, seed: int, shuffled: bool = False,
            resolution: int | None = None) -> dict:
        tr, va, te = data[shuffled] if resolution in (None, 40) else load_signal_splits("mnist1d", seed=0,
                                                                                       resolution=resolution)
        t0 = time.time()
        run_dir = runs / f"{tag}_s{seed}"
        r = fit_spec(spec, tr, te, run_dir, ep, seed=seed, progress="none", val_ds=va)
        if not (run_dir / "provenance.json").exists():  # the command (chunk) that trained this run
            write_json(run_dir / "provenance.json", record.as_dict(seeds=[seed], epochs=ep))
        print(f"{tag:28s} seed {seed}: final {100 * r['final_acc']:.2f} %  at the best val epoch "
              f"{100 * r['best_acc']:.2f} %  params {r['params']:>9,}  MACs {r['macs']:>10,}  "
              f"({time.time() - t0:.0f} s this call, {r['train_seconds']:.0f} s training)", flush=True)
        return r

    if "main" in parts:
        main_runs = {"mbconv1d_se4": (zoo_nd.mbconv1d_se4_spec(), False),
                     "cnn1d_plain": (zoo_nd.cnn1d_plain_spec(), False),
                     "cnn1d_plain_w0.5": (zoo_nd.cnn1d_plain_spec(0.5), False),  # fewer MACs than the MBConv
                     "mbconv1d_se4_shuffled": (zoo_nd.mbconv1d_se4_spec(), True)}
        only = set(args.models.split(",")) if args.models else set(main_runs)
        unknown = only - set(main_runs)
        if unknown:
            raise SystemExit(f"unknown --models {sorted(unknown)}; known: {sorted(main_runs)}")
        for s in seeds:
            for tag, (spec, shuffled) in main_runs.items():
                if tag in only:
                    run(runs_main, epochs, tag, spec, s, shuffled=shuffled)
    if "pareto" in parts:
        base = zoo_nd.efficientnet1d_base_spec()
        phis = [float(p) for p in args.pareto_phis.split(",")]
        for s in pseeds:
            run(runs_pareto, pepochs, "mbconv1d_se4", zoo_nd.mbconv1d_se4_spec(), s)
            for w in CNN_WIDTHS:
                run(runs_pareto, pepochs, "cnn1d_plain" if w == 1.0 else f"cnn1d_plain_w{w:g}",
                    zoo_nd.cnn1d_plain_spec(w), s)
            for spec in zoo_nd.compound_family(base, phis):
                run(runs_pareto, pepochs, spec.name, spec, s, resolution=spec.resolution)
    # Non-default epoch counts get their own output files, so they never overwrite the default mode's.
    label = mode if (epochs, pepochs) == ((5, 5) if args.quick else (20, 10)) else f"{mode}_e{epochs}_p{pepochs}"
    summarize(runs_main, runs_pareto, out, label + suffix, epochs, pepochs, record)
    print(f"done in {time.time() - t_start:.0f} s")
    return 0


def _collect(runs: Path) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for p in sorted(runs.glob("*/result.json")):
        r = json.loads(p.read_text())
        tag = p.parent.name.rsplit("_s", 1)[0]
        r.pop("key", None)
        prov = p.parent / "provenance.json"
        r["provenance"] = json.loads(prov.read_text()) if prov.exists() else None
        groups.setdefault(tag, []).append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: r["seed"])
    return groups


def _table(groups: dict[str, list[dict]]) -> dict[str, dict]:
    table = {}
    for tag, rows in groups.items():
        accs = [100 * r["final_acc"] for r in rows]
        vals = [100 * r["history"][-1]["val_acc"] for r in rows if r["history"] and "val_acc" in r["history"][-1]]
        m, h = t_ci(accs)
        table[tag] = {"n_seeds": len(rows), "seeds": [r["seed"] for r in rows], "final_acc_mean": m,
                      "final_acc_ci95": h, "final_acc_min": min(accs), "final_acc_max": max(accs),
                      # the test accuracy of the epoch the validation split chose (None: runs without one)
                      "best_acc_mean": (statistics.mean(100 * r["best_acc"] for r in rows)
                                        if all(r.get("best_acc") is not None for r in rows) else None),
                      "final_val_acc_mean": statistics.mean(vals) if len(vals) == len(rows) else None,
                      "params": rows[0]["params"], "macs": rows[0]["macs"],
                      "train_seconds_mean": statistics.mean(r["train_seconds"] for r in rows),
                      "per_seed_final_acc": accs, "init": INIT}
    return table


def _commands(groups: dict[str, list[dict]]) -> list[dict]:
    """The distinct commands (chunks) that trained the runs of `groups`, with the seeds and models each trained."""
    chunks: dict[tuple, dict] = {}
    for tag, rows in sorted(groups.items()):
        for r in rows:
            p = r.get("provenance")
            if p is None:
                continue
            c = chunks.setdefault((p["command"], p["git_commit"]), {**p, "seeds": [], "models": []})
            c["seeds"] = sorted(set(c["seeds"]) | set(p["seeds"]))
            c["models"] = sorted(set(c["models"]) | {tag})
    return list(chunks.values())


def summarize(runs_main: Path, runs_pareto: Path, out: Path, mode: str, epochs: int, pepochs: int,
              record: RunRecord) -> dict:
    """Aggregate every cached run of this mode into results.json, the figures and markdown tables."""
    groups = _collect(runs_main)
    pgroups = _collect(runs_pareto)
    table = _table(groups)
    ptable = _table(pgroups)
    res: dict = {"mode": mode, "epochs": epochs, "pareto_epochs": pepochs, "target": 100 * TARGET,
                 "models": table, "pareto": ptable, "init": INIT,
                 "command": record.as_dict()["command"],  # this aggregation; the training chunks: run_commands
                 "run_commands": _commands(groups) + _commands(pgroups),
                 "recipe": "AdamW 3e-3, wd 0.05, warmup 1 + cosine, label smoothing 0.1, batch 64, shift+noise aug; "
                           "accuracy = last epoch, test split of mnist1d (1000); train 3601 / val 399 (chooses "
                           "nothing here: reported as final_val_acc_mean)"}
    if "mbconv1d_se4" in groups and "cnn1d_plain" in groups:
        a = {r["seed"]: 100 * r["final_acc"] for r in groups["mbconv1d_se4"]}
        b = {r["seed"]: 100 * r["final_acc"] for r in groups["cnn1d_plain"]}
        res["mbconv_vs_cnn"] = paired_by_key(a, b)
        mb, cn = table["mbconv1d_se4"], table["cnn1d_plain"]
        res["mbconv_vs_cnn"].update(params_ratio=cn["params"] / mb["params"], macs_ratio=cn["macs"] / mb["macs"])
        res["verdict"] = {
            "mbconv_mean_ge_target": mb["final_acc_mean"] >= 100 * TARGET,
            "mbconv_at_least_cnn_accuracy": mb["final_acc_mean"] >= cn["final_acc_mean"] - 0.1,
            "cnn_reaches_target": cn["final_acc_mean"] >= 100 * TARGET,
            "mbconv_fewer_params_and_macs": mb["params"] < cn["params"] and mb["macs"] < cn["macs"],
            "n_seeds": mb["n_seeds"]}
        if "cnn1d_plain_w0.5" in table:  # the smaller plain CNN: fewer MACs and params than the MBConv
            half = {r["seed"]: 100 * r["final_acc"] for r in groups["cnn1d_plain_w0.5"]}
            res["mbconv_vs_cnn_w0.5"] = paired_by_key(a, half)
            res["mbconv_vs_cnn_w0.5"].update(params_ratio=table["cnn1d_plain_w0.5"]["params"] / mb["params"],
                                             macs_ratio=table["cnn1d_plain_w0.5"]["macs"] / mb["macs"])
    out.mkdir(parents=True, exist_ok=True)
    res["provenance"] = record.as_dict()
    write_json(out / f"results_{mode}.json", res)
    _figures(table, ptable if mode in ("quick", "full") else {}, out, mode)  # one Pareto figure per mode
    md = _markdown(table, f"{mode} mode, main comparison", epochs) + "\n" + \
        _markdown(ptable, f"{mode} mode, Pareto front", pepochs)
    (out / f"table_{mode}.md").write_text(md)
    print(md)
    return res


def _markdown(table: dict, what: str, epochs: int) -> str:
    rows = [[tag, t["n_seeds"], mean_ci_text(t["final_acc_mean"], t["final_acc_ci95"]),
             f"{t['final_acc_min']:.1f}-{t['final_acc_max']:.1f}", f"{t['params']:,}", f"{t['macs']:,}"]
            for tag, t in sorted(table.items(), key=lambda kv: kv[1]["macs"])]
    lines = [f"MNIST-1D ({what}, {epochs} epochs; accuracy = last epoch, mean +- 95 % t-CI over seeds)", "",
             *markdown_table(["model", "seeds", "test acc % (mean +- CI)", "min-max", "params", "MACs"], rows)]
    return "\n".join(lines) + "\n"


def _plain_log_ticks(ax) -> None:
    """Log x axis labelled with plain numbers (less than a decade of range otherwise gets cluttered labels)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _figures(table: dict, ptable: dict, out: Path, mode: str) -> None:
    if ptable:
        _pareto_figure(ptable, out, mode)
    _main_figure(table, out, mode)


def _pareto_figure(ptable: dict, out: Path, mode: str) -> None:
    p = plt()
    fig, ax = p.subplots(figsize=(7, 4))
    groups = {"efficientnet1d (phi -2..2)": [k for k in ptable if k.startswith("efficientnet1d")],
              "plain CNN (widths)": [k for k in ptable if k.startswith("cnn1d_plain")],
              "mbconv1d_se4": [k for k in ptable if k == "mbconv1d_se4"]}
    for label, keys in groups.items():
        keys = sorted(keys, key=lambda k: ptable[k]["macs"])
        if not keys:
            continue
        xs = [ptable[k]["macs"] / 1e6 for k in keys]
        ys = [ptable[k]["final_acc_mean"] for k in keys]
        es = [0 if math.isnan(ptable[k]["final_acc_ci95"]) else ptable[k]["final_acc_ci95"] for k in keys]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
        for k, x, y in zip(keys, xs, ys):
            short = k.replace("efficientnet1d_b0_", "").replace("cnn1d_plain", "cnn")
            ax.annotate(short, (x, y), fontsize=7, textcoords="offset points", xytext=(3, -9))
    ax.axhline(100 * TARGET, color="grey", ls=":", lw=1, label="99.3 % target")
    ax.set_xscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("MACs per signal (M, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST-1D: accuracy vs MACs ({mode} mode, Pareto runs)")
    ax.legend(fontsize=8)
    savefig(fig, out / f"fig_pareto_{mode}.png")


def _main_figure(table: dict, out: Path, mode: str) -> None:
    p = plt()
    main = [k for k in ("mbconv1d_se4", "cnn1d_plain", "cnn1d_plain_w0.5", "mbconv1d_se4_shuffled") if k in table]
    if main:
        # left: every model; right: the unshuffled ones zoomed in (their differences are tenths of a point)
        fig, axes = p.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
        for ax, keys in ((axes[0], main), (axes[1], [k for k in main if not k.endswith("shuffled")])):
            for i, k in enumerate(keys):
                accs = table[k]["per_seed_final_acc"]
                ax.scatter([i] * len(accs), accs, alpha=0.6)
                ci = table[k]["final_acc_ci95"]
                ax.errorbar([i + 0.15], [table[k]["final_acc_mean"]], yerr=[0 if math.isnan(ci) else ci],
                            fmt="k_", capsize=4)
            short = {"mbconv1d_se4": "MBConv-SE", "cnn1d_plain": "plain CNN", "cnn1d_plain_w0.5": "plain CNN x0.5",
                     "mbconv1d_se4_shuffled": "MBConv-SE\nshuffled"}
            labels = [f"{short.get(k, k)}\n{table[k]['macs'] / 1e6:.2f} M MACs" for k in keys]
            ax.set_xticks(range(len(keys)), labels, fontsize=7)
            ax.set_ylabel("test accuracy (%), per seed")
        axes[1].axhline(100 * TARGET, color="grey", ls=":", lw=1)
        axes[0].set_title("all runs (incl. shuffled control)")
        axes[1].set_title("unshuffled, zoomed (dotted: 99.3 % target)")
        fig.suptitle(f"MNIST-1D main comparison ({mode}, mean +- 95 % CI)")
        savefig(fig, out / f"fig_main_{mode}.png")


if __name__ == "__main__":
    raise SystemExit(main())
