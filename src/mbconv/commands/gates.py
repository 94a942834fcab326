"""`mbconv gates`: SE gate statistics of a trained run (per-block table, figures, gates.json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_args import finite_float, positive_int, text
from ..model_source import model_from_source, run_dataset


def cmd_gates(args: argparse.Namespace) -> int:
    from ..gates import (
        fig_channel_stats,
        fig_histograms_by_depth,
        format_gate_table,
        gate_stats,
        record_gates,
        summarize,
    )
    from ..report import write_json

    if not 0.0 <= args.low <= 1.0 or not 0.0 <= args.high <= 1.0:
        raise ValueError(f"invalid --low {args.low} / --high {args.high}: gate thresholds must be in [0, 1]")
    src = model_from_source(checkpoint=args.checkpoint)
    model, run, ck = src.model, src.run or {}, src.checkpoint
    ds = run_dataset(run, args.data, args.split)
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
        print(format_gate_table(stats))
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


def register(add: Any) -> None:
    """Add `gates` to the mbconv CLI."""
    sp = add("gates", cmd_gates, "SE gate statistics of a trained run: per-block table and figures")
    sp.add_argument("--checkpoint", type=text, required=True, help="run directory or checkpoint directory")
    sp.add_argument("--data", type=text, help="dataset (default: the run's own)")
    sp.add_argument("--split", choices=("test", "val", "train"), default="test")
    sp.add_argument("--max-inputs", type=positive_int, default=None)
    sp.add_argument("--low", type=finite_float, default=0.05, help="suppressed: p99 of the gate below this")
    sp.add_argument("--high", type=finite_float, default=0.95, help="saturated: p1 of the gate above this")
    sp.add_argument("--out", type=text, help="folder for gates.json and figures (default: RUN/gates)")
    sp.add_argument("--no-figures", action="store_true")
    sp.add_argument("--json", action="store_true")
