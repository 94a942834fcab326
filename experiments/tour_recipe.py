"""Tour recipe check (issue 15): does a weight EMA, chosen per epoch on validation, help the tour model? Pre-registered.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python experiments/tour_recipe.py [--quick] [--arms A,B] [--seeds 0-2]

Two arms, each trained with seeds 0, 1 and 2 (seed 0 is the tour's), one torch thread per run:

- `baseline`: the tour's recipe as `mbconv.chapters.train.tour_run_config` builds it (EfficientNet-B0 spec x0.5,
  32 px, MNIST 5k 3600 / 400 / 1000, 30 epochs, AdamW lr 3e-3, wd 0.05, 1-epoch warm-up + cosine, label smoothing
  0.1, drop path 0.1, dropout 0.1, batch 64), without EMA (``ema_decay = 0``);
- `ema`: the same with a weight EMA of decay ``EMA_DECAY = 0.9955``. The trainer's ``best/`` is then, per epoch, the
  better of the raw and the EMA weights on the validation split (a tie keeps raw), and stores those weights.

Why 0.9955 (chosen before any run, not tuned): 3600 training images at batch 64 are 56 steps per epoch, and
1 / (1 - 0.9955) = 222 steps is an averaging horizon of about 4 epochs. That is long enough to smooth the
epoch-to-epoch wander of the raw weights late in the cosine schedule (the last quiet tour run's validation choice
was epoch 23 of 30, its test accuracy 0.7 pt below its validation accuracy), and short enough that the average
holds only the last ~13 % of the schedule, not the undertrained early weights (timm's ImageNet default 0.9998 would
be ~89 epochs here). The EMA averages the BatchNorm running statistics too (`mbconv.train.ModelEma`).

Pre-registered selection rule (committed, with its copy in docs/claims.md, before any run of this study started):
the tour adopts the EMA arm iff its mean validation accuracy of the selected checkpoints (the value ``best/`` was
chosen with) over the 3 seeds is higher than the baseline's; a tie keeps the baseline. The test accuracy of every
run is reported, whatever it is; nothing is chosen on it. Only the full mode decides; --quick is a smoke test.

Runs are cached under results/experiments/tour_recipe/ (git-ignored; each run dir keeps a run.json with the wall
time and provenance of the command that trained it); a rerun with every run cached only aggregates. To use two cores
(never more), train the arms apart and then aggregate:

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python experiments/tour_recipe.py --arms baseline &
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python experiments/tour_recipe.py --arms ema; wait
    OMP_NUM_THREADS=1 .venv/bin/python experiments/tour_recipe.py

Result: experiments/results/tour_recipe/results_{mode}.json (+ provenance). --quick: 2 epochs, seed 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import paired, read_metrics, seed_list  # noqa: E402

from mbconv.chapters.train import tour_run_config  # noqa: E402
from mbconv.provenance import RunRecord  # noqa: E402
from mbconv.report import write_json  # noqa: E402
from mbconv.workflow import RunConfig, evaluate_run, train_run  # noqa: E402

EMA_DECAY = 0.9955
ARMS = {"baseline": 0.0, "ema": EMA_DECAY}  # arm -> ema_decay
MODES = {"quick": {"epochs": 2, "seeds": "0"}, "full": {"epochs": 30, "seeds": "0-2"}}
RULE = ("adopt the EMA arm iff its mean validation accuracy of the selected checkpoints over the seeds is higher "
        "than the baseline's; tie -> keep the baseline; test accuracy is reported, never used")
INIT = "tf init; weights drawn after torch.manual_seed(derive_seed(seed, 'init')); classifier zero"


def arm_config(arm: str, seed: int, epochs: int, runs: Path) -> RunConfig:
    """The tour's full recipe (`tour_run_config`), with this arm's EMA, the seed, `epochs` and a cached run dir; one
    thread, no progress bar. The baseline sets ``ema_decay = 0`` explicitly, whatever the tour's recipe holds."""
    tour = tour_run_config(SimpleNamespace(quick=False, out=runs))
    return dataclasses.replace(tour, out=str(runs / f"{arm}_e{epochs}_s{seed}"), seed=seed, epochs=epochs,
                               ema_decay=ARMS[arm], resume=True, progress="none",
                               extra_train={**tour.extra_train, "tune_threads": False})


def train_one(cfg: RunConfig) -> dict[str, Any]:
    """Train the run unless its dir already holds every epoch; returns its run.json (wall time, provenance)."""
    out = Path(cfg.out)
    info = out / "run.json"
    rows = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    if len(rows) >= cfg.epochs and info.exists():
        return json.loads(info.read_text())
    resumed = bool(rows)
    record = RunRecord(seeds=[cfg.seed], epochs=cfg.epochs, init=INIT)
    t0 = time.time()
    train_run(cfg)
    run = {"train_seconds": round(time.time() - t0, 3), "resumed": resumed,
           "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "provenance": record.as_dict()}
    write_json(info, run)
    return run


def run_summary(arm: str, seed: int, cfg: RunConfig, run: dict[str, Any]) -> dict[str, Any]:
    """One run: the checkpoint the validation split chose (epoch, raw or EMA weights, its val accuracy), that
    checkpoint's test accuracy as `evaluate_run` measures it, the curves and the wall time."""
    out = Path(cfg.out)
    rows = read_metrics(out)
    sel = json.loads((out / "best" / "meta.json").read_text())["selection"]
    test = evaluate_run(out)  # what the tour reports: best/'s weights, whichever they are
    val = evaluate_run(out, split="val")
    return {"arm": arm, "seed": seed, "run": out.name, "ema_decay": cfg.ema_decay,
            "chosen_epoch": sel["epoch"] + 1, "weights": sel.get("weights", "raw"), "val_acc": sel["value"],
            "test_acc": test["acc"], "val_acc_reevaluated": val["acc"], "selection": test["selection"],
            "last_val_acc": rows[-1]["val_acc"], "last_test_acc": rows[-1]["test_acc"],
            "val_curve": [r["val_acc"] for r in rows], "test_curve": [r["test_acc"] for r in rows],
            "ema_val_curve": [r["ema_val_acc"] for r in rows], "ema_test_curve": [r["ema_test_acc"] for r in rows],
            "epoch_seconds": [r["seconds"] for r in rows], "train_seconds": run["train_seconds"],
            "resumed": run["resumed"], "cpu_affinity": run["cpu_affinity"], "provenance": run["provenance"]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: per seed (as strings, for the docs' placeholders) and the means over seeds."""
    out = {}
    for arm in ARMS:
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if mine:
            out[arm] = {"seeds": {str(r["seed"]): r for r in mine},
                        **{f"mean_{k}": statistics.mean(r[k] for r in mine)
                           for k in ("val_acc", "test_acc", "train_seconds", "last_test_acc", "chosen_epoch")},
                        "ema_chosen": sum(r["weights"] == "ema" for r in mine)}
    return out


def decide(arms: dict[str, Any], binding: bool) -> dict[str, Any]:
    """The pre-registered rule applied to the arms' mean validation accuracies (a tie keeps the baseline), and the
    paired per-seed differences ema - baseline of validation and test accuracy, for information."""
    base, ema = arms["baseline"], arms["ema"]
    seeds = sorted(set(base["seeds"]) & set(ema["seeds"]), key=int)
    diff = {k: paired([ema["seeds"][s][k] for s in seeds], [base["seeds"][s][k] for s in seeds])
            for k in ("val_acc", "test_acc")}
    return {"rule": RULE, "binding": binding, "baseline_mean_val_acc": base["mean_val_acc"],
            "ema_mean_val_acc": ema["mean_val_acc"], "adopt_ema": ema["mean_val_acc"] > base["mean_val_acc"],
            "ema_minus_baseline": diff}


def raw_trajectories_match(runs: list[dict[str, Any]]) -> dict[str, bool]:
    """Per seed, whether the two arms' raw weights gave the same per-epoch validation and test accuracies: the EMA
    only watches training, so the arms differ only in what best/ may choose."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    return {str(s): by["baseline", s]["val_curve"] == by["ema", s]["val_curve"]
            and by["baseline", s]["test_curve"] == by["ema", s]["test_curve"]
            for a, s in by if a == "baseline" and ("ema", s) in by}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 epochs, seed 0 (a smoke test; decides nothing)")
    ap.add_argument("--seeds", default=None, help="seeds, e.g. 0-2 (default: the mode's)")
    ap.add_argument("--arms", default=None, help=f"train only these arms (comma-separated, of {', '.join(ARMS)}); "
                    "the results file is written when every arm's runs are there")
    ap.add_argument("--runs", default=str(ROOT / "results/experiments/tour_recipe"))
    ap.add_argument("--out", default=str(ROOT / "experiments/results/tour_recipe"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread per run; at most two runs share the machine's two cores
    mode = "quick" if args.quick else "full"
    conf = MODES[mode]
    try:
        seeds = seed_list(args.seeds or conf["seeds"])
    except ValueError as e:
        raise SystemExit(f"--seeds: {e}") from None
    arms = list(ARMS) if args.arms is None else [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise SystemExit(f"--arms {args.arms!r}: unknown arm {bad[0] if bad else '(none)'!r}; choose from "
                         f"{', '.join(ARMS)}")
    record = RunRecord(seeds=seeds, epochs=conf["epochs"], init=INIT)
    runs_dir = Path(args.runs)
    trained = {}
    for seed in seeds:
        for arm in arms:
            cfg = arm_config(arm, seed, conf["epochs"], runs_dir)
            trained[arm, seed] = (cfg, train_one(cfg))
            print(f"{arm:8s} seed {seed}: trained ({trained[arm, seed][1]['train_seconds']:.0f} s)", flush=True)
    if arms != list(ARMS):
        print("some arms only: aggregate with the same command without --arms", flush=True)
        return 0
    runs = [run_summary(arm, seed, cfg, run) for (arm, seed), (cfg, run) in trained.items()]
    for r in runs:
        print(f"{r['arm']:8s} seed {r['seed']}: epoch {r['chosen_epoch']} ({r['weights']}) val "
              f"{100 * r['val_acc']:.2f} % test {100 * r['test_acc']:.2f} % [{r['train_seconds']:.0f} s]")
    summary = summarise(runs)
    decision = decide(summary, binding=mode == "full" and seeds == [0, 1, 2])
    tour = tour_run_config(SimpleNamespace(quick=False, out=runs_dir))
    result = {"experiment": "tour_recipe", "mode": mode, "seeds": seeds, "epochs": conf["epochs"],
              "config": {"tour_run_config": {k: v for k, v in dataclasses.asdict(tour).items() if k != "out"},
                         "arms": ARMS, "ema_decay_why": "1/(1-0.9955) = 222 steps = ~4 epochs of 56 steps",
                         "threads": 1, "selection": "best/: validation accuracy, raw or EMA weights per epoch "
                                                    "(tie -> raw); test reported only"},
              "arms": summary, "decision": decision, "raw_trajectories_match": raw_trajectories_match(runs)}
    write_json(Path(args.out) / f"results_{mode}.json", {**result, "provenance": record.as_dict()})
    print(f"mean val: baseline {100 * decision['baseline_mean_val_acc']:.2f} %, ema "
          f"{100 * decision['ema_mean_val_acc']:.2f} % -> adopt EMA: {decision['adopt_ema']}"
          f"{'' if decision['binding'] else ' (not binding: ' + mode + ' mode)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
