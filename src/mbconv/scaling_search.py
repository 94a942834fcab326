"""Scaling at equal cost: the EfficientNet coefficient search, the dWr rule, and single-axis scaling to a MAC target.

- `search_coefficients` is step 1 of the EfficientNet recipe (Tan & Le 2019, §3.3): fix phi = 1 and grid-search
  the depth/width/resolution bases (alpha, beta, gamma) under alpha * beta^2 * gamma^2 ~ 2 (alpha * beta^2 *
  gamma^D for D-dimensional data) on a small proxy task, training every candidate with the project's trainer.
  Rounding (channels to a divisor, repeats per stage with ceil, integer resolution) makes the nominal constraint
  inexact, so each (alpha, beta) pair gets the integer resolution whose *exact* MAC ratio (`cost.spec_cost`) is
  closest to the target; the effective gamma is reported beside the nominal one, and pairs already over budget
  at gamma = 1 are skipped.
- `dwr_multipliers` / `dwr_scale`: "fast compound scaling" of Dollar, Singh & Girshick 2021 (CVPR): for a FLOP
  factor s, width grows as s^(alpha/2), depth as s^((1-alpha)/2) and resolution as s^((1-alpha)/(2D)), alpha =
  0.8 (mostly width), so activations grow only ~ s^(1-alpha/2).
- `scale_to_macs` / `equal_cost_family`: scale a base spec by one strategy (depth-only, width-only,
  resolution-only, EfficientNet compound, dWr) to a MAC target within a tolerance, by scanning the strategy's
  one knob over exact costs (Experiment D, the tour's stability chapter).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .cost import spec_cost
from .scaling import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GAMMA, scale_spec, scale_stage_repeats
from .spec import NetSpec, StageSpec

__all__ = ["STRATEGIES", "DWR_ALPHA", "dwr_multipliers", "dwr_scale", "with_total_blocks", "scale_to_macs",
           "equal_cost_family", "coefficient_grid", "search_coefficients", "format_search_table"]

STRATEGIES = ("depth", "width", "resolution", "compound", "dwr")
DWR_ALPHA = 0.8  # Dollar et al. 2021's choice: most of the FLOP growth goes to width


# -- dWr ---------------------------------------------------------------------------------------------------
def dwr_multipliers(s: float, alpha: float = DWR_ALPHA, dims: int = 2) -> tuple[float, float, float]:
    """(width, depth, resolution) multipliers of fast compound scaling for a FLOP factor `s`.

    FLOPs grow as d * w^2 * r^D; dWr gives width the share `alpha` of log s (w^2 = s^alpha) and splits the rest
    evenly between depth and pixels (d = r^D = s^((1-alpha)/2)), so for D = 2: e_d = (1-alpha)/2, e_w = alpha/2,
    e_r = (1-alpha)/4. alpha = 1/3 is uniform scaling; alpha = 1 is width-only.
    """
    if not s > 0:
        raise ValueError(f"invalid FLOP factor s={s!r}: must be > 0")
    if not 0 <= alpha <= 1:
        raise ValueError(f"invalid alpha={alpha!r}: must be in [0, 1]")
    if dims not in (1, 2, 3):
        raise ValueError(f"invalid dims={dims!r}: expected 1, 2 or 3")
    return s ** (alpha / 2), s ** ((1 - alpha) / 2), s ** ((1 - alpha) / (2 * dims))


def dwr_scale(spec: NetSpec, s: float, alpha: float = DWR_ALPHA) -> NetSpec:
    """The base `spec` scaled by dWr for a nominal FLOP factor `s` (rounded by the spec's own policy)."""
    w, d, r = dwr_multipliers(s, alpha, spec.dims)
    out = scale_spec(spec, w, d, max(1, int(round(spec.resolution * r))))
    return dataclasses.replace(out, name=f"{spec.name}_dwr{s:g}")


# -- single-strategy scaling to a MAC target ---------------------------------------------------------------
def with_total_blocks(spec: NetSpec, total: int) -> NetSpec:
    """Depth-only scaling to exactly `total` blocks: distributed over stages in proportion to the base repeats
    (largest remainders, later stages first on ties), then over each stage's block definitions last-first."""
    base = [s.repeats for s in spec.stages]
    if not isinstance(total, int) or total < len(base):
        raise ValueError(f"invalid total={total!r}: need an integer >= {len(base)} (one block per stage)")
    exact = [total * r / sum(base) for r in base]
    counts = [max(1, math.floor(e)) for e in exact]
    order = sorted(range(len(base)), key=lambda i: (exact[i] - math.floor(exact[i]), i), reverse=True)
    i = 0
    while sum(counts) < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > total:  # only when max(1, .) lifted a stage
        j = max((k for k in range(len(counts)) if counts[k] > 1), key=lambda k: counts[k] - exact[k])
        counts[j] -= 1
    stages = []
    for st, n in zip(spec.stages, counts):
        reps = scale_stage_repeats([b.repeats for b in st.blocks], n / st.repeats, "round")
        stages.append(StageSpec(tuple(dataclasses.replace(b, repeats=r) for b, r in zip(st.blocks, reps))))
    return dataclasses.replace(spec, stages=tuple(stages), depth_mult=spec.depth_mult * total / sum(base))


def _macs(spec: NetSpec, cache: dict[NetSpec, int]) -> int:
    if spec not in cache:
        cache[spec] = spec_cost(spec).macs
    return cache[spec]


def _candidates(spec: NetSpec, strategy: str, factor: float, alpha: float, beta: float, gamma: float,
                dwr_alpha: float) -> Iterable[tuple[float, NetSpec]]:
    """(knob, spec) pairs along one strategy's path, fine enough to bracket the target cost."""
    d = spec.dims
    if strategy == "depth":
        n0 = spec.num_blocks
        for n in range(len(spec.stages), int(math.ceil(n0 * factor * 1.5)) + 2):
            yield n / n0, with_total_blocks(spec, n)
    elif strategy == "width":
        steps = 600
        hi = math.sqrt(factor) * 1.6
        for i in range(steps + 1):
            w = 1 / 1.6 + (hi - 1 / 1.6) * i / steps
            yield w, scale_spec(spec, width=w)
    elif strategy == "resolution":
        r0 = spec.resolution
        for r in range(max(1, int(r0 / 2)), int(math.ceil(r0 * factor ** (1 / d) * 1.5)) + 2):
            yield r / r0, dataclasses.replace(spec, resolution=r)
    elif strategy in ("compound", "dwr"):
        per_phi = alpha * beta**2 * gamma**d
        top = math.log(factor * 1.5) / math.log(per_phi) if strategy == "compound" else factor * 1.5
        for i in range(1, 801):
            k = top * i / 800
            if strategy == "compound":
                w, dm, r = beta**k, alpha**k, gamma**k
            else:
                w, dm, r = dwr_multipliers(k, dwr_alpha, d)
            res = max(1, int(round(spec.resolution * r)))
            yield k, scale_spec(spec, w, dm, res)
    else:
        raise ValueError(f"invalid strategy={strategy!r}: expected one of {STRATEGIES}")


def scale_to_macs(spec: NetSpec, strategy: str, factor: float, tol: float = 0.03, alpha: float = DEFAULT_ALPHA,
                  beta: float = DEFAULT_BETA, gamma: float = DEFAULT_GAMMA, dwr_alpha: float = DWR_ALPHA,
                  ) -> tuple[NetSpec, dict[str, Any]]:
    """Scale `spec` by one strategy so that its exact MACs are `factor` x the base's (at the base resolution).

    Strategies: 'depth' (blocks only, any integer total), 'width' (multiplier on a fine grid, rounded by the
    spec's `channel_divisor`), 'resolution' (integer input size), 'compound' (EfficientNet phi with alpha, beta,
    gamma), 'dwr' (Dollar et al.). The knob is scanned and the spec with the MAC ratio closest to the target
    wins; for compound and dWr, whose rounding moves three axes at once, the resolution is then fine-tuned by a
    few pixels when that gets closer (`res_adjusted`). Returns (spec, info); info['within_tol'] says whether
    |ratio / factor - 1| <= tol. Raises ValueError for a bad strategy or factor.
    """
    if not factor > 0:
        raise ValueError(f"invalid factor={factor!r}: must be > 0")
    if strategy not in STRATEGIES:
        raise ValueError(f"invalid strategy={strategy!r}: expected one of {STRATEGIES}")
    cache: dict[NetSpec, int] = {}
    base = _macs(spec, cache)
    target = factor * base
    best: tuple[float, float, NetSpec] | None = None
    for knob, cand in _candidates(spec, strategy, factor, alpha, beta, gamma, dwr_alpha):
        err = abs(_macs(cand, cache) / target - 1)
        if best is None or err < best[0] - 1e-12:
            best = (err, knob, cand)
    assert best is not None
    err, knob, out = best
    adjusted = False
    if strategy in ("compound", "dwr") and err > tol / 4:
        for dr in range(-max(2, out.resolution // 8), max(2, out.resolution // 8) + 1):
            cand = dataclasses.replace(out, resolution=max(1, out.resolution + dr))
            e = abs(_macs(cand, cache) / target - 1)
            if e < err - 1e-12:
                err, out, adjusted = e, cand, True
    out = dataclasses.replace(out, name=f"{spec.name}_{strategy}x{factor:g}")
    macs = _macs(out, cache)
    info = {"strategy": strategy, "factor": factor, "knob": knob, "macs": macs, "base_macs": base,
            "ratio": macs / base, "error": macs / target - 1, "within_tol": abs(macs / target - 1) <= tol,
            "width_mult": out.width_mult / spec.width_mult, "depth_mult": out.num_blocks / spec.num_blocks,
            "resolution": out.resolution, "resolution_mult": out.resolution / spec.resolution,
            "blocks": out.num_blocks, "params": spec_cost(out).params, "res_adjusted": adjusted}
    return out, info


def equal_cost_family(spec: NetSpec, factor: float, strategies: Sequence[str] = STRATEGIES, tol: float = 0.03,
                      **kw: Any) -> dict[str, tuple[NetSpec, dict[str, Any]]]:
    """`scale_to_macs` for every strategy; raises ValueError naming any strategy that misses the tolerance
    (use a finer `channel_divisor` or a base with more blocks)."""
    out = {s: scale_to_macs(spec, s, factor, tol, **kw) for s in strategies}
    bad = {s: round(i["ratio"], 4) for s, (_, i) in out.items() if not i["within_tol"]}
    if bad:
        raise ValueError(f"cannot reach {factor:g}x MACs within {tol:.0%} by {bad} (MAC ratios); the base "
                         f"spec's rounding is too coarse")
    return out


# -- the coefficient search ---------------------------------------------------------------------------------
QUICK_GRID = ((1.0, 1.2, 2.0), (1.0, 1.1, math.sqrt(2)))
FULL_GRID = ((1.0, 1.1, 1.2, 1.3, 1.4, 1.6, 1.8, 2.0), (1.0, 1.05, 1.1, 1.15, 1.2, 1.3, math.sqrt(2)))


def coefficient_grid(alphas: Sequence[float], betas: Sequence[float], target: float = 2.0, dims: int = 2,
                     ) -> list[tuple[float, float, float]]:
    """(alpha, beta, gamma) with gamma = (target / (alpha beta^2))^(1/D) >= 1 (pairs over budget dropped;
    a pair within 2 % over gets gamma = 1)."""
    out = []
    for a in alphas:
        for b in betas:
            ab = a * b * b
            if ab > target * 1.02:
                continue
            out.append((float(a), float(b), max(1.0, (target / ab) ** (1 / dims))))
    return out


def _closest_resolution(spec: NetSpec, res0: int, gamma: float, target_macs: float) -> tuple[int, int]:
    """Integer resolution >= res0 whose exact MACs are closest to target (searched around res0 * gamma)."""
    guess = max(res0, int(round(res0 * gamma)))
    best = None
    for r in range(max(res0, guess - max(3, guess // 6)), guess + max(3, guess // 6) + 1):
        m = spec_cost(spec, r).macs
        err = abs(m / target_macs - 1)
        if best is None or err < best[0]:
            best = (err, r, m)
    return best[1], best[2]


def search_coefficients(base_spec: NetSpec | str, data: str = "mnist5k", *, quick: bool = False,
                        target: float = 2.0, alphas: Sequence[float] | None = None,
                        betas: Sequence[float] | None = None, proxy_width: float = 0.25,
                        resolution: int | None = None, epochs: int | None = None, seeds: int | None = None,
                        max_steps: int = 0, tol: float = 0.08, out: str | Path | None = None,
                        log: Callable[[str], None] | None = None, first_seed: int = 0) -> dict[str, Any]:
    """EfficientNet's step 1: grid-search (alpha, beta, gamma) under alpha * beta^2 * gamma^D ~ `target` on a proxy.

    The proxy is `base_spec` (a zoo name or NetSpec) fitted to the dataset `data` (classes, channels, dims),
    shrunk by `proxy_width` (with channel divisor 1 from then on, so that multipliers like 1.1 are not swallowed
    by rounding to 8), at `resolution` (default: the data's native size). For each (alpha, beta) of the grid the
    candidate is `scale_spec(proxy, width=beta, depth=alpha)` at the integer resolution whose exact MACs
    (`spec_cost`) are closest to target x the proxy's; candidates off by more than `tol` (or over budget at
    gamma = 1) are skipped and listed. Every other candidate, and the proxy itself (phi = 0), is trained with
    `workflow.train_run` (AdamW 3e-3, wd 0.05, label smoothing 0.1, batch 64) for `epochs` (quick: 2, else 10)
    and `seeds` (quick: 1, else 2) seeds (``first_seed``, ``first_seed + 1``, ...); runs are cached under `out` and
    resumed, so a rerun retrains nothing.
    The chosen coefficients are those of the best mean final *validation* accuracy (the dataset's val split); the
    final test accuracy of every candidate is reported beside it and chooses nothing.

    Returns a dict: 'table' (printable text), 'rows' (one per candidate: 'val_accs'/'val_acc' and 'accs'/'test_acc'
    per seed and mean), 'chosen' ({'alpha', 'beta', 'gamma', 'gamma_effective', 'resolution', 'val_acc',
    'test_acc'}), 'base' (the proxy's row) and 'settings' ('selection': the split and metric that chose).
    Raises ValueError for a bad dataset, grid or tolerance.
    """
    from .data import dataset_info
    from .workflow import RunConfig, evaluate_run, train_run
    from .zoo import get_spec

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if not 0 < tol < 1:
        raise ValueError(f"invalid tol={tol!r}: must be in (0, 1)")
    if not target > 1:
        raise ValueError(f"invalid target={target!r}: the FLOP factor per phi must be > 1")
    info = dataset_info(data)
    spec = get_spec(base_spec, num_classes=info.num_classes, in_chans=info.in_chans, dims=info.dims)
    res0 = int(resolution or info.native_size[0])
    if proxy_width != 1.0:
        spec = scale_spec(spec, width=proxy_width)
    spec = dataclasses.replace(spec, channel_divisor=1, resolution=res0, name=f"{spec.name}_proxy")
    a_grid, b_grid = QUICK_GRID if quick else FULL_GRID
    grid = coefficient_grid(alphas or a_grid, betas or b_grid, target, info.dims)
    if not grid:
        raise ValueError(f"no (alpha, beta) pair of the grid satisfies alpha * beta^2 <= {target}")
    epochs = epochs or (2 if quick else 10)
    seeds = seeds or (1 if quick else 2)
    root = Path(out) if out else Path("results") / "scale_search" / f"{spec.name}_{data}_r{res0}"
    base_macs = spec_cost(spec).macs

    def train(cand: NetSpec, res: int, tag: str) -> tuple[list[float], list[float]]:
        """(final validation accuracies, final test accuracies), one per seed."""
        vals, accs = [], []
        for seed in range(first_seed, first_seed + seeds):
            cfg = RunConfig(model=cand, data=data, out=str(root / f"{tag}_s{seed}"), resolution=res, epochs=epochs,
                            batch_size=64, lr=3e-3, weight_decay=0.05, warmup_epochs=min(1.0, epochs / 4),
                            label_smoothing=0.1, seed=seed, resume=True, progress="none",
                            extra_train={"max_steps": max_steps} if max_steps else {})
            row = train_run(cfg)
            val, acc = row.get("val_acc"), row.get("test_acc")
            if val is None or acc is None:  # stopped by max_steps inside an epoch: evaluate the checkpoint it left
                last = str(Path(cfg.out) / "last")
                val, acc = evaluate_run(last, split="val")["acc"], evaluate_run(last)["acc"]
            vals.append(float(val))
            accs.append(float(acc))
        return vals, accs

    rows: list[dict[str, Any]] = []
    say(f"scale search: proxy {spec.name} ({base_macs / 1e6:.2f} M MACs at {res0} px) on {data}; "
        f"{len(grid)} candidates, {epochs} epoch(s) x {seeds} seed(s); runs in {root}")
    base_val, base_acc = train(spec, res0, "base")
    base_row = {"alpha": 1.0, "beta": 1.0, "gamma": 1.0, "gamma_effective": 1.0, "resolution": res0,
                "blocks": spec.num_blocks, "macs": base_macs, "ratio": 1.0, "val_accs": base_val,
                "val_acc": statistics.mean(base_val), "accs": base_acc, "test_acc": statistics.mean(base_acc),
                "status": "base (phi=0)"}
    say(f"  base: val acc {100 * base_row['val_acc']:.2f} %, test acc {100 * base_row['test_acc']:.2f} %")
    for i, (a, b, g) in enumerate(grid):
        cand = dataclasses.replace(scale_spec(spec, width=b, depth=a), name=f"{spec.name}_a{a:g}_b{b:.3g}")
        res, macs = _closest_resolution(cand, res0, g, target * base_macs)
        ratio = macs / base_macs
        row = {"alpha": a, "beta": b, "gamma": g, "gamma_effective": res / res0, "resolution": res,
               "blocks": cand.num_blocks, "macs": macs, "ratio": ratio, "val_accs": [], "val_acc": math.nan,
               "accs": [], "test_acc": math.nan}
        if abs(ratio / target - 1) > tol:
            row["status"] = f"skipped: exact cost x{ratio:.2f} (rounding)"
        else:
            row["val_accs"], row["accs"] = train(dataclasses.replace(cand, resolution=res), res,
                                                 f"c{i}_a{a:g}_b{b:.3g}")
            row["val_acc"], row["test_acc"] = statistics.mean(row["val_accs"]), statistics.mean(row["accs"])
            row["status"] = "trained"
        rows.append(row)
        say(f"  alpha {a:.3g} beta {b:.3g} gamma {g:.3g} -> {res} px, x{ratio:.3f} MACs: {row['status']}"
            + (f", val acc {100 * row['val_acc']:.2f} %, test acc {100 * row['test_acc']:.2f} %"
               if row["accs"] else ""))
    trained = [r for r in rows if r["accs"]]
    if not trained:
        raise ValueError(f"no candidate reaches {target}x MACs within tol={tol:.0%}; widen tol or the grid")
    best = max(trained, key=lambda r: (r["val_acc"], -abs(r["ratio"] - target)))  # the test split chooses nothing
    for r in rows:
        r["chosen"] = r is best
    chosen = {k: best[k] for k in ("alpha", "beta", "gamma", "gamma_effective", "resolution", "val_acc",
                                   "test_acc")}
    settings = {"proxy": spec.to_dict(), "data": data, "resolution": res0, "target": target, "epochs": epochs,
                "seeds": seeds, "first_seed": first_seed, "max_steps": max_steps, "tol": tol, "quick": quick,
                "out": str(root),
                "selection": {"split": "val", "metric": "mean final val_acc over seeds"}}
    result = {"rows": rows, "base": base_row, "chosen": chosen, "settings": settings}
    result["table"] = format_search_table(result)
    return result


def format_search_table(result: dict[str, Any]) -> str:
    """The search result as a text table plus the chosen coefficients (what `mbconv scale --search` prints)."""
    s = result["settings"]
    lines = [f"EfficientNet step-1 search on {s['data']} (proxy at {s['resolution']} px, target x{s['target']:g} "
             f"MACs, exact cost; {s['epochs']} epoch(s) x {s['seeds']} seed(s))",
             f"{'alpha':>6} {'beta':>6} {'gamma':>6} {'res':>4} {'g_eff':>6} {'blocks':>6} {'MACs x':>7} "
             f"{'val acc %':>11} {'test acc %':>11}  status"]

    def cell(accs: list[float]) -> str:
        out = f"{100 * statistics.mean(accs):.2f}" if accs else "-"
        return out + (f"+-{100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else "")

    for r in [result["base"]] + result["rows"]:
        mark = "  <= chosen" if r.get("chosen") else ""
        val = cell(r.get("val_accs", []))  # results from before validation splits have none
        lines.append(f"{r['alpha']:6.3g} {r['beta']:6.3g} {r['gamma']:6.3g} {r['resolution']:4d} "
                     f"{r['gamma_effective']:6.3f} {r['blocks']:6d} {r['ratio']:7.3f} {val:>11} "
                     f"{cell(r['accs']):>11}  {r['status']}{mark}")
    c = result["chosen"]
    lines.append(f"chosen on validation accuracy: alpha={c['alpha']:.3g} beta={c['beta']:.3g} gamma={c['gamma']:.3g} "
                 f"(effective {c['gamma_effective']:.3f} at {c['resolution']} px); the paper's ImageNet choice is "
                 f"alpha=1.2 beta=1.1 gamma=1.15")
    return "\n".join(lines)
