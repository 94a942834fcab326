"""`mbconv gates` (SE gate statistics of a trained run) and `mbconv prune` (structured pruning into a new run)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _dataset(run: dict[str, Any], name: str | None, split: str, augment: bool = False, seed: int = 0) -> Any:
    """The run's own dataset (or `name`) preprocessed as in training; ValueError if it cannot feed the model."""
    from ..data import load_dataset

    d = run.get("data") or {}
    if not name and not d.get("name"):
        raise ValueError("the checkpoint names no dataset: pass --data")
    ds = load_dataset(name or d["name"], split, resolution=d.get("resolution"), augment=augment, seed=seed)
    info = ds.info
    for key in ("dims", "in_chans"):
        if key in d and getattr(info, key) != d[key]:
            raise ValueError(f"dataset {name or d['name']!r} has {key}={getattr(info, key)} but the model was "
                             f"trained with {key}={d[key]}")
    return ds


def cmd_gates(args: argparse.Namespace) -> int:
    from ..gates import fig_channel_stats, fig_histograms_by_depth, format_table, gate_stats, record_gates, summarize
    from ..report import write_json
    from ..workflow import load_run

    if not 0.0 <= args.low <= 1.0 or not 0.0 <= args.high <= 1.0:
        raise ValueError(f"invalid --low {args.low} / --high {args.high}: gate thresholds must be in [0, 1]")
    model, run, ck = load_run(args.checkpoint)
    ds = _dataset(run, args.data, args.split)
    rec = record_gates(model, ds, max_inputs=args.max_inputs)
    stats = gate_stats(rec, args.low, args.high)
    summ = summarize(stats, rec)
    out = Path(args.out) if args.out else ck.parent / "gates"  # next to the run's checkpoints, not inside one
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gates.json", {"checkpoint": str(ck), "data": args.data or run["data"]["name"],
                                    "split": args.split, "summary": summ, "blocks": [s.row() for s in stats]})
    if args.json:
        print(json.dumps({"summary": summ, "blocks": [s.row() for s in stats]}))
    else:
        print(f"{ck}: {len(stats)} SE blocks, {summ['channels']} gated channels, {summ['inputs']} {args.split} inputs")
        print(format_table(stats))
        print(f"consistently suppressed (p99 < {args.low:g}): {summ['suppressed']} channels "
              f"({100 * summ['frac_suppressed']:.1f} %);  saturated (p1 > {args.high:g}): {summ['saturated']} "
              f"({100 * summ['frac_saturated']:.1f} %);  gate values in [0.2, 1]: "
              f"{100 * summ['frac_values_in_0.2_1']:.1f} %")
    if not args.no_figures:
        f1 = fig_histograms_by_depth(rec, out / "fig_gate_hist_depth.png")
        f2 = fig_channel_stats(stats, out / "fig_gate_channels.png")
        if not args.json:
            print(f"wrote {out / 'gates.json'}, {f1}, {f2}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from ..prune import (
        CRITERIA,
        GATE_CRITERIA,
        apply_plan,
        channel_means,
        channel_scores,
        finetune,
        make_plan,
        min_keep_for,
        save_pruned,
    )
    from ..report import write_json
    from ..train import evaluate
    from ..workflow import find_checkpoint, load_run

    if not 0.0 <= args.ratio < 1.0:
        raise ValueError(f"invalid --ratio {args.ratio}: the fraction of expanded channels to remove must be in "
                         "[0, 1)")
    if args.criterion not in CRITERIA:
        raise ValueError(f"invalid --criterion {args.criterion!r}: expected one of {CRITERIA}")
    if args.finetune_epochs < 0:
        raise ValueError(f"invalid --finetune-epochs {args.finetune_epochs}: must be >= 0")
    src = find_checkpoint(args.checkpoint)
    out = Path(args.out)
    if out.resolve() in (Path(args.checkpoint).resolve(), src.resolve(), src.parent.resolve()):
        raise ValueError(f"--out {out} is the source run: choose a new directory")
    model, run, ck = load_run(args.checkpoint)
    train_ds = _dataset(run, None, "train", augment=True, seed=args.seed) if args.finetune_epochs else None
    test_ds = _dataset(run, None, "test")
    t0 = time.time()
    calib = None
    if args.criterion in GATE_CRITERIA:
        # gate statistics from the (unaugmented) training split: the test split stays for measuring
        calib = _dataset(run, None, "train")
        calib = torch.utils.data.Subset(calib, range(min(args.calib_inputs, len(calib))))
    scores = channel_scores(model, args.criterion, data=calib, seed=args.seed, max_inputs=args.calib_inputs)
    plan = make_plan(scores, args.ratio, scope="global" if args.global_ else "per_block", round_to=args.round,
                     criterion=args.criterion, min_keep=min_keep_for(model))
    means = None
    if args.compensate:
        cal = _dataset(run, None, "train")
        means = channel_means(model, torch.utils.data.Subset(cal, range(min(args.calib_inputs, len(cal)))),
                              max_inputs=args.calib_inputs)
    pruned = apply_plan(model, plan, means=means)
    from ..cost import spec_cost

    before, after = spec_cost(model.spec), spec_cost(pruned.spec)
    acc0 = evaluate(model, test_ds)["acc"]
    acc1 = evaluate(pruned, test_ds)["acc"]
    summary: dict[str, Any] = {
        "source": str(ck), "criterion": args.criterion, "ratio": args.ratio, "round_to": args.round,
        "scope": "global" if args.global_ else "per_block", "compensated": bool(args.compensate),
        "plan": plan.to_dict(),
        "params_before": before.params, "params_after": after.params, "macs_before": before.macs,
        "macs_after": after.macs, "macs_removed": 1 - after.macs / before.macs,
        "acc_before": acc0, "acc_pruned": acc1, "finetune_epochs": args.finetune_epochs}
    meta = {"net": pruned.spec.to_dict(), "data": run.get("data"),
            "pruning": {k: v for k, v in summary.items() if k != "plan"}}
    if args.finetune_epochs:
        row = finetune(pruned, train_ds, test_ds, epochs=args.finetune_epochs, lr=args.lr, seed=args.seed,
                       batch_size=args.batch_size, out_dir=out, meta=meta, progress="plain")
        summary["acc_finetuned"] = row.get("test_acc")
        summary["acc_finetuned_best"] = row.get("best_test_acc")
    else:
        save_pruned(out, pruned, meta)
    summary["seconds"] = time.time() - t0
    write_json(out / "prune.json", summary)
    print(f"{ck} -> {out}: {args.criterion} removed {plan.removed}/{plan.total} expanded channels "
          f"({'global' if args.global_ else 'per block'}, ratio {args.ratio:g}, round {args.round})")
    print(f"params {before.params:,} -> {after.params:,} ({100 * (1 - after.params / before.params):.1f} % fewer)  "
          f"MACs {before.macs:,} -> {after.macs:,} ({100 * summary['macs_removed']:.1f} % fewer)")
    line = f"test accuracy {100 * acc0:.2f} % -> pruned {100 * acc1:.2f} %"
    if args.finetune_epochs:
        line += f" -> fine-tuned {args.finetune_epochs} epoch(s) {100 * summary['acc_finetuned']:.2f} %"
    print(line)
    return 0


def register(add: Any) -> None:
    """Add `gates` and `prune` to the mbconv CLI."""
    from ..cli import _number, _positive_int
    from ..prune import CRITERIA

    sp = add("gates", cmd_gates, "SE gate statistics of a trained run: per-block table and figures")
    sp.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    sp.add_argument("--data", help="dataset (default: the run's own)")
    sp.add_argument("--split", choices=("test", "train"), default="test")
    sp.add_argument("--max-inputs", type=_positive_int, default=None)
    sp.add_argument("--low", type=_number, default=0.05, help="suppressed: p99 of the gate below this")
    sp.add_argument("--high", type=_number, default=0.95, help="saturated: p1 of the gate above this")
    sp.add_argument("--out", help="folder for gates.json and figures (default: RUN/gates)")
    sp.add_argument("--no-figures", action="store_true")
    sp.add_argument("--json", action="store_true")

    sp = add("prune", cmd_prune, "remove expanded channels of MBConv blocks; writes a smaller run")
    sp.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    sp.add_argument("--criterion", choices=CRITERIA, required=True)
    sp.add_argument("--ratio", type=_number, required=True, help="fraction of expanded channels to remove")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--per-block", dest="global_", action="store_false", help="same ratio in every block (default)")
    g.add_argument("--global", dest="global_", action="store_true", help="lowest scores across all blocks")
    sp.set_defaults(global_=False)  # store_false's implicit default would be True
    sp.add_argument("--round", type=_positive_int, default=1, help="keep a multiple of this many channels")
    sp.add_argument("--finetune-epochs", type=int, default=0)
    sp.add_argument("--lr", type=_number, default=1e-3, help="fine-tune learning rate (AdamW, cosine)")
    sp.add_argument("--batch-size", type=_positive_int, default=64)
    sp.add_argument("--calib-inputs", type=_positive_int, default=1000,
                    help="training inputs whose gates score channels (gate criteria) / give channel means")
    sp.add_argument("--compensate", action="store_true",
                    help="fold the removed channels' mean contribution into the project BN and SE bias")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="new run directory for the pruned model")
