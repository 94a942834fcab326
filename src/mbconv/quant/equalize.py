"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", sec. 4.1) for MBConv networks, and the
per-channel weight ranges it evens out.

Two convs in a row, A -> act -> B, with output channel c of A feeding only input channel c of B, compute the same
function after scaling A's channel c by 1/s_c and B's input channel c by s_c, if act(z / s) = act(z) / s. Choosing
s_c = sqrt(r_A,c / r_B,c) (r: the channel's largest |weight|) gives both channels the range sqrt(r_A,c r_B,c), so
one per-tensor weight grid fits all channels far better: the fix for MBConv's depthwise convs, whose per-channel
ranges differ by orders of magnitude once BN is folded.

Activations: ReLU and the identity are positively homogeneous. ReLU6 is not: relu6(z / s) = clip(z, 0, 6 s) / s.
So a ReLU6 after a scaled channel becomes a per-channel clip, clip(z, 0, 6 / s_c) (`ChannelClip`), which keeps the
network's function exact (Nagel et al. replaced ReLU6 by ReLU instead, which changes it). An int8 runtime cannot
fold a per-channel clip into a per-tensor activation grid, so the clip stays an elementwise op: equalization is for
per-tensor weight quantization in the fake-quant tools (`mbconv.quant`), not for the ORT int8 export, which uses
per-channel weights where equalization recovers little. Pairs with any other activation (SiLU, hard-swish), or with
an SE between them, are left alone.

Pairs equalized: consecutive conv steps of every block (expand -> depthwise -> project, fused expand -> project),
and the stem -> the first block's first conv when that block has no residual (the stem's output feeds nothing
else). Across other block boundaries the residual stream would need the same scale on the shortcut: not done.

    f = fuse_bn(model); equalize(f)                # in place, BN folded first; f(x) == model(x) up to rounding
    q = insert_quantizers(f, QuantConfig(w_per_channel=False)) ...
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..layers import Block, ConvNormAct

__all__ = ["ChannelClip", "channel_ranges", "equalize", "equalize_pairs", "range_spread"]

DEAD = 1e-4  # a channel whose largest |weight| is below this fraction of its layer's largest is dead


class ChannelClip(nn.Module):
    """clip(x, 0, hi_c) with one upper bound per channel (axis 1): a ReLU6 after cross-layer equalization."""

    def __init__(self, hi: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("hi", hi.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.ndim - 2)
        return torch.minimum(torch.relu(x), self.hi.to(x.dtype).reshape(shape))

    def extra_repr(self) -> str:
        return f"channels={self.hi.numel()}"


def _is_depthwise(conv: nn.Module) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _out_ranges(conv: nn.Module) -> torch.Tensor:
    """Largest |weight| of each output channel."""
    return conv.weight.detach().abs().flatten(1).amax(1).double()


def _in_ranges(conv: nn.Module) -> torch.Tensor:
    """Largest |weight| each input channel meets (a depthwise conv: its own filter)."""
    w = conv.weight.detach().abs()
    if _is_depthwise(conv):
        return w.flatten(1).amax(1).double()
    return w.transpose(0, 1).flatten(1).amax(1).double()


def _scalable(act: nn.Module) -> bool:
    return isinstance(act, (nn.Identity, nn.ReLU, nn.ReLU6, ChannelClip))


def _pairable(a: ConvNormAct, b: ConvNormAct) -> bool:
    ca, cb = a.conv, b.conv
    if not isinstance(a.bn, nn.Identity) or not isinstance(b.bn, nn.Identity):
        raise ValueError("cross-layer equalization needs folded BN: run mbconv.layers.fuse_bn first")
    if ca.out_channels != cb.in_channels or not _scalable(a.act):
        return False
    # A plain conv consumer (groups 1) or a depthwise one; A of any kind but grouped
    return (cb.groups == 1 or _is_depthwise(cb)) and (ca.groups == 1 or _is_depthwise(ca))


def equalize_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The (producer, consumer) ConvNormAct names that `equalize` scales, in forward order."""
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    pairs: list[tuple[str, str]] = []
    stem = getattr(model, "stem", None)
    if isinstance(stem, ConvNormAct) and blocks and not blocks[0].has_skip:
        first = getattr(blocks[0], blocks[0].steps[0])
        if isinstance(first, ConvNormAct) and _pairable(stem, first):
            pairs.append((names[id(stem)], names[id(first)]))
    for blk in blocks:
        steps = [getattr(blk, s) for s in blk.steps]
        for a, b in zip(steps, steps[1:]):
            if isinstance(a, ConvNormAct) and isinstance(b, ConvNormAct) and _pairable(a, b):
                pairs.append((names[id(a)], names[id(b)]))
    return pairs


@torch.no_grad()
def _scale_pair(a: ConvNormAct, b: ConvNormAct) -> float:
    """Equalize one pair in place; returns the largest |log s_c| applied (0: already equal)."""
    r1, r2 = _out_ranges(a.conv), _in_ranges(b.conv)
    # Dead channels (all weights ~0, e.g. BN gamma ~0) keep s = 1: scaling them up would blow up their bias,
    # a constant output that the next layer's activation range would have to cover.
    live = (r1 > DEAD * r1.max()) & (r2 > DEAD * r2.max())
    s = torch.ones_like(r1)
    s[live] = torch.sqrt(r1[live] / r2[live])
    sf = s.to(a.conv.weight.dtype)
    shape_a = [-1] + [1] * (a.conv.weight.ndim - 1)
    a.conv.weight.div_(sf.reshape(shape_a))
    if a.conv.bias is not None:
        a.conv.bias.div_(sf)
    if isinstance(a.act, nn.ReLU6):
        a.act = ChannelClip((6.0 / s).to(a.conv.weight.dtype))
    elif isinstance(a.act, ChannelClip):
        a.act.hi.div_(s.to(a.act.hi.dtype))
    if _is_depthwise(b.conv):
        b.conv.weight.mul_(sf.reshape([-1] + [1] * (b.conv.weight.ndim - 1)))
    else:
        b.conv.weight.mul_(sf.reshape([1, -1] + [1] * (b.conv.weight.ndim - 2)))
    return float(s.log().abs().max())


def equalize(model: nn.Module, iterations: int = 20, tol: float = 1e-4) -> dict[str, Any]:
    """Cross-layer equalization of a BN-folded model, in place (its function unchanged up to rounding).

    Sweeps all pairs of `equalize_pairs` until no scale moves by more than `tol` (relative) or `iterations` sweeps;
    a chain expand -> depthwise -> project converges to equal ranges along it. Returns {"pairs", "sweeps",
    "last_change"}."""
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"invalid iterations={iterations!r}: must be an integer >= 1")
    pairs = equalize_pairs(model)
    mods = dict(model.named_modules())
    change, sweeps = 0.0, 0
    while sweeps < iterations:
        sweeps += 1
        change = max((_scale_pair(mods[a], mods[b]) for a, b in pairs), default=0.0)
        if change < tol:
            break
    return {"pairs": [list(p) for p in pairs], "sweeps": sweeps, "last_change": change}


def channel_ranges(model: nn.Module, kinds: Iterable[str] = ("depthwise",)) -> dict[str, torch.Tensor]:
    """{conv name: largest |weight| per output channel} of every conv whose name ends in one of `kinds` (the
    block step names: 'depthwise', 'expand', 'project'; 'stem', 'head' and '' for every conv)."""
    kinds = tuple(kinds)
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and any(
                name.removesuffix(".conv").endswith(k) for k in kinds):
            out[name] = _out_ranges(mod).float()
    return out


def range_spread(ranges: torch.Tensor) -> dict[str, float]:
    """How unequal one layer's channel ranges are, over its live channels (dead ones, below `DEAD` x the largest,
    are counted and excluded): max/min, max/median, and the share of channels a per-tensor grid covers with under
    1/16 of its levels (range < max / 16: fewer than 8 of int8's 127 positive steps)."""
    r = ranges.double()
    top = float(r.max()) if r.numel() else 0.0
    live = r[r > DEAD * top] if top > 0 else r[:0]
    out = {"channels": int(r.numel()), "dead": int(r.numel() - live.numel())}
    if live.numel() == 0:
        return {**out, "max_over_min": float("nan"), "max_over_median": float("nan"), "under_1_16": float("nan")}
    return {**out, "max_over_min": float(live.max() / live.min()), "max_over_median": float(live.max() / live.median()),
            "under_1_16": float((live < live.max() / 16).double().mean())}
