"""`mbconv signals`: train and cost the 1-D / 3-D models on their bundled tasks (MNIST-1D, EEG, digit volumes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_args import integer, nonnegative_int, positive_int, text
from ..model_source import check_size, spec_from_name

TASKS = ("mnist1d", "eeg", "volumes", "sources")


def cmd_signals(args: argparse.Namespace) -> int:
    import torch

    from .. import zoo_nd
    from ..data_nd import load_eeg_electrodes, load_signal_task, load_volumes, signal_sources
    from ..workflow import fit_spec

    if args.threads:
        torch.set_num_threads(args.threads)  # small nets: one thread is fastest on a shared machine
    if args.task == "sources":
        src = signal_sources()
        if args.json:
            print(json.dumps(src, indent=1))
        else:
            for name, d in src.items():
                print(f"{'found  ' if d['available'] else 'missing'}  {name}: {d['note']}")
        return 0
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"invalid --epochs {args.epochs}: must be >= 1")
    custom = None if args.model is None else check_size(spec_from_name(args.model))  # before loading any data
    out = Path(args.out)
    steps = 10 if args.quick else 0
    runs: list[tuple[str, Any, Any, Any, int]] = []  # (tag, spec, train, test, batch)
    if args.task == "mnist1d":
        tr, te = load_signal_task("mnist1d", seed=args.seed, shuffled=args.shuffled)
        spec = zoo_nd.mbconv1d_se4_spec() if args.model is None else custom
        runs.append((spec.name + ("_shuffled" if args.shuffled else ""), spec, tr, te, 64))
        epochs = args.epochs or 20
    elif args.task == "eeg":
        tr, te = load_eeg_electrodes(window=args.window)
        spec = zoo_nd.mbconv1d_se4_spec(num_classes=4) if args.model is None else custom
        runs.append((spec.name, spec, tr, te, 32))
        epochs = args.epochs or 15
    else:
        tr, te = load_volumes(args.source, args.size, augment=True)
        specs = [zoo_nd.mbconv3d_small_spec(), zoo_nd.cnn3d_plain_spec()] if args.model is None else \
            [custom]
        runs += [(s.name, s, tr, te, 32) for s in specs]
        epochs = args.epochs or 15
    rows = []
    for tag, spec, tr_, te_, batch in runs:
        r = fit_spec(spec, tr_, te_, out / f"{args.task}_{tag}_s{args.seed}", epochs, seed=args.seed,
                     max_steps=steps, batch_size=batch, progress="plain" if args.verbose else "none")
        r.pop("key", None)
        rows.append(r)
        if not args.json:
            print(f"{args.task}: {tag}: test accuracy {100 * r['final_acc']:.2f} % after {r['epochs_done']} "
                  f"epoch(s) ({len(tr_)} train / {len(te_)} test, {tr_.info.dims}-D {tuple(tr_.x.shape[1:])}); "
                  f"params {r['params']:,}, MACs {r['macs']:,}; trained {r['train_seconds']:.0f} s -> "
                  f"{out / f'{args.task}_{tag}_s{args.seed}'}")
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "history"} for r in rows]))
    if args.quick and not args.json:
        print("(--quick: a few training steps only; the accuracies are not meaningful)")
    return 0


def register(add: Any) -> None:
    """Add `mbconv signals` to the CLI."""
    sp = add("signals", cmd_signals, "1-D and 3-D MBConv on bundled tasks: MNIST-1D, the bundled EEG, digit volumes")
    sp.add_argument("--task", choices=TASKS, default="mnist1d",
                    help="mnist1d (benchmark) | eeg (matplotlib's bundled EEG, windowed) | volumes (synthetic 3-D) | "
                         "sources (list the bundled 1-D recordings)")
    sp.add_argument("--model", type=text, default=None,
                    help="zoo name (default: mbconv1d_se4; volumes: MBConv and plain CNN)")
    sp.add_argument("--epochs", type=positive_int, default=None)
    sp.add_argument("--seed", type=integer, default=0)
    sp.add_argument("--shuffled", action="store_true", help="mnist1d: the spatially shuffled control")
    sp.add_argument("--window", type=positive_int, default=160, help="eeg: window length in samples")
    sp.add_argument("--source", choices=("digits8", "mnist5k"), default="digits8", help="volumes: the digits")
    sp.add_argument("--size", type=positive_int, default=None, help="volumes: side of the cube")
    sp.add_argument("--out", type=text, default="results/signals")
    sp.add_argument("--quick", action="store_true", help="10 training steps per model (smoke test)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--verbose", action="store_true", help="one line per epoch")
    sp.add_argument("--threads", type=nonnegative_int, default=1,
                    help="torch intra-op threads (default 1: these small nets train fastest on one thread, and "
                         "several threads on a busy machine can be 10x slower); 0 = torch's default")
