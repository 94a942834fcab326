"""Scaling comparisons at equal cost, measured at init: the small 1-D base, its architectural variants (BN and
residual on or off, zero-initialised branches) and the statistics of the trunk Jacobian.

Shared by Experiment D (experiments/scaling_stability.py, the full study) and the tour's stability chapter (a
small version of it), which is why it is library code: the library never imports from experiments/.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ..net import MBConvNet
from ..spec import NetSpec, parse_arch, plan_blocks, spec_replace_blocks
from .blocks import chain, record_blocks, square_runs
from .jacobian import JacobianOperator, hutchinson_mean_sq, jacobian, lanczos_svals, log_norm_stats, spectrum_stats
from .network import prepare_model
from .surgery import strip_batchnorm, zero_init_residual_gamma

__all__ = ["VARIANTS", "comparison_base_spec", "build_variant", "sum_inverse_width", "trunk_stats"]


VARIANTS = {
    "bn_res": "BN + residual (MBConv as designed)",
    "bn_nores": "BN, no residual",
    "nobn_res": "residual, no BN",
    "nobn_nores": "no BN, no residual (plain)",
    "zero_gamma": "BN + residual, last BN gamma of each branch = 0",
}


def comparison_base_spec(width: int = 16, length: int = 40, blocks_per_stage: int = 2, kernel: int = 5,
                         stages: int = 2) -> Any:
    """The small base of the scaling comparisons: a 1-D MBConv-SE net for MNIST-1D (length 40) whose blocks all
    keep the shape (stride 1, `width` channels), so the whole trunk (stem output -> last block) is one square
    map and its exact spectrum is affordable. No head conv (the pooled trunk feeds the classifier), so almost
    all MACs are in blocks and depth-only scaling can hit a MAC target; channel divisor 1 and depth rounding
    'round' let every strategy follow its nominal multipliers closely."""
    block = f"ir_r{blocks_per_stage}_k{kernel}_s1_e4_c{width}_se0.25"
    return NetSpec(stages=parse_arch(";".join([block] * stages)), name=f"mbconv1d_c{width}", dims=1, in_chans=1,
                   num_classes=10, stem_chs=width, stem_kernel=kernel, stem_stride=1, head_type="none", head_chs=0,
                   resolution=length, channel_divisor=1, depth_rounding="round", drop_rate=0.0)


def build_variant(spec: Any, variant: str, seed: int = 0) -> nn.Module:
    """An `MBConvNet` of `spec` (TF init, seeded) in one architectural variant of `VARIANTS`: residuals removed
    through the spec (`skip=False` on every block), BatchNorm removed by surgery (`strip_batchnorm`), or the
    residual branches zero-initialised (`zero_init_residual_gamma`)."""
    if variant not in VARIANTS:
        raise ValueError(f"invalid variant={variant!r}: expected one of {list(VARIANTS)}")
    if variant.endswith("nores"):
        spec = spec_replace_blocks(spec, lambda si, bi, b: dataclasses.replace(b, skip=False))
    torch.manual_seed(seed)
    model = MBConvNet(spec)
    if variant.startswith("nobn"):
        strip_batchnorm(model)
    if variant == "zero_gamma":
        zero_init_residual_gamma(model)
    return model


def sum_inverse_width(spec: Any) -> float:
    """sum over blocks of 1 / (block output channels): the depth-to-width ratio that governs the fluctuations of a
    product of random layer Jacobians (Hanin & Nica 2019)."""
    return float(sum(1.0 / p.out_chs for p in plan_blocks(spec)))


def trunk_stats(model: nn.Module, x: torch.Tensor, exact_limit: int = 1500, probes: int = 8, k: int = 40,
                double: bool = True, block_gains: bool = True, seed: int = 0) -> dict[str, Any]:
    """Statistics of the longest square run of blocks (for nets whose blocks all keep the shape: the whole trunk)
    in eval mode with BN folded: the spectrum of its Jacobian at x[0] (exact SVD up to `exact_limit` dims, else
    Lanczos: then sigma_min, kappa and the log statistics are Ritz estimates, `exact=False`), Var/mean of
    log ||J u||^2 over all of `x` and `probes` directions, and per-block Hutchinson gains mean sigma^2 (whose
    product is the "1.05^L" model of the total gain). Returns a dict with 'svals' (descending)."""
    m = prepare_model(model, fold_bn=True, double=double)
    dt = next(m.parameters()).dtype
    recs, _ = record_blocks(m, x.to(dt))
    runs = square_runs(recs)
    if not runs:
        raise ValueError("no square run of blocks: trunk_stats needs blocks that keep their input shape")
    run = max(runs, key=len)
    f = chain([r.module for r in run])
    z = run[0].input
    op = JacobianOperator(f, z[:1])
    d = op.shape[1]
    if d <= exact_limit:
        s = torch.linalg.svdvals(jacobian(op).double())
        exact = True
    else:
        lz = lanczos_svals(op, k=k, seed=seed)
        s, exact = lz["svals"], lz["exact"]
    out: dict[str, Any] = {**spectrum_stats(s), "svals": s, "exact": exact, "dim": d, "blocks": len(run),
                           "first": run[0].name, "last": run[-1].name}
    ln = log_norm_stats(f, z, probes=probes, seed=seed)
    out["log_norm_mean"], out["log_norm_var"] = ln["mean"], ln["var"]
    if block_gains:
        gains = [hutchinson_mean_sq(r.module, r.input[:1], probes=probes, seed=seed)["mean_sq"] for r in run]
        out["block_gains"] = gains
        out["log_gain_product"] = float(sum(math.log(g) for g in gains if g > 0))
    return out
