"""`mbconv prune`: structured pruning of the expanded channels of MBConv blocks, written as a new run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..cli_args import fraction, integer, nonnegative_int, positive_float, positive_int, text
from ..model_source import model_from_source, run_dataset
from ..prune import CRITERIA


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from ..prune import (
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
    from ..workflow import find_checkpoint

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
    src_model = model_from_source(checkpoint=args.checkpoint)
    model, run, ck = src_model.model, src_model.run or {}, src_model.checkpoint
    train_ds = run_dataset(run, None, "train", augment=True, seed=args.seed) if args.finetune_epochs else None
    val_ds = run_dataset(run, None, "val") if args.finetune_epochs else None  # chooses the fine-tune's best/
    test_ds = run_dataset(run, None, "test")
    t0 = time.time()
    calib = None
    if args.criterion in GATE_CRITERIA:
        # gate statistics from the (unaugmented) training split: the test split stays for measuring
        calib = run_dataset(run, None, "train")
        calib = torch.utils.data.Subset(calib, range(min(args.calib_inputs, len(calib))))
    scores = channel_scores(model, args.criterion, data=calib, seed=args.seed, max_inputs=args.calib_inputs)
    plan = make_plan(scores, args.ratio, scope="global" if args.global_ else "per_block", round_to=args.round,
                     criterion=args.criterion, min_keep=min_keep_for(model))
    means = None
    if args.compensate:
        cal = run_dataset(run, None, "train")
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
                       batch_size=args.batch_size, out_dir=out, meta=meta, progress="plain", val_ds=val_ds)
        summary["acc_finetuned"] = row.get("test_acc")
        summary["acc_finetuned_at_best_val"] = row.get("test_acc_at_best")  # the epoch the val split chose
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
    """Add `prune` to the mbconv CLI."""
    sp = add("prune", cmd_prune, "remove expanded channels of MBConv blocks; writes a smaller run")
    sp.add_argument("--checkpoint", type=text, required=True, help="run directory or checkpoint directory")
    sp.add_argument("--criterion", choices=CRITERIA, required=True)
    sp.add_argument("--ratio", type=fraction, required=True, help="fraction of expanded channels to remove")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--per-block", dest="global_", action="store_false", help="same ratio in every block (default)")
    g.add_argument("--global", dest="global_", action="store_true", help="lowest scores across all blocks")
    sp.set_defaults(global_=False)  # store_false's implicit default would be True
    sp.add_argument("--round", type=positive_int, default=1, help="keep a multiple of this many channels")
    sp.add_argument("--finetune-epochs", type=nonnegative_int, default=0)
    sp.add_argument("--lr", type=positive_float, default=1e-3, help="fine-tune learning rate (AdamW, cosine)")
    sp.add_argument("--batch-size", type=positive_int, default=64)
    sp.add_argument("--calib-inputs", type=positive_int, default=1000,
                    help="training inputs whose gates score channels (gate criteria) / give channel means")
    sp.add_argument("--compensate", action="store_true",
                    help="fold the removed channels' mean contribution into the project BN and SE bias")
    sp.add_argument("--seed", type=integer, default=0)
    sp.add_argument("--out", type=text, required=True, help="new run directory for the pruned model")
