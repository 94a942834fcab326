"""`make tour` on a fresh clone, timed, as one result file: wall time, the tour's own chapter times, the training
chapter's result and per-epoch curve.

    .venv/bin/python -m benchmarks.tour_timing --clone /tmp/tourclone --out experiments/results/bench/tour_xeon_s5.json

Clones this repository into `--clone` (removed first), builds its venv with `make venv` (not timed: venv creation
is excluded from the issue's 5-minute target), then times `make tour` there and reads what the tour wrote
(`results/tour/train_result.json`, the run's `metrics.jsonl`). Run it on a quiet machine: the tour's training
chapter picks its thread count per epoch by timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mbconv.provenance import RunRecord, write_result

REPO = Path(__file__).resolve().parents[1]


def run_tour(clone: Path, existing: bool = False) -> dict:
    """Clone, build the venv (untimed), time `make tour`; the tour's log lines and wall seconds. `existing`: run
    again in a clone this script made before (its venv kept, its tour results removed first)."""
    if existing:
        shutil.rmtree(clone / "results" / "tour", ignore_errors=True)
    else:
        if clone.exists():
            shutil.rmtree(clone)
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["make", "venv"], cwd=clone, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "tour"], cwd=clone, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"make tour failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    return {"wall": wall, "log": proc.stdout.splitlines() + proc.stderr.splitlines(), "commit": commit,
            "load_average_start": list(load)}


def summarise(clone: Path, run: dict) -> dict:
    """The result file's content from a finished tour in `clone`."""
    lines = [ln for ln in run["log"] if re.match(r"^\[tour \d\d:\d\d:\d\d\] ", ln)]  # chapters.context's log
    chapters = {m.group(1): int(m.group(2)) for ln in lines
                if (m := re.search(r" (\w+) chapter done in (\d+) s", ln))}
    total = next((int(m.group(1)) for ln in lines if (m := re.search(r" done in (\d+) s:", ln))), None)
    out = clone / "results" / "tour"
    train = json.loads((out / "train_result.json").read_text())
    rows = [json.loads(ln) for ln in (out / "mnist5k_b0w05" / "metrics.jsonl").read_text().splitlines() if ln]
    rows = [r for r in rows if "val_acc" in r]
    return {"what": "make tour on a fresh clone (benchmarks.tour_timing: git clone, make venv not timed, then make "
                    "tour timed)", "clone_commit": run["commit"], "load_average_start": run["load_average_start"],
            "tour_reported_seconds": total, "make_tour_real_seconds": run["wall"], "chapter_seconds": chapters,
            "chapter_log": lines, "train": train, "epoch_seconds": [r.get("seconds") for r in rows],
            "threads": [r.get("threads") for r in rows], "native_kernels": [r.get("native_kernels") for r in rows],
            "val_acc": [r.get("val_acc") for r in rows], "test_acc": [r.get("test_acc") for r in rows]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", default="/tmp/tourclone", help="folder for the fresh clone (removed first)")
    ap.add_argument("--existing", action="store_true",
                    help="run again in the clone a previous call made (venv kept), not a fresh one")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    record = RunRecord(seeds=0, argv=None if argv is None else [sys.argv[0], *argv])
    clone = Path(args.clone)
    result = summarise(clone, run_tour(clone, args.existing))
    result["fresh_clone"] = not args.existing
    write_result(Path(args.out), result, record)
    print(f"make tour {result['make_tour_real_seconds']:.0f} s wall (tour's clock {result['tour_reported_seconds']} s)"
          f"; chapters {result['chapter_seconds']}; test acc {result['train']['eval']['acc']:.4f} "
          f"({result['train']['eval']['selection']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
