"""Tour chapter "signals": the same MBConv code on 1-D signals and 3-D volumes.

Its nets are trained by :func:`mbconv.workflow.fit_spec`, the cached train-and-measure step it shares with
``mbconv signals`` and ``experiments/mnist1d_benchmark.py`` / ``experiments/volumes3d.py``.

Budget: about 90 s in full mode (small nets, a few epochs each) and about 10 s with ``--quick`` (a few steps per
net; accuracies are then meaningless and not asserted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cost import compare_layer, spec_cost
from ..report import plt, savefig, write_json
from ..workflow import fit_spec
from .context import TourContext


def separable_ratio_rows(cout_list: tuple[int, ...] = (16, 32, 64, 128, 256), kernel: int = 3) -> list[list[Any]]:
    """One 3-D layer: measured standard/separable MAC ratio vs the closed form k^3 C / (k^3 + C)."""
    rows = []
    for c in cout_list:
        r = compare_layer(c, c, kernel, 3, resolution=16, t=6)
        kd = kernel**3
        rows.append([c, r["standard"]["macs"], r["separable"]["macs"], r["separable"]["ratio_vs_standard"],
                     kd * c / (kd + c)])
    return rows


def _fig_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    p = plt()
    fig, ax = p.subplots(figsize=(6.5, 3.6))
    for name, hist in curves.items():
        pts = [(h["epoch"] + 1, 100 * h["test_acc"]) for h in hist if h.get("test_acc") is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return savefig(fig, path)


def chapter_signals(ctx: TourContext) -> None:
    """1-D (MNIST-1D, bundled EEG) and 3-D (synthetic digit volumes) models trained and costed by the same code."""
    from .. import zoo_nd
    from ..data_nd import load_eeg_electrodes, load_signal_task, load_volumes, signal_sources
    from ..zoo import get_spec

    ch = ctx.report.chapter("Beyond 2-D: MBConv on 1-D signals and 3-D volumes")
    ctx.log("signals chapter")
    out = ctx.out / "signals"
    quick = ctx.quick
    ch.text("The dimension is one field of the spec (dims = 1, 2 or 3): the 1-D and 3-D networks below are built, "
            "costed, trained and checkpointed by exactly the code that runs EfficientNet-B0 in 2-D.")
    fam = []
    for n in [f"efficientnet1d_{v}" for v in ("b0", "b3", "b7")] + ["mbconv1d_se4", "cnn1d_plain"] + \
            [f"efficientnet3d_{v}" for v in ("b0", "b3", "b7")] + ["mbconv3d_small", "cnn3d_plain"]:
        s = get_spec(n)
        c = spec_cost(s)
        fam.append([n, s.dims, s.resolution, s.num_blocks, c.params, c.macs / 1e6])
    ch.table("Some 1-D and 3-D zoo entries at their default size (exact analytic cost).",
             ["model", "dims", "size", "blocks", "params", "MMACs"], fam)
    ch.table("One 3-D layer (k=3, Cin=Cout=C, 16^3 voxels): standard / depthwise-separable MACs equals the closed "
             "form k^3 C / (k^3 + C); it approaches 27 for wide layers (2-D: 9).",
             ["C", "standard MACs", "separable MACs", "ratio", "k^3C/(k^3+C)"], separable_ratio_rows())

    steps = 5 if quick else 0  # quick: a few optimiser steps per net (tests run it; accuracy meaningless)
    results: dict[str, Any] = {"quick": quick, "sources": signal_sources()}
    # MNIST-1D, and the shuffled control.
    tr, te = load_signal_task("mnist1d", seed=0)
    trs, tes = load_signal_task("mnist1d", seed=0, shuffled=True)
    se4 = zoo_nd.mbconv1d_se4_spec()
    r_m = fit_spec(se4, tr, te, out / "mnist1d_se4", 1 if quick else 5, max_steps=steps)
    r_s = fit_spec(se4, trs, tes, out / "mnist1d_se4_shuffled", 1 if quick else 3, max_steps=steps)
    results["mnist1d"] = {"mbconv": r_m, "shuffled": r_s}
    ch.text(f"MNIST-1D (3601 train / 399 validation / 1000 test signals of length 40): the 4-block 1-D MBConv-SE net "
            f"({r_m['params']:,} params, {r_m['macs'] / 1e6:.2f} M MACs) after {r_m['epochs_done']} epoch(s) here: "
            f"{100 * r_m['final_acc']:.1f} % test accuracy; with the positions shuffled by one fixed permutation "
            f"({r_s['epochs_done']} epochs): {100 * r_s['final_acc']:.1f} %. The MNIST-1D paper reports 94 % for "
            f"its CNN (56 % shuffled), 68 % for an MLP. The full 5-seed benchmark is "
            f"experiments/mnist1d_benchmark.py (docs/bench/nd.md)."
            + (" (quick mode: a few steps only, accuracies are not meaningful)" if quick else ""))

    # The bundled real recording.
    src = results["sources"]
    found = [k for k, v in src.items() if v["available"]]
    ch.text("Bundled 1-D recordings found offline: " + (", ".join(found) or "none") + ". No ECG or audio recording "
            "ships with the installed packages (scipy's electrocardiogram needs a download; its .wav files are "
            "format-test fixtures). The real-signal use case is therefore matplotlib's 4-channel EEG sample: which "
            "electrode recorded a 160-sample window, train and test from disjoint time spans (chance 25 %); the "
            "test span holds only ~2 independent windows per electrode, so this shows the pipeline, not a result.")
    eeg = None
    try:
        etr, ete = load_eeg_electrodes()
        eeg = fit_spec(zoo_nd.mbconv1d_se4_spec(num_classes=4), etr, ete, out / "eeg_se4", 1 if quick else 10,
                       max_steps=steps, batch_size=32)
        results["eeg"] = eeg
        ch.table("EEG electrode identification (matplotlib sample_data/eeg.dat, windowed by mbconv.data_nd)",
                 ["train windows", "test windows", "epochs", "test acc %", "chance %"],
                 [[len(etr), len(ete), eeg["epochs_done"], 100 * eeg["final_acc"], 25.0]])
    except FileNotFoundError as e:
        ch.text(f"EEG use case skipped: {e}")

    # 3-D synthetic volumes.
    vtr, vte = load_volumes("digits8", augment=True)
    ep3 = 1 if quick else 5
    r3m = fit_spec(zoo_nd.mbconv3d_small_spec(), vtr, vte, out / "vol_mbconv3d", ep3, max_steps=steps,
                   batch_size=32)
    r3c = fit_spec(zoo_nd.cnn3d_plain_spec(), vtr, vte, out / "vol_cnn3d", ep3, max_steps=steps,
                   batch_size=32)
    results["volumes"] = {"mbconv": r3m, "cnn": r3c}
    ch.text("3-D: a SYNTHETIC capability check, not a scientific result. sklearn's 8x8 digits are extruded into "
            "8^3 volumes with a random depth profile, tilt, shift and noise (mbconv.data_nd.load_volumes; fresh "
            "noise and shifts every epoch); the "
            "full comparison over widths and seeds is experiments/volumes3d.py.")
    ch.table("3-D MBConv-SE vs plain 3-D CNN (same recipe, same epochs)",
             ["model", "params", "MACs/volume", "epochs", "test acc %", "train s"],
             [[r["name"], r["params"], r["macs"], r["epochs_done"], 100 * r["final_acc"], r["train_seconds"]]
              for r in (r3m, r3c)])
    curves = {"MNIST-1D MBConv": r_m["history"], "MNIST-1D shuffled": r_s["history"],
              "3-D MBConv": r3m["history"], "3-D plain CNN": r3c["history"]}
    if eeg is not None:
        curves["EEG electrodes"] = eeg["history"]
    if any(curves.values()):  # quick runs stop before an epoch ends: no curves
        ch.figure("Test accuracy per epoch", _fig_curves(curves, ctx.out / "fig_signals_curves.png",
                                                          "1-D and 3-D runs of this chapter"))
    write_json(ctx.out / "signals_result.json", results)
    ctx.state["signals"] = results

