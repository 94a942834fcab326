"""Tour accuracy after the sixth session's kernels (issue 15): the tour recipe's seeds 0-2 rerun. Pre-registered.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python experiments/tour_accuracy_rerun.py [--quick]

What it answers: did the native depthwise kernels, the SE node and the 1-D pointwise products (sixth session)
change the tour recipe's accuracy? A single `make tour` run cannot say: its test accuracy moves by about 0.45 pt
(one standard error of a 1,000-image test split) with any change of the float path, and the sixth session's run
gave 97.8 % where the fifth's gave 98.1 %.

- Runs: the `baseline` arm of `experiments/tour_recipe.py` (the tour's recipe, `tour_run_config`, no EMA), seeds 0,
  1 and 2, 30 epochs, one torch thread, exactly as the fifth session ran it (its results, with the code of
  646fe4b, before the sixth session's kernels, are `experiments/results/tour_recipe/results_full.json`). Only the
  code differs. Cached under results/experiments/tour_recipe_s7/ (git-ignored).
- Measure: per seed, the test accuracy of the checkpoint the validation split chose (`evaluate_run`, what the tour
  reports); the paired difference now - fifth session.
- **Criterion** (fixed before any run): the accuracy is *unchanged* iff the mean paired difference over the three
  seeds lies within two standard errors, 2 * sqrt(2 p (1 - p) / 1000 / 3), p the fifth session's mean test accuracy
  (0.9823: about 0.68 pt). Also reported: whether the new mean is at least 98 %. Every run is reported; none is
  repeated or replaced. --quick (2 epochs, seed 0) is a smoke test and decides nothing.

Result: experiments/results/tour_recipe/rerun_s7_{mode}.json (+ provenance).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import paired, seed_list  # noqa: E402
from tour_recipe import INIT, arm_config, run_summary, train_one  # noqa: E402

from mbconv.provenance import RunRecord  # noqa: E402
from mbconv.report import write_json  # noqa: E402

BEFORE = ROOT / "experiments" / "results" / "tour_recipe" / "results_full.json"
MODES = {"quick": {"epochs": 2, "seeds": "0"}, "full": {"epochs": 30, "seeds": "0-2"}}
TEST_SIZE = 1000
CRITERION = ("unchanged iff |mean paired difference (now - fifth session) of the validation-chosen checkpoints' test "
             "accuracy over seeds 0-2| <= 2 * sqrt(2 p (1 - p) / 1000 / 3), p = the fifth session's mean")


def two_se(p: float, seeds: int, test_size: int = TEST_SIZE) -> float:
    """Two standard errors of the difference of two means, over `seeds` runs each, of accuracies near `p` on a
    `test_size`-image test split (binomial sampling noise of the split)."""
    return 2 * math.sqrt(2 * p * (1 - p) / test_size / seeds)


def compare(now: dict[str, float], before: dict[str, float]) -> dict[str, Any]:
    """The criterion on per-seed test accuracies (seed -> accuracy, the same seeds in both)."""
    seeds = sorted(now, key=int)
    if sorted(before, key=int) != seeds:
        raise ValueError(f"seeds differ: now {seeds}, before {sorted(before, key=int)}")
    p = statistics.mean(before.values())
    diff = paired([now[s] for s in seeds], [before[s] for s in seeds])
    bound = two_se(p, len(seeds))
    return {"criterion": CRITERION, "before_mean": p, "now_mean": statistics.mean(now.values()),
            "paired_difference": diff, "two_se": bound, "unchanged": abs(diff["mean"]) <= bound,
            "now_mean_at_least_98": statistics.mean(now.values()) >= 0.98}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 epochs, seed 0 (a smoke test; decides nothing)")
    ap.add_argument("--runs", default=str(ROOT / "results/experiments/tour_recipe_s7"))
    ap.add_argument("--out", default=str(ROOT / "experiments/results/tour_recipe"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the fifth session's runs
    mode = "quick" if args.quick else "full"
    seeds = seed_list(MODES[mode]["seeds"])
    epochs = MODES[mode]["epochs"]
    record = RunRecord(seeds=seeds, epochs=epochs, init=INIT)
    runs = []
    for seed in seeds:
        cfg = arm_config("baseline", seed, epochs, Path(args.runs))
        run = train_one(cfg)
        runs.append(run_summary("baseline", seed, cfg, run))
        r = runs[-1]
        print(f"seed {seed}: epoch {r['chosen_epoch']} val {100 * r['val_acc']:.2f} % test {100 * r['test_acc']:.2f} % "
              f"[{r['train_seconds']:.0f} s]", flush=True)
    result: dict[str, Any] = {"experiment": "tour_accuracy_rerun", "mode": mode, "seeds": seeds, "epochs": epochs,
                              "threads": 1, "runs": {str(r["seed"]): r for r in runs}}
    if mode == "full":
        before = json.loads(BEFORE.read_text())["arms"]["baseline"]["seeds"]
        result["before"] = {"file": str(BEFORE.relative_to(ROOT)), "commit": "646fe4b",
                            "test_acc": {s: before[s]["test_acc"] for s in result["runs"]}}
        result["decision"] = compare({s: r["test_acc"] for s, r in result["runs"].items()},
                                     result["before"]["test_acc"])
        d = result["decision"]
        print(f"mean test: before {100 * d['before_mean']:.2f} %, now {100 * d['now_mean']:.2f} %; paired difference "
              f"{100 * d['paired_difference']['mean']:+.2f} pt (bound {100 * d['two_se']:.2f}) -> unchanged: "
              f"{d['unchanged']}")
    write_json(Path(args.out) / f"rerun_s7_{mode}.json", {**result, "provenance": record.as_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
