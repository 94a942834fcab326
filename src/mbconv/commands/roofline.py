"""`mbconv roofline NAME` (per-layer arithmetic intensity vs this machine's roofline, with measured per-layer
latency) and the latency-constrained search behind `mbconv scale --base NAME --latency-ms X`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_args import add_model_arguments, model_from_args, positive_int, text


def cmd_roofline(args: argparse.Namespace) -> int:
    import torch

    from ..report import write_json
    from ..roofline import fig_roofline, format_layer_table, measure_machine, profile_model

    torch.set_num_threads(args.threads)
    src = model_from_args(args)
    model, res, what = src.model, src.resolution, src.description
    machine = measure_machine(args.threads)
    rf = profile_model(model, res, batch=args.batch, machine=machine, rounds=args.rounds, threads=args.threads,
                       name=str(what))
    m = rf.machine
    print(f"{rf.name} at {res}px, batch {args.batch}, {args.threads} thread(s), inference path: "
          f"{rf.extra['inference_path']}")
    print(f"machine: fp32 matmul peak {m['peak_gflops']:.1f} GFLOP/s, copy bandwidth {m['bandwidth_gbs']:.1f} GB/s "
          f"-> ridge {m['ridge_macs_per_byte']:.2f} MACs/byte (fp32 layers below it are memory-bound)")
    print(format_layer_table(rf, top=args.top))
    print(f"{len(rf.rows)} layers, {rf.macs / 1e6:.1f} M MACs; latency {rf.latency_ms:.2f} ms (median, no hooks); "
          f"sum of per-layer times {rf.hooked_total_ms:.2f} ms (with hooks, {rf.overhead_ms:.2f} ms of it "
          f"outside any op); roofline prediction {rf.predicted_ms:.2f} ms")
    print(f"memory-bound layers: {100 * rf.share('memory', True):.1f} % of measured layer time "
          f"({100 * rf.share('memory', False):.1f} % of predicted)")
    kinds = ", ".join(f"{d['kind']} {d['measured_ms']:.2f} ms ({d['intensity_fp32']:.2f} MAC/B)"
                      for d in rf.by_kind())
    print(f"by kind: {kinds}")
    out = Path(args.out or f"results/roofline/{Path(str(what)).name}")
    write_json(out / "roofline.json", rf.to_dict())
    try:
        fig = fig_roofline(rf, out / "fig_roofline.png")
        print(f"-> {out / 'roofline.json'}, {fig}")
    except ImportError as e:  # matplotlib is an extra
        print(f"-> {out / 'roofline.json'} (no figure: {e})")
    return 0


def latency_scale(base: Any, args: argparse.Namespace) -> int:
    """`mbconv scale --base NAME --latency-ms X`: the largest compound-scaled model meeting the budget here."""
    import torch

    from ..latency_search import latency_search

    threads = getattr(args, "threads", None) or 1
    torch.set_num_threads(threads)
    batch = getattr(args, "batch", None) or 1
    r = latency_search(base, args.latency_ms, batch=batch, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
                       log=None if args.json else print)
    if args.json:
        print(json.dumps(r.to_dict(), indent=1))
        return 0
    b = r.best
    print(f"{base.name}, budget {r.budget_ms:g} ms at batch {batch}, {threads} thread(s), eager inference path: "
          f"phi {b['phi']:g} -> {b['resolution']}px, width x{b['width']:.3g}, depth x{b['depth']:.3g}, "
          f"{b['params']:,} params, {b['macs'] / 1e6:.1f} M MACs, {b['latency_ms']:.2f} ms")
    if r.next_over:
        n = r.next_over
        print(f"  next phi {n['phi']:g} ({n['resolution']}px, {n['macs'] / 1e6:.1f} M MACs) takes "
              f"{n['latency_ms']:.2f} ms: over budget")
    if r.note:
        print(f"  note: {r.note}")
    return 0


def register(add: Any) -> None:
    sp = add("roofline", cmd_roofline, "per-layer arithmetic intensity vs this machine's roofline (matmul peak, "
                                       "copy bandwidth) with measured per-layer latency")
    add_model_arguments(sp, name="optional", resolution=True)
    sp.add_argument("--threads", type=positive_int, default=1)
    sp.add_argument("--batch", type=positive_int, default=1)
    sp.add_argument("--rounds", type=positive_int, default=10, help="timed runs (median)")
    sp.add_argument("--top", type=positive_int, default=25, help="rows to print, slowest first")
    sp.add_argument("--out", type=text,
                    help="folder for roofline.json and fig_roofline.png (default results/roofline/NAME)")

