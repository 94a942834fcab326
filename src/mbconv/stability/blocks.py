"""Blocks of any module, found by class or by submodule names and recorded with forward hooks, and the
per-block profiles built on them: `gradient_profile` (parameter- and activation-gradient norms) and
`signal_propagation` (activation statistics: Brock et al.'s signal propagation plots)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBlock, FusedMBConv, MBConv
from ..layers.fuse import BATCH_NORMS
from .jacobian import MapFn

__all__ = [
    "BlockIO", "find_blocks", "record_blocks", "square_runs", "chain", "gradient_profile",
    "signal_propagation",
]

# ----------------------------------------------------------------------------------------------------------
# Blocks of any module, recorded with hooks
# ----------------------------------------------------------------------------------------------------------
def _is_block(m: nn.Module) -> bool:
    """Our block classes, or a foreign (timm-style) block found by its submodule names."""
    if isinstance(m, (MBConv, FusedMBConv, ConvBlock)):
        return True
    names = {n for n, _ in m.named_children()}
    return bool(names & {"conv_pwl", "conv_dw"}) or {"depthwise", "project"} <= names


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every outermost block of `model` in registration (= forward, for our nets) order."""
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if m is not model and _is_block(m):
            out.append((name, m))
            inside.append(name)
    return out


@dataclass
class BlockIO:
    """One block's name, module, input and output of a recorded forward pass (detached)."""

    index: int
    name: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor
    has_skip: bool

    @property
    def square(self) -> bool:
        return tuple(self.input.shape) == tuple(self.output.shape)


@contextlib.contextmanager
def _mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily run `model` in 'eval', 'train', or 'batchnorm' mode (eval, but BatchNorm normalises with the
    batch's statistics as in training, without dropout/drop-path noise); buffers are restored afterwards."""
    if mode not in ("eval", "train", "batchnorm"):
        raise ValueError(f"invalid mode={mode!r}: expected 'eval', 'train' or 'batchnorm'")
    flags = {m: m.training for m in model.modules()}
    saved = {k: v.clone() for k, v in model.named_buffers()} if mode != "eval" else {}
    try:
        model.train(mode == "train")
        if mode == "batchnorm":
            for m in model.modules():
                if isinstance(m, BATCH_NORMS):
                    m.train()
        yield
    finally:
        if saved:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    if k in saved:
                        b.copy_(saved[k])
        for m, t in flags.items():
            m.training = t


def record_blocks(model: nn.Module, x: torch.Tensor, blocks: list[tuple[str, nn.Module]] | None = None,
                  mode: str = "eval") -> tuple[list[BlockIO], torch.Tensor]:
    """Run `model(x)` once (no grad) and record each block's input and output. Returns (records, model output).
    Raises ValueError when no block is found."""
    blocks = find_blocks(model) if blocks is None else blocks
    if not blocks:
        raise ValueError(f"no MBConv-family blocks found in {type(model).__name__} (looked for MBConv/FusedMBConv/"
                         "ConvBlock or modules with depthwise+project / conv_dw / conv_pwl children)")
    recs: list[BlockIO] = []
    handles = []

    def make_hook(i: int, name: str):
        def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            skip = bool(getattr(m, "has_skip", getattr(m, "has_residual", False)))
            recs.append(BlockIO(i, name, m, inp[0], out, skip))
        return hook

    for i, (name, m) in enumerate(blocks):
        handles.append(m.register_forward_hook(make_hook(i, name)))
    try:
        with torch.no_grad(), _mode(model, mode):
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return recs, y


def square_runs(records: list[BlockIO]) -> list[list[BlockIO]]:
    """Maximal chains of consecutive blocks that each map a shape to itself and feed each other directly (block
    i+1's input is block i's output tensor). Their composed Jacobian is square, so its kappa is finite."""
    runs: list[list[BlockIO]] = []
    cur: list[BlockIO] = []
    for r in records:
        if r.square and cur and r.input is cur[-1].output:
            cur.append(r)
            continue
        if cur:
            runs.append(cur)
        cur = [r] if r.square else []
    if cur:
        runs.append(cur)
    return runs


def chain(modules: Sequence[nn.Module]) -> MapFn:
    """The map z -> m_k(...m_1(z)) of a list of modules."""
    def f(z: torch.Tensor) -> torch.Tensor:
        for m in modules:
            z = m(z)
        return z
    return f


# ----------------------------------------------------------------------------------------------------------
# Profiles through hooks
# ----------------------------------------------------------------------------------------------------------
def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


def gradient_profile(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     mode: str = "batchnorm", seed: int = 0) -> list[dict[str, Any]]:
    """Per-block gradient norms of a loss on one batch: `param_grad` = ||dL/dtheta_block|| (all parameters of
    the block), `act_grad` = ||dL/dh|| of the block output h per sample (RMS over the batch of the per-sample
    norms), `param_norm`, and their ratio. The loss is `loss_fn(logits, y)` (cross-entropy by default); without
    `y` it is <logits, g> / sqrt(batch) for a fixed Gaussian g (a label-free backward probe).

    `mode` (see `_mode`): 'batchnorm' (default) uses batch statistics as in training without dropout noise;
    'train' or 'eval' as named. The model's grads, modes and buffers are left untouched.
    """
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError(f"no MBConv-family blocks found in {type(model).__name__}")
    outs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: outs.append(o)) for _, m in blocks]
    try:
        with _mode(model, mode), torch.enable_grad():
            logits = model(x)
            if y is None:
                g = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed)).to(logits)
                loss = (logits * g).sum() / math.sqrt(len(x))
            else:
                loss = (loss_fn or F.cross_entropy)(logits, y)
            params = [[p for p in m.parameters() if p.requires_grad] for _, m in blocks]
            flat = [p for ps in params for p in ps]
            grads = torch.autograd.grad(loss, outs + flat, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    if len(outs) != len(blocks):
        raise ValueError("a block ran more or less than once per forward; gradient_profile needs one call each")
    act_grads, pgrads = grads[: len(outs)], list(grads[len(outs):])
    rows = []
    for i, ((name, _), h, ag) in enumerate(zip(blocks, outs, act_grads)):
        ps = params[i]
        gs, pgrads = pgrads[: len(ps)], pgrads[len(ps):]
        gn = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gs if g is not None))
        pn = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in ps))
        if ag is None:
            an = 0.0
        else:
            per = ag.detach().double().flatten(1).pow(2).sum(1)
            an = float(per.mean().sqrt())
        rows.append({"index": i, "name": name, "param_grad": gn, "act_grad": an, "param_norm": pn,
                     "grad_to_param": gn / pn if pn > 0 else math.nan, "act_rms": _rms(h),
                     "loss": float(loss.detach())})
    return rows


def signal_propagation(model: nn.Module, x: torch.Tensor, mode: str = "batchnorm") -> list[dict[str, Any]]:
    """Signal propagation plot data (Brock, De & Smith 2021) per block output h (N, C, *spatial):
    `chan_mean_sq` = average over channels of the squared channel mean, `chan_var` = average channel variance,
    `rms`, and for residual blocks `branch_var` = average channel variance of the residual branch (h - input)."""
    recs, _ = record_blocks(model, x, mode=mode)
    rows = []
    for r in recs:
        h = r.output.double()
        dims = [0] + list(range(2, h.ndim))
        row = {"index": r.index, "name": r.name, "chan_mean_sq": float(h.mean(dim=dims).pow(2).mean()),
               "chan_var": float(h.var(dim=dims).mean()), "rms": _rms(h), "has_skip": r.has_skip,
               "branch_var": math.nan, "shape": list(h.shape[1:])}
        if r.has_skip and r.square:
            row["branch_var"] = float((h - r.input.double()).var(dim=dims).mean())
        rows.append(row)
    return rows
