"""Stability benchmark (issue 6, item 6). Not a test: it times two Jacobian computations.

    PYTHONPATH=src .venv/bin/python -m benchmarks.stability_bench [--run DIR] [--threads 2] [--out FILE]

1. The condition number of the tour's trained net (EfficientNet-B0 spec, width 0.5, 32 px, MNIST 5k):
   `stability.network_condition` at one test image = the exact input -> logits spectrum (kappa = sigma_1 /
   sigma_10) plus the exact kappa of every square run of blocks. `--run` names the trained run directory
   (default: the tour's `results/tour/mnist5k_b0w05` when it exists); without one the same architecture is
   measured untrained (the cost is the same; the numbers are not the trained net's) and the output says so.
2. sigma_max of EfficientNet-B0 at 224 px (TF init, 1000 classes, a seeded N(0, 1) input): Golub-Kahan-Lanczos
   on the input -> logits Jacobian with BN folded, stopping when sigma_1 changes by < 1e-4 in a step.
   `--check` adds a power-iteration cross-check (not timed against the target).

Target: each under 30 s on 2 cores. Wall times include loading/building/folding the model (and, for the tour net,
reading the dataset for one test image), not importing torch nor torch.func's one-time lazy imports (timed and
printed separately).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from mbconv import stability as S
from mbconv.provenance import RunRecord, write_result

TOUR_RUN = Path("results/tour/mnist5k_b0w05")


def bench_tour(run: str | None) -> dict:
    from mbconv.data import load_dataset
    from mbconv.workflow import build_for_data, load_run

    path = Path(run) if run else (TOUR_RUN if TOUR_RUN.exists() else None)
    t0 = time.perf_counter()
    if path is not None:
        model, meta, ck = load_run(path)
        d = meta["data"]
        x = load_dataset(d["name"], "test", resolution=d["resolution"])[0][0][None]
        source = f"trained run {ck}"
    else:
        from mbconv.chapters.train import TOUR_MODEL

        ds = load_dataset(TOUR_MODEL["data"], "test", resolution=TOUR_MODEL["resolution"])
        model = build_for_data(TOUR_MODEL["model"], ds.info, TOUR_MODEL["resolution"], TOUR_MODEL["width_mult"],
                               **TOUR_MODEL["overrides"])
        torch.nn.init.normal_(model.classifier.weight, 0.0, 0.01)  # the recipe's zero classifier has no spectrum
        x = ds[0][0][None]
        source = "UNTRAINED tour architecture (no --run given and no tour run found)"
    t1 = time.perf_counter()
    res = S.network_condition(model, x)
    wall = time.perf_counter() - t0
    compute = time.perf_counter() - t1
    lg = res["logits"]
    runs = [{k: r[k] for k in ("first", "last", "blocks", "dim", "kappa", "sigma_max", "sigma_min", "method")}
            for r in res["runs"]]
    return {"source": source, "seconds": wall, "seconds_condition_only": compute, "logits_kappa": lg["kappa"],
            "logits_sigma_max": lg["sigma_max"],
            "logits_sigma_min": lg["sigma_min"], "logits_method": lg["method"], "runs": runs,
            "max_run_kappa": max((r["kappa"] for r in runs), default=float("nan"))}


def bench_b0(check: bool) -> dict:
    from mbconv.zoo import create_model

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = create_model("efficientnet_b0").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    m = S.prepare_model(model)
    t1 = time.perf_counter()
    res = S.logits_spectrum(m, x, exact_max=0, k=40, tol=1e-4)
    wall = time.perf_counter() - t0
    out = {"seconds": wall, "seconds_lanczos_only": time.perf_counter() - t1, "sigma_max": res["sigma_max"],
           "method": res["method"], "history": res["history"]}
    if check:
        t1 = time.perf_counter()
        pi = S.power_iteration(S.JacobianOperator(m, x), iters=60, tol=1e-6)
        out["power_iteration"] = {"sigma_max": pi["sigma_max"], "iters": pi["iters"], "converged": pi["converged"],
                                  "seconds": time.perf_counter() - t1}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="trained tour run directory (default: results/tour/mnist5k_b0w05)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="cross-check B0 sigma_max by power iteration")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    record = RunRecord()  # no training: no seeds, epochs or init to state
    torch.set_num_threads(args.threads)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    # torch.func imports torch._dynamo lazily on its first VJP (seconds, once per process): timed apart
    t0 = time.perf_counter()
    S.jacobian(torch.sin, torch.ones(3))
    init = time.perf_counter() - t0
    print(f"one-time torch.func initialisation (lazy imports): {init:.1f} s", flush=True)
    tour = bench_tour(args.run)
    print(f"tour net condition ({tour['source']}): {tour['seconds']:.1f} s (of which the Jacobians "
          f"{tour['seconds_condition_only']:.1f} s)  logits kappa {tour['logits_kappa']:.4g} "
          f"(sigma {tour['logits_sigma_max']:.4g} .. {tour['logits_sigma_min']:.4g}, {tour['logits_method']}); "
          f"{len(tour['runs'])} square block runs, max kappa {tour['max_run_kappa']:.4g}", flush=True)
    for r in tour["runs"]:
        print(f"   {r['first']}..{r['last']} ({r['blocks']} blocks, dim {r['dim']}): kappa {r['kappa']:.4g} "
              f"[{r['method']}]")
    b0 = bench_b0(args.check)
    print(f"EfficientNet-B0 224 px sigma_max: {b0['seconds']:.1f} s (Lanczos {b0['seconds_lanczos_only']:.1f} s)  "
          f"sigma_max {b0['sigma_max']:.6g} "
          f"({b0['method']})", flush=True)
    if "power_iteration" in b0:
        p = b0["power_iteration"]
        print(f"   power iteration: sigma_max {p['sigma_max']:.6g} after {p['iters']} iters "
              f"(converged={p['converged']}) in {p['seconds']:.1f} s")
    end_load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    verdict = all(t < 30 for t in (tour["seconds"], b0["seconds"]))
    print(f"threads {args.threads}; load average before {' '.join(load)}, after {' '.join(end_load)}; "
          f"target < 30 s each: {'met' if verdict else 'NOT met'}")
    if args.out:
        write_result(args.out, {"tour": tour, "b0": b0, "torch_func_init_seconds": init, "threads": args.threads,
                                "load_before": load, "load_after": end_load,
                                "machine": platform.processor() or platform.machine(), "torch": torch.__version__},
                     record)


if __name__ == "__main__":
    main()
