"""Accuracy benchmark (issue: Training, item 6). Not a test: it trains for minutes.

    .venv/bin/python -m benchmarks.accuracy [--only mnist5k|mnist1d] [--seeds 1] [--out results/bench_acc]

- MNIST 5k: EfficientNet-B0 spec at width 0.5, 32 px, 30 epochs, AdamW; target >= 98.0 % held-out test
  accuracy in under 5 minutes on 2 cores.
- MNIST-1D: a 4-block 1-D MBConv-SE stack, 20 epochs; target >= 98.5 % (the MNIST-1D paper's CNN: ~94 %).
Prints one line per run and a summary with the wall time of each; writes JSON next to the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from experiments.common import RECIPE, read_metrics  # the experiments' recipe; run from the repository root
from mbconv.workflow import RunConfig, train_run
from mbconv.zoo_nd import mbconv1d_se4_spec


def runs(seed: int, out: Path) -> dict[str, RunConfig]:
    return {
        "mnist5k": RECIPE.run_config(model="efficientnet_b0", data="mnist5k", resolution=32, width_mult=0.5,
                                     overrides={"drop_path_rate": 0.1, "drop_rate": 0.1}, epochs=30, seed=seed,
                                     out=str(out / f"mnist5k_s{seed}"), progress="plain"),
        "mnist1d": RECIPE.run_config(model=mbconv1d_se4_spec(), data="mnist1d", epochs=20, seed=seed,
                                     out=str(out / f"mnist1d_s{seed}"), progress="plain"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("mnist5k", "mnist1d"))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default="results/bench_acc")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (1 on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        for name, cfg in runs(seed, out).items():
            if args.only and name != args.only:
                continue
            t0 = time.perf_counter()
            train_run(cfg)
            wall = time.perf_counter() - t0
            hist = read_metrics(cfg.out)
            best = max(h["test_acc"] for h in hist)  # selected on the test split: information only
            row = {"seed": seed, "best_epoch_acc": best, "final_acc": hist[-1]["test_acc"], "train_seconds": wall}
            results.setdefault(name, []).append(row)
            print(f"{name} seed {seed}: final {100 * hist[-1]['test_acc']:.2f} %  (best epoch {100 * best:.2f} %)  "
                  f"train {wall:.0f} s", flush=True)
    for name, rows in results.items():
        accs = [100 * r["final_acc"] for r in rows]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{name}: final test accuracy {statistics.mean(accs):.2f} +- {sd:.2f} % over {len(rows)} seed(s); "
              f"max train time {max(r['train_seconds'] for r in rows):.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
