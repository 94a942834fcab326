"""Latency-constrained compound scaling (MnasNet-style: the budget is real time on this machine, not MACs).

`latency_search` walks the compound-scaling phi grid of a base spec and returns the largest model whose median
latency meets a budget; `measure_latency` is its timer (eager inference path or ONNX Runtime), `time_calls` the
wall-clock loop under both. The MAC-matched scaling comparisons live in `mbconv.scaling_search`; this is the
search behind `mbconv scale --latency-ms`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cost import spec_cost
from .net import MBConvNet
from .plotting import plt, savefig
from .scaling import compound_scale

__all__ = ["DEFAULT_PHIS", "LatencySearch", "fig_latency_search", "latency_search", "measure_latency", "time_calls"]


def measure_latency(spec: Any, batch: int = 1, backend: str = "eager", rounds: int = 7, warmup: int = 2) -> float:
    """Median latency (ms) of the model `spec` describes on this machine: eager = `prepare_inference`
    (channels_last for 2-D/3-D), onnx = our ONNX export in ONNX Runtime (current thread count)."""
    from .export import export_onnx, ort_session
    from .inference import channels_last_input, prepare_inference

    model = MBConvNet(spec).eval()
    x = torch.randn(batch, spec.in_chans, *([spec.resolution] * spec.dims))
    if backend == "eager":
        net = prepare_inference(model, spec.resolution, channels_last=spec.dims > 1)
        xi = channels_last_input(x)

        def run() -> Any:
            with torch.no_grad():
                return net(xi)
    elif backend == "onnx":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_onnx(model, path, spec.resolution)
            sess = ort_session(path, torch.get_num_threads())
        feed = {sess.get_inputs()[0].name: x.numpy()}

        def run() -> Any:
            return sess.run(None, feed)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected 'eager' or 'onnx'")
    return 1e3 * statistics.median(time_calls(run, rounds, warmup))


def time_calls(fn: Callable[[], Any], rounds: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of `rounds` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


DEFAULT_PHIS = tuple(x / 4 for x in range(-16, 25))  # -4 .. 6 in steps of 0.25


@dataclass
class LatencySearch:
    """Result of `latency_search`: every timed phi (ascending), the chosen one and the spec it builds."""

    budget_ms: float
    batch: int
    backend: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    best_spec: Any
    next_over: dict[str, Any] | None  # the next grid phi above `best`, timed over budget (None: grid end)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"budget_ms": self.budget_ms, "batch": self.batch, "backend": self.backend, "rows": self.rows,
                "best": self.best, "next_over": self.next_over, "note": self.note,
                "best_spec": self.best_spec.to_dict()}


def latency_search(base_spec: Any, budget_ms: float, batch: int = 1, phis: Sequence[float] | None = None,
                   alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15, backend: str = "eager",
                   time_fn: Callable[[Any, int], float] | None = None, coarse: int = 4, rounds: int = 7,
                   log: Callable[[str], None] | None = None) -> LatencySearch:
    """The largest `compound_scale(base_spec, phi, alpha, beta, gamma)` whose median latency (ms, batch
    `batch`, this machine) is <= `budget_ms`.

    Walks the ascending phi grid (default -4 .. 6 in steps of 0.25) every `coarse`-th point until one is over
    budget, then the points between the last one under and that one, stopping at the first over. Latency grows
    about exponentially in phi, so the timings cost a few times the largest model's, and the result is a phi
    whose next grid point was timed over budget. `time_fn(spec, batch) -> ms` replaces the measurement (tests).
    Raises ValueError when the budget is not positive or even the smallest phi misses it.
    """
    if not (isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms) and budget_ms > 0):
        raise ValueError(f"invalid latency budget {budget_ms!r} ms: must be a positive number")
    if batch < 1:
        raise ValueError(f"invalid batch={batch!r}: must be >= 1")
    grid = sorted(set(float(p) for p in (DEFAULT_PHIS if phis is None else phis)))
    if not grid:
        raise ValueError("empty phi grid")
    timer = time_fn or (lambda s, b: measure_latency(s, b, backend, rounds))
    timed: dict[int, dict[str, Any]] = {}
    specs: dict[int, Any] = {}

    def time_at(i: int) -> bool:
        if i not in timed:
            spec = compound_scale(base_spec, grid[i], alpha, beta, gamma)
            c = spec_cost(spec)
            ms = float(timer(spec, batch))
            timed[i] = {"phi": grid[i], "resolution": spec.resolution, "width": spec.width_mult,
                        "depth": spec.depth_mult, "params": c.params, "macs": c.macs, "latency_ms": ms,
                        "meets": ms <= budget_ms}
            specs[i] = spec
            if log:
                log(f"phi {grid[i]:+.2f}: {spec.resolution}px, {c.macs / 1e6:.0f} M MACs, {ms:.2f} ms "
                    f"({'ok' if ms <= budget_ms else 'over'})")
        return timed[i]["meets"]

    step = max(1, int(coarse))
    lo, hi = None, None  # last index under budget, first index over budget
    i = 0
    while i < len(grid):
        if time_at(i):
            lo = i
        else:
            hi = i
            break
        if i == len(grid) - 1:
            break
        i = min(i + step, len(grid) - 1)
    if lo is None:
        r = timed[0]
        raise ValueError(f"latency budget {budget_ms:g} ms is below the smallest model: phi {r['phi']:g} "
                         f"({r['resolution']}px) takes {r['latency_ms']:.2f} ms at batch {batch}")
    if hi is not None:
        for j in range(lo + 1, hi):
            if time_at(j):
                lo = j
            else:
                hi = j
                break
    rows = [timed[k] for k in sorted(timed)]
    note = "" if hi is not None else f"budget not reached within the grid (largest phi {grid[-1]:g} meets it)"
    return LatencySearch(budget_ms, batch, backend if time_fn is None else "custom", rows, timed[lo], specs[lo],
                         timed[hi] if hi is not None else None, note)


def fig_latency_search(result: LatencySearch, path: str | Path, title: str | None = None) -> Path:
    """Latency vs MACs of every timed phi, the budget line and the chosen model."""
    p = plt()
    fig, ax = p.subplots(figsize=(6.5, 3.8))
    rows = result.rows
    ax.plot([r["macs"] / 1e6 for r in rows], [r["latency_ms"] for r in rows], "o-", color="tab:blue")
    for r in rows:
        ax.annotate(f"{r['phi']:g}", (r["macs"] / 1e6, r["latency_ms"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(result.budget_ms, color="tab:red", ls="--", label=f"budget {result.budget_ms:.2f} ms")
    ax.scatter([result.best["macs"] / 1e6], [result.best["latency_ms"]], s=120, facecolors="none",
               edgecolors="tab:green", lw=2, label=f"chosen phi {result.best['phi']:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MMACs (compound-scaled, labels = phi)")
    ax.set_ylabel(f"median latency (ms), batch {result.batch}")
    ax.set_title(title or "latency-constrained compound scaling")
    ax.legend(fontsize=8)
    return savefig(fig, path)
