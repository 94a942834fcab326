"""Tour chapter "stability": Jacobian spectra and gradient profiles per scaling strategy at equal MACs, the
condition number of the tour's trained net, and the verdicts of Experiments D and E when their results exist."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .. import stability as S
from ..report import plt, savefig, write_json
from ..scaling_search import equal_cost_family
from .context import TourContext


def strategy_study(quick: bool, seed: int = 0) -> dict[str, Any]:
    """The small 1-D base scaled x2 by each strategy, measured at init (BN calibrated on data)."""
    from ..data import load_dataset

    # quick (tests): a shorter base keeps every exact spectrum at <= 640 dims
    base = S.comparison_base_spec(length=20) if quick else S.comparison_base_spec()
    fam = {"base": (base, {"ratio": 1.0})}
    fam.update(equal_cost_family(base, 2.0))
    variants = ("bn_res",) if quick else ("bn_res", "nobn_res", "bn_nores")
    out: dict[str, Any] = {"variants": {}, "specs": {}}
    for name, (spec, info) in fam.items():
        out["specs"][name] = {"blocks": spec.num_blocks, "width": spec.stages[0].out_chs, "length": spec.resolution,
                              "macs_ratio": info["ratio"], "sum_inv_width": S.sum_inverse_width(spec)}
    gen = torch.Generator().manual_seed(seed)
    for v in variants:
        rows = {}
        for name, (spec, _) in fam.items():
            if quick:  # N(0, 1) signals and random labels: loading MNIST-1D alone costs ~6 s
                xs = torch.randn(128, 1, spec.resolution, generator=gen)
                ys = torch.randint(0, 10, (128,), generator=gen)
            else:
                ds = load_dataset("mnist1d", "train", resolution=spec.resolution)
                xs = torch.stack([ds[i][0] for i in range(128)])
                ys = torch.as_tensor([int(ds[i][1]) for i in range(128)])
            model = S.build_variant(spec, v, seed)
            S.calibrate_batchnorm(model, xs)
            st = S.trunk_stats(model, xs[: 2 if quick else 4], probes=4 if quick else 8, block_gains=False,
                               exact_limit=1500, seed=seed)
            gp = S.gradient_profile(model, xs[:64], ys[:64], seed=seed)
            rows[name] = {"svals": [float(s) for s in st["svals"]], "std_log_sigma": st["std_log_sigma"],
                          "kappa": st["kappa"], "log_norm_var": st["log_norm_var"], "mean_sq": st["mean_sq"],
                          "act_grad": [r["act_grad"] for r in gp], "dim": st["dim"]}
        out["variants"][v] = rows
    return out


def _figures(study: dict[str, Any], out: Path) -> tuple[Path, Path]:
    p = plt()
    variants = list(study["variants"])
    fig, ax = p.subplots(1, len(variants), figsize=(max(6.5, 4.5 * len(variants)), 3.8), squeeze=False)
    for j, v in enumerate(variants):
        for name, r in study["variants"][v].items():
            s = r["svals"]
            ax[0][j].plot([i / (len(s) - 1) for i in range(len(s))], [math.log10(max(x, 1e-300)) for x in s],
                          label=name)
        ax[0][j].set_title(f"{S.VARIANTS[v]}", fontsize=9)
        ax[0][j].set_xlabel("rank / n")
        ax[0][j].set_ylabel("log10 sigma")
    ax[0][0].legend(fontsize=7)
    fig.suptitle("Trunk Jacobian spectra at init, equal MACs (x2), one seed", fontsize=10)
    spectra = savefig(fig, out / "fig_stability_spectra.png")
    fig, ax = p.subplots(1, len(variants), figsize=(max(6.5, 4.5 * len(variants)), 3.8), squeeze=False)
    for j, v in enumerate(variants):
        for name, r in study["variants"][v].items():
            g = r["act_grad"]
            ax[0][j].plot([(i + 1) / len(g) for i in range(len(g))], g, marker=".", label=name)
        ax[0][j].set_yscale("log")
        ax[0][j].set_title(f"{S.VARIANTS[v]}", fontsize=9)
        ax[0][j].set_xlabel("block / blocks")
        ax[0][j].set_ylabel("||dL/dh|| (block output)")
    ax[0][0].legend(fontsize=7)
    fig.suptitle("Per-block gradient profile at init (cross-entropy on 64 samples)", fontsize=10)
    grads = savefig(fig, out / "fig_stability_grads.png")
    return spectra, grads


def _tour_condition(ctx: TourContext) -> dict[str, Any] | None:
    run = ctx.state.get("tour_run")
    if not run:
        return None
    from ..data import load_dataset
    from ..workflow import load_run

    model, meta, ck = load_run(run)
    d = meta["data"]
    x = load_dataset(d["name"], "test", resolution=d["resolution"])[0][0][None]
    t0 = time.time()
    res = S.network_condition(model, x, exact_limit=512 if ctx.quick else 2048, k=20)
    res["seconds"] = time.time() - t0
    res["checkpoint"] = str(ck)
    return res


def verdicts(results: Path) -> list[list[Any]]:
    """Rows (claim, mode, rule outcome, summary file) of Experiments D and E found under `results`."""
    rows = []
    for name, claim in (("scaling_stability", "(d) compound vs depth-only conditioning"),
                        ("kernel_vs_resolution", "(e) larger kernels at higher resolution")):
        for suffix, label in (("", "full"), ("_quick", "quick (preliminary)")):
            f = results / f"{name}{suffix}" / "summary.json"
            if f.exists():
                out = json.loads(f.read_text()).get("rule_outcome")
                if isinstance(out, dict):  # Experiment D: one outcome per MAC factor
                    out = "; ".join(f"{k}: {v['outcome'] if isinstance(v, dict) else v}" for k, v in out.items())
                rows.append([claim, label, str(out), str(f)])
    return rows


def chapter_stability(ctx: TourContext) -> None:
    ch = ctx.report.chapter("Stability: Jacobian spectra, gradient profiles and scaling at equal cost")
    ctx.log("stability: spectra per scaling strategy")
    ch.text("The design frames exploding/vanishing gradients as a product of block Jacobians (1.05^100 = 131, "
            "0.95^100 = 0.006) and claims that compound scaling keeps the product better behaved than depth-only "
            "scaling. Below, a small 1-D MBConv-SE net (stem + 4 shape-keeping blocks, "
            + ("C = 16, length 20 in quick mode" if ctx.quick else "C = 16, MNIST-1D length 40") + ") is "
            "scaled to 2x its MACs (within 3 %, exact cost) by depth, width, resolution, EfficientNet compound and "
            "dWr (Dollar et al. 2021); its whole trunk is one square map, so its Jacobian spectrum is exact "
            "(eval mode, BN statistics calibrated on the inputs, double precision, one seed). Inputs: "
            + ("N(0, 1) signals and random labels (quick mode)." if ctx.quick else "MNIST-1D training signals.")
            + " Experiment D repeats this over seeds, variants and training (see the verdicts below).")
    study = strategy_study(ctx.quick)
    write_json(ctx.out / "stability_strategies.json", study)
    for v, rows in study["variants"].items():
        ch.table(f"{S.VARIANTS[v]}: trunk Jacobian at init (Var[log||Ju||^2] over inputs and random directions; "
                 "sum 1/width is Hanin & Nica's predictor of that variance in plain nets)",
                 ["strategy", "blocks", "C", "length", "MACs x", "sum 1/width", "dim", "std log sigma", "kappa",
                  "Var[log||Ju||^2]", "mean sigma^2"],
                 [[name, study["specs"][name]["blocks"], study["specs"][name]["width"], study["specs"][name]["length"],
                   study["specs"][name]["macs_ratio"], study["specs"][name]["sum_inv_width"], r["dim"],
                   r["std_log_sigma"], r["kappa"], r["log_norm_var"], r["mean_sq"]] for name, r in rows.items()])
    spectra, grads = _figures(study, ctx.out)
    ch.figure("Singular values of the trunk Jacobian per strategy (sorted, log scale)", spectra)
    ch.figure("Gradient norm at each block's output per strategy", grads)

    cond = _tour_condition(ctx)
    if cond is None:
        ch.text("The tour model's condition number needs the training chapter (ctx.state['tour_run']); run the "
                "tour with the 'train' chapter to see it.")
    else:
        ctx.log("stability: condition number of the tour model")
        lg = cond["logits"]
        write_json(ctx.out / "stability_tour_condition.json",
                   {"logits": {k: v for k, v in lg.items() if k != "svals"}, "runs": cond["runs"],
                    "seconds": cond["seconds"], "checkpoint": cond["checkpoint"]})
        ch.text(f"Tour model ({cond['checkpoint']}), one test image, eval mode with BN folded: the input -> logits "
                f"Jacobian has {lg['n']} nonzero singular values from {lg['sigma_max']:.4g} to {lg['sigma_min']:.4g}, "
                f"so its condition number sigma_1/sigma_K is {lg['kappa']:.4g} ({lg['method']}; "
                f"{cond['seconds']:.1f} s). The end-to-end map is rank-deficient over its input space (pooling, "
                "strides), so square block runs give the classical kappa:"
                + (" (quick mode: the model was trained for 20 steps only)" if ctx.quick else ""))
        ch.table("Square runs of blocks of the tour model (stride 1, same channels)",
                 ["first", "last", "blocks", "dim", "sigma_max", "sigma_min", "kappa", "std log sigma", "method"],
                 [[r["first"], r["last"], r["blocks"], r["dim"], r["sigma_max"], r["sigma_min"], r["kappa"],
                   r["std_log_sigma"], r["method"]] for r in cond["runs"]])
    if ctx.results is None:
        ch.text("Experiments D and E: skipped (no results folder given; `mbconv tour --results experiments/results` "
                "shows their rule outcomes). Their verdicts are in docs/claims.md.")
        return
    rows = verdicts(ctx.results)
    if rows:
        ch.table("Experiments D and E: outcome of the pre-registered rules (docs/claims/); the verdicts with "
                 "their caveats are in docs/claims.md", ["claim", "mode", "rule outcome", "results"], rows)
    else:
        ch.text(f"Experiments D and E have no results in {ctx.results} (experiments/scaling_stability.py, "
                "experiments/kernel_vs_resolution.py); their verdicts are in docs/claims.md.")

