"""Tour chapter "hardware": this machine's roofline, EfficientNet-B0's layers on it (measured per-layer latency
beside the roofline prediction), and latency-constrained compound scaling (MnasNet-style: a real-time budget).

Budget: about 10 s (B0 at 224 px) and about 5 s with ``--quick`` (B0 at 96 px), one thread.
"""

from __future__ import annotations

from ..report import write_json
from .context import TourContext, torch_threads


def chapter_hardware(ctx: TourContext) -> None:
    from ..latency_search import fig_latency_search, latency_search
    from ..net import MBConvNet
    from ..roofline import fig_roofline, measure_machine, profile_model
    from ..zoo import get_spec

    ch = ctx.report.chapter("Design meets hardware: roofline, per-layer latency and a latency budget")
    ctx.log("hardware chapter")
    out = ctx.out / "hardware"
    with torch_threads(1):  # reproducible on a shared machine, and the roofs are measured the same way
        machine = measure_machine(1, seconds=1.0)
        spec = get_spec("efficientnet_b0")
        res = 96 if ctx.quick else 224
        rf = profile_model(MBConvNet(spec), res, machine=machine, rounds=5 if ctx.quick else 10, threads=1)
        # quick: twice B0 at 96 px (a margin, so machine noise cannot push the smallest phi over the budget)
        budget = 2 * rf.latency_ms if ctx.quick else rf.latency_ms / 2
        try:
            search = latency_search(spec, budget, rounds=5, log=ctx.log)
        except ValueError as e:  # a loaded machine can make even the smallest model miss: report, don't crash
            search = None
            ctx.log(f"latency search: {e}")
    write_json(out / "roofline_b0.json", rf.to_dict())
    if search is not None:
        write_json(out / "latency_search.json", search.to_dict())
    ridge = machine["ridge_macs_per_byte"]
    ch.text(f"This machine, one thread, measured in this run: fp32 matmul peak {machine['peak_gflops']:.1f} GFLOP/s, "
            f"copy bandwidth {machine['bandwidth_gbs']:.1f} GB/s, so a layer needs more than {ridge:.2f} MACs per "
            f"byte moved (fp32) to be compute-bound. Each layer's bytes count its input, output and weights once "
            f"(no cache reuse between ops); its predicted time is max(2 MACs / peak, bytes / bandwidth) "
            f"(mbconv.roofline).")
    ch.text(f"EfficientNet-B0 at {res} px, batch 1, on the inference path (BN folded, in-place ops, channels_last): "
            f"{rf.macs / 1e6:.1f} M MACs, {rf.latency_ms:.2f} ms measured (median), {rf.predicted_ms:.2f} ms "
            f"predicted by the roofline. Memory-bound layers take {100 * rf.share('memory'):.0f} % of the measured "
            f"layer time ({100 * rf.share('memory', measured=False):.0f} % of the predicted) while holding "
            f"{100 * sum(r.macs for r in rf.rows if r.bound == 'memory') / rf.macs:.0f} % of the MACs. "
            f"Tiny layers (SE convs on a 1x1 map) sit far below both roofs: a fixed per-op cost of a few "
            f"microseconds, which the roofline does not model, dominates them.")
    ch.table("Time by layer kind (measured self time per module with timing hooks, median of rounds; MAC/B = "
             "MACs per fp32 byte of the kind as a whole)",
             ["kind", "layers", "MACs (M)", "MAC/B", "memory-bound layers", "predicted ms", "measured ms"],
             [[d["kind"], d["rows"], d["macs"] / 1e6, d["intensity_fp32"], d["memory_bound_rows"], d["predicted_ms"],
               d["measured_ms"]] for d in rf.by_kind()])
    top = sorted(rf.rows, key=lambda r: -(r.measured_ms or 0))[:10]
    ch.table("The ten slowest layers", ["layer", "kind", "MACs", "MAC/B fp32", "MAC/B int8", "bound",
                                        "predicted ms", "measured ms"],
             [[r.name, r.kind, r.macs, r.intensity_fp32, r.intensity_int8, r.bound, r.predicted_ms, r.measured_ms]
              for r in top])
    ch.figure(f"EfficientNet-B0 at {res} px on this machine's roofline (left) and measured vs predicted time per "
              f"layer (right)", fig_roofline(rf, out / "fig_roofline_b0.png"))
    if search is None:
        ch.text(f"Latency-constrained compound scaling: no compound-scaled B0 met the {budget:.2f} ms budget in this "
                f"run (the machine was too loaded); `mbconv scale --base efficientnet_b0 --latency-ms X` runs it.")
        ctx.state["hardware"] = {"machine": machine, "memory_share": rf.share("memory"), "best_phi": None}
        return
    b = search.best
    nxt = search.next_over
    ch.text(f"Latency-constrained compound scaling (mbconv scale --base efficientnet_b0 --latency-ms "
            f"{budget:.1f}): the budget is {'twice B0 at 96 px' if ctx.quick else 'half of B0 at 224 px'} = "
            f"{budget:.2f} ms. The largest compound-scaled B0 (alpha, beta, gamma = 1.2, 1.1, 1.15) that meets it "
            f"here is phi = {b['phi']:g}: {b['resolution']} px, width x{b['width']:.3g}, depth x{b['depth']:.3g}, "
            f"{b['macs'] / 1e6:.0f} M MACs, {b['latency_ms']:.2f} ms"
            + (f"; phi = {nxt['phi']:g} takes {nxt['latency_ms']:.2f} ms." if nxt else f". {search.note}"))
    ch.figure("Median latency of every timed phi against its MACs, with the budget",
              fig_latency_search(search, out / "fig_latency_search.png"))
    ctx.state["hardware"] = {"machine": machine, "memory_share": rf.share("memory"), "best_phi": b["phi"]}

