"""Accuracy benchmark (issue: Training, item 6). Not a test: it trains for minutes.

    .venv/bin/python -m benchmarks.accuracy [--only mnist5k|mnist1d] [--seeds 1] [--first-seed 0] \
        [--out results/bench_acc] [--result experiments/results/bench/accuracy.json] [--threads 1]

- MNIST 5k: EfficientNet-B0 spec at width 0.5, 32 px, 30 epochs, AdamW; target >= 98.0 % held-out test
  accuracy in under 5 minutes on 2 cores.
- MNIST-1D: a 4-block 1-D MBConv-SE stack, 20 epochs; target >= 98.5 % (the MNIST-1D paper's CNN: ~94 %).
The reported accuracy is the last epoch's test accuracy. The validation split (carved from the training split)
chooses the best epoch; its test accuracy is recorded as information, never the test split's own best. Prints one
line per run and a summary with the wall time of each; writes every run's row and the provenance record (command,
commit, seeds, epochs, init, versions, device, threads, wall time) to --result.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from experiments.common import RECIPE, read_metrics  # the experiments' recipe; run from the repository root
from mbconv.provenance import RunRecord, write_result
from mbconv.workflow import RunConfig, train_run
from mbconv.zoo_nd import mbconv1d_se4_spec

EPOCHS = {"mnist5k": 30, "mnist1d": 20}


def runs(seed: int, out: Path) -> dict[str, RunConfig]:
    return {
        "mnist5k": RECIPE.run_config(model="efficientnet_b0", data="mnist5k", resolution=32, width_mult=0.5,
                                     overrides={"drop_path_rate": 0.1, "drop_rate": 0.1}, epochs=EPOCHS["mnist5k"],
                                     seed=seed, out=str(out / f"mnist5k_s{seed}"), progress="plain"),
        "mnist1d": RECIPE.run_config(model=mbconv1d_se4_spec(), data="mnist1d", epochs=EPOCHS["mnist1d"], seed=seed,
                                     out=str(out / f"mnist1d_s{seed}"), progress="plain"),
    }


def run_row(seed: int, hist: list[dict], wall: float) -> dict:
    """One run's result: the last epoch's test accuracy, and the epoch the validation split chose."""
    chosen = max(hist, key=lambda h: h["val_acc"])  # the first epoch of the highest validation accuracy
    return {"seed": seed, "final_acc": hist[-1]["test_acc"], "final_val_acc": hist[-1]["val_acc"],
            "best_val_epoch": chosen["epoch"], "best_val_acc": chosen["val_acc"],
            "test_acc_at_best_val": chosen["test_acc"], "epochs": len(hist), "train_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("mnist5k", "mnist1d"))
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="the first seed (seeds first .. first + seeds - 1)")
    ap.add_argument("--out", default="results/bench_acc", help="run directories (git-ignored)")
    ap.add_argument("--result", default="experiments/results/bench/accuracy.json", help="the result file")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (1 on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    names = [args.only] if args.only else list(EPOCHS)
    record = RunRecord(seeds=seeds, epochs={n: EPOCHS[n] for n in names},
                       init="tf init, zero classifier; weights after torch.manual_seed(derive_seed(seed, 'init'))")
    results: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, cfg in runs(seed, out).items():
            if name not in names:
                continue
            t0 = time.perf_counter()
            train_run(cfg)
            row = run_row(seed, read_metrics(cfg.out), time.perf_counter() - t0)
            results.setdefault(name, []).append(row)
            print(f"{name} seed {seed}: final {100 * row['final_acc']:.2f} %  (at the best val epoch "
                  f"{100 * row['test_acc_at_best_val']:.2f} %)  train {row['train_seconds']:.0f} s", flush=True)
            write_result(args.result, {"runs": results}, record)  # every finished run lands at once
    for name, rows in results.items():
        accs = [100 * r["final_acc"] for r in rows]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{name}: final test accuracy {statistics.mean(accs):.2f} +- {sd:.2f} % over {len(rows)} seed(s); "
              f"max train time {max(r['train_seconds'] for r in rows):.0f} s")


if __name__ == "__main__":
    main()
