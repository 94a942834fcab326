"""The EfficientNet coefficient search (step 1: alpha, beta, gamma on a proxy), written as a committed result.

    PYTHONPATH=src .venv/bin/python experiments/scale_search.py --quick --first-seed 1   # issue 17's rerun

Runs `mbconv.scaling_search.search_coefficients` on the B0 proxy (width 0.25, 28 px) on MNIST 5k: every candidate is
trained with the project's recipe; the coefficients are chosen on the mean final *validation* accuracy and the test
accuracy is reported beside it. Runs are cached under results/scale_search/ (git-ignored); the result (with the
provenance record: command, commit, seeds, epochs, init, versions, device, threads, wall time) and its table go to
experiments/results/scale_search_{quick|full}_s{first seed}/. The first committed search (scale_search_quick/, seed
0) chose on the test split and records no command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mbconv.files import atomic_write_text  # noqa: E402
from mbconv.provenance import RunRecord, write_result  # noqa: E402
from mbconv.scaling_search import search_coefficients  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick grid: 2 epochs x 1 seed per candidate")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--runs", default=str(ROOT / "results" / "scale_search"))
    ap.add_argument("--out", default=None, help="result folder (default experiments/results/scale_search_<mode>_s<S>)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine
    mode = "quick" if args.quick else "full"
    seeds, epochs = (1, 2) if args.quick else (2, 10)  # search_coefficients' own defaults per mode
    record = RunRecord(seeds=list(range(args.first_seed, args.first_seed + seeds)), epochs=epochs,
                       init="tf init, zero classifier; weights after torch.manual_seed(derive_seed(seed, 'init'))")
    runs = Path(args.runs) / f"efficientnet_b0_proxy_{args.data}_r28_s{args.first_seed}"
    res = search_coefficients("efficientnet_b0", data=args.data, quick=args.quick, first_seed=args.first_seed,
                              out=runs)
    out = Path(args.out or ROOT / "experiments" / "results" / f"scale_search_{mode}_s{args.first_seed}")
    write_result(out / "result.json", res, record)
    atomic_write_text(out / "table.txt", res["table"] + "\n")
    print(res["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
