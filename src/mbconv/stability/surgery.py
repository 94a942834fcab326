"""Surgery for stability experiments, in place: BatchNorm statistics calibrated on data, BatchNorm removed, and
residual branches zero-initialised."""

from __future__ import annotations

import torch
from torch import nn

from ..layers.fuse import BATCH_NORMS
from .blocks import find_blocks

__all__ = ["calibrate_batchnorm", "strip_batchnorm", "zero_init_residual_gamma"]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Set every BatchNorm's running statistics to the statistics of the data `x` (in place; cumulative average
    over batches of `batch_size`), so that eval mode normalises like a training forward on this data.

    At init the running statistics are mean 0 / var 1, which makes eval-mode BN the identity: an eval-mode
    Jacobian of an untrained net would then ignore BN altogether. Calibrating first gives a per-sample Jacobian
    of the map that training actually uses."""
    bns = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    if not bns:
        return model
    flags = {m: m.training for m in model.modules()}
    moms = [m.momentum for m in bns]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: equal weight for every batch
            m.train()
        for chunk in x.split(batch_size):
            model(chunk)
    finally:
        for m, mom in zip(bns, moms):
            m.momentum = mom
        for m, t in flags.items():
            m.training = t
    return model


def strip_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm by Identity, in place (the 'no BN' variant of an experiment). Our convs before
    BN have no bias, so the stripped net has no additive biases outside SE and the classifier."""
    for m in list(model.modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, BATCH_NORMS):
                setattr(m, cname, nn.Identity())
    return model


def zero_init_residual_gamma(model: nn.Module) -> nn.Module:
    """Zero the BN gamma at the end of every residual branch (Goyal et al. 2017), in place: each residual block
    is then the identity at init (J = I). Finds the branch end by name (`project.bn`, or `conv.bn` of a conv
    block)."""
    for _, m in find_blocks(model):
        if not getattr(m, "has_skip", False):
            continue
        end = getattr(getattr(m, "project", None), "bn", None) or getattr(getattr(m, "conv", None), "bn", None)
        if isinstance(end, BATCH_NORMS):
            nn.init.zeros_(end.weight)
    return model
