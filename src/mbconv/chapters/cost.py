"""Tour chapter "cost": standard vs depthwise-separable vs MBConv for one layer, and the EfficientNet B0-B7 family
beside the paper (all exact and analytic)."""

from __future__ import annotations

from typing import Any

from ..cost import NetCost, compare_layer, spec_cost
from ..report import fig_component_breakdown, fig_family, write_json
from ..zoo import EFFICIENTNET_PARAMS, PAPER_B_SERIES, get_spec
from .context import TourContext

__all__ = ["family_table", "chapter_cost", "block_breakdown"]


def family_table() -> list[dict[str, Any]]:
    """B0-B7 at native resolution: exact params and MACs next to the paper's numbers."""
    rows = []
    for v in [k for k in EFFICIENTNET_PARAMS if k in PAPER_B_SERIES]:
        spec = get_spec(f"efficientnet_{v}")
        c = spec_cost(spec)
        pp, pm = PAPER_B_SERIES[v]
        rows.append(dict(model=spec.name, resolution=spec.resolution, width=EFFICIENTNET_PARAMS[v][0],
                         depth=EFFICIENTNET_PARAMS[v][1], blocks=spec.num_blocks, params=c.params, macs=c.macs,
                         paper_params_M=pp, paper_macs_G=pm))
    return rows


def chapter_cost(ctx: TourContext) -> None:
    ch = ctx.report.chapter("Cost: standard vs depthwise-separable vs MBConv, and the EfficientNet family")
    ctx.log("cost story")
    ch.text("Every number here is exact and analytic (mbconv.cost.spec_cost), computed from the spec alone; "
            "tests check that it equals torch's FlopCounterMode on a real forward pass for every zoo model.")
    rows = []
    for dims in (1, 2, 3):
        for cout in (32, 64, 128, 256, 512):
            r = compare_layer(cout, cout, 3, dims, resolution={1: 1024, 2: 32, 3: 10}[dims], t=6)
            rows.append([dims, 3, cout, r["standard"]["macs"], r["separable"]["macs"], r["mbconv"]["macs"],
                         r["separable"]["ratio_vs_standard"], r["formula"]["ratio_std_sep"]])
    ch.table("One layer, k=3, stride 1, Cin = Cout: MACs and the standard/separable ratio vs the closed form "
             "k^D Cout / (k^D + Cout). The '8-9x' of MobileNet holds only for Cout >= ~100 in 2-D.",
             ["dims", "k", "Cout", "standard", "separable", "MBConv t=6", "std/sep", "formula"], rows)
    trows = []
    for t in (1, 2, 3, 4, 6, 8):
        r = compare_layer(40, 40, 3, 2, 1, t)
        pw = r["mbconv"]["macs"] - 9 * round(40 * t)
        trows.append([t, r["mbconv"]["params"], r["mbconv"]["macs"], 100 * pw / r["mbconv"]["macs"]])
    ch.table("MBConv cost per output pixel is linear in the expansion ratio t (d'=d''=40, k=3): "
             "t*40*(40+9+40) MACs; the pointwise share is constant (89.9 %).",
             ["t", "params", "MACs/pixel", "pointwise %"], trows)

    fam = family_table()
    write_json(ctx.out / "cost_family.json", fam)
    ch.table("EfficientNet B0-B7 by compound scaling of one B0 spec (params for 1000 classes; MACs at native "
             "resolution) beside the paper. The paper's MACs are rounded and B4-B7 slightly undercounted "
             "(thop measures the same excess).",
             ["model", "res", "width", "depth", "blocks", "params", "paper M", "MACs (G)", "paper G"],
             [[r["model"], r["resolution"], r["width"], r["depth"], r["blocks"], r["params"], r["paper_params_M"],
               r["macs"] / 1e9, r["paper_macs_G"]] for r in fam])
    ch.figure("B0-B7: exact params and MACs vs the paper", fig_family(fam, ctx.out / "fig_family.png"))

    b0 = spec_cost(get_spec("efficientnet_b0"))
    comp = b0.by_component()
    pw = comp["expand"]["macs"] + comp["project"]["macs"] + comp["head"]["macs"]
    conv_macs = b0.macs
    ch.text(f"EfficientNet-B0: {b0.params:,} params, {b0.macs / 1e6:.1f} M MACs at 224 px. Pointwise (1x1 "
            f"expand, project, head) convs are {100 * pw / conv_macs:.1f} % of all MACs, depthwise "
            f"{100 * comp['depthwise']['macs'] / conv_macs:.1f} %, SE {100 * comp['se']['macs'] / b0.macs:.2f} % "
            f"of MACs but {100 * comp['se']['params'] / b0.params:.1f} % of params.")
    blocks = block_breakdown(b0)
    ch.figure("EfficientNet-B0 MACs per block by component", fig_component_breakdown(
        blocks, ctx.out / "fig_b0_blocks.png", "EfficientNet-B0 at 224 px: MACs per block"))
    write_json(ctx.out / "cost_b0.json", b0.to_dict(per_layer=True))
    ctx.state["family"] = fam


def block_breakdown(cost: NetCost) -> list[dict[str, Any]]:
    """MACs per block ("stem", "b0", "b1", ..., "head"), split by component, for `fig_component_breakdown`."""
    rows: dict[str, dict[str, Any]] = {}
    for l in cost.layers:
        label = "stem" if l.block is None and l.component == "stem" else (
            "head" if l.block is None else f"b{l.block}")
        r = rows.setdefault(label, {"label": label})
        r[l.component] = r.get(l.component, 0) + l.macs
    return list(rows.values())
