"""Network-level views of stability: the input -> logits spectrum, the conditioning of square runs of blocks,
the per-block table `mbconv stability` prints, and the effective receptive field.

Jacobians are taken in eval mode on a prepared copy (`prepare_model`): BatchNorm is then a fixed per-channel
affine map, folded into the convs (exact in eval mode and ~2-5x faster through `torch.func`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .blocks import chain, gradient_profile, record_blocks, square_runs
from .jacobian import (
    JacobianOperator,
    MapFn,
    condition_number,
    hutchinson_mean_sq,
    jacobian,
    lanczos_svals,
    spectrum_stats,
)

__all__ = [
    "prepare_model", "logits_spectrum", "network_condition", "block_table", "format_block_table",
    "effective_receptive_field",
]


def prepare_model(model: nn.Module, fold_bn: bool = True, double: bool = False) -> nn.Module:
    """An eval-mode copy for Jacobian work: BatchNorm folded into the convs (`mbconv.layers.fuse_bn`; exact in
    eval mode, and much faster under torch.func) and optionally float64 (for small nets)."""
    if fold_bn:
        from ..layers import fuse_bn

        m = fuse_bn(model)
    else:
        m = copy.deepcopy(model).eval()
    if double:
        m = m.double()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def logits_spectrum(model: nn.Module, x: torch.Tensor, exact_max: int = 128, k: int = 30, seed: int = 0,
                    tol: float = 0.0) -> dict[str, Any]:
    """Singular values of the input -> output Jacobian of `model` at one sample `x` (batch of one, eval mode).

    With K outputs (classes) this map has at most K nonzero singular values; its condition number is
    sigma_1 / sigma_K. Exact (K VJPs and an SVD) when K <= exact_max; otherwise k Lanczos steps started on the
    output side (sigma_1 accurate, sigma_K an upper bound, kappa a lower bound), stopping early when sigma_1
    changes by less than `tol` (relative) in a step."""
    if x.shape[0] != 1:
        raise ValueError(f"logits_spectrum takes one sample (batch of one), got batch {x.shape[0]}")
    op = JacobianOperator(model, x)
    if op.shape[0] <= exact_max:
        s = torch.linalg.svdvals(jacobian(op).double())
        return {**spectrum_stats(s), "svals": s, "method": "exact", "exact": True}
    r = lanczos_svals(op, k=k, seed=seed, side="out", tol=tol)
    return {**spectrum_stats(r["svals"]), "svals": r["svals"], "method": f"lanczos({r['steps']})",
            "exact": r["exact"], "history": r["history"]}


def network_condition(model: nn.Module, x: torch.Tensor, fold_bn: bool = True, double: bool = False,
                      exact_limit: int = 2048, k: int = 30, seed: int = 0) -> dict[str, Any]:
    """Conditioning of a classifier at one sample: the logits Jacobian (kappa = sigma_1 / sigma_K over its
    nonzero spectrum) and every square run of blocks (`square_runs`: classical kappa of the composed block
    Jacobian, exact up to `exact_limit` dims, else Lanczos). Runs in eval mode on a prepared copy."""
    m = prepare_model(model, fold_bn, double)
    x = x[:1].to(next(m.parameters()).dtype)
    out: dict[str, Any] = {"logits": logits_spectrum(m, x, k=k, seed=seed)}
    recs, _ = record_blocks(m, x)
    runs = []
    for run in square_runs(recs):
        st = condition_number(chain([r.module for r in run]), run[0].input, exact_limit=exact_limit, k=k,
                              seed=seed)
        runs.append({"first": run[0].name, "last": run[-1].name, "blocks": len(run),
                     "dim": run[0].input[0].numel(), **{k2: v for k2, v in st.items() if k2 != "svals"}})
    out["runs"] = runs
    return out


def block_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, fold_bn: bool = True,
                double: bool = False, k: int = 15, probes: int = 8, exact_limit: int = 1024, seed: int = 0
                ) -> list[dict[str, Any]]:
    """Per block: gradient norms (`gradient_profile` on the batch `x`, `y`), activation RMS, and the block's own
    Jacobian at sample 0 in eval mode: sigma_max (exact SVD up to `exact_limit` dims, else k Lanczos steps),
    Hutchinson mean sigma^2 (`probes` probes), and kappa for square blocks (exact only)."""
    grads = gradient_profile(model, x, y, seed=seed)
    m = prepare_model(model, fold_bn, double)
    dt = next(m.parameters()).dtype
    recs, _ = record_blocks(m, x[:1].to(dt))
    rows = []
    for g, r in zip(grads, recs):
        op = JacobianOperator(r.module, r.input)
        small = min(op.shape) <= exact_limit and op.shape[0] * op.shape[1] <= 16_000_000
        if small:
            st = spectrum_stats(torch.linalg.svdvals(jacobian(op).double()))
            smax, kappa, how = st["sigma_max"], st["kappa"] if r.square else math.nan, "exact"
        else:
            lz = lanczos_svals(op, k=k, seed=seed)
            smax, kappa, how = float(lz["svals"][0]), math.nan, f"lanczos({lz['steps']})"
        hm = hutchinson_mean_sq(op, probes=probes, seed=seed)
        rows.append({**g, "type": type(r.module).__name__, "in_shape": list(r.input.shape[1:]),
                     "out_shape": list(r.output.shape[1:]), "has_skip": r.has_skip, "sigma_max": smax,
                     "mean_sq": hm["mean_sq"], "kappa": kappa, "method": how})
    return rows


def format_block_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows of `block_table` (or any list of dicts) as a plain-text table: `columns` = (key, header, format spec)
    triples; None and non-finite values print as "-" / "inf", lists as "AxB"."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            if v is None:
                line.append("-")
            elif isinstance(v, float) and not math.isfinite(v):
                line.append("inf" if v > 0 else ("-inf" if v < 0 else "-"))
            elif isinstance(v, (list, tuple)):
                line.append("x".join(str(i) for i in v))
            else:
                line.append(format(v, fmt))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)


def effective_receptive_field(features: MapFn, x: torch.Tensor, mass: float = 0.95) -> dict[str, Any]:
    """Effective receptive field (Luo et al. 2016): |d out_centre / d x| summed over channels and averaged over
    the batch, where out_centre is the channel sum of the feature map `features(x)` at its centre location.
    Returns the normalised gradient map and the radius (Chebyshev distance from the input centre, in input
    pixels) containing `mass` of it, also as a fraction of the half-side (`radius_frac` = ERF / FOV)."""
    if not 0 < mass <= 1:
        raise ValueError(f"invalid mass={mass!r}: must be in (0, 1]")
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        fmap = features(x)
        if fmap.ndim < 3:
            raise ValueError(f"features must return a spatial map (N, C, *spatial), got shape {tuple(fmap.shape)}")
        centre = tuple(s // 2 for s in fmap.shape[2:])
        target = fmap[(slice(None), slice(None)) + centre].sum()
        (g,) = torch.autograd.grad(target, x)
    gmap = g.detach().abs().sum(1).mean(0).double()  # spatial map
    gmap = gmap / gmap.sum().clamp_min(1e-300)
    dims = gmap.ndim
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) - (s - 1) / 2 for s in gmap.shape], indexing="ij")
    dist = torch.stack([g.abs() for g in grids]).amax(0) if dims > 1 else grids[0].abs()
    order = torch.argsort(dist.flatten())
    cum = gmap.flatten()[order].cumsum(0)
    idx = int(torch.searchsorted(cum, torch.tensor(mass * float(cum[-1]), dtype=torch.float64)))
    radius = float(dist.flatten()[order][min(idx, cum.numel() - 1)]) + 0.5
    half = max(gmap.shape) / 2
    return {"map": gmap, "radius": radius, "radius_frac": radius / half}
