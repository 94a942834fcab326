"""Channels-last memory layout for 1-D maps: an (N, C, L) tensor stored as (N, L, C), strides (L * C, 1, C).

Why: PyTorch has channels_last for 2-D and 3-D maps and none for 1-D, so a 1-D network trains on contiguous
(N, C, L) maps, where each of its fast training kernels pays a layout cost: the native depthwise and BN kernels
read channels in the fastest axis (a transposed copy in and out per depthwise layer), a 1x1 conv is a batched
product over N small matrices instead of one (N * L, C) @ (C, C') product, and BN on short planes leaves the
kernels' inner loops mostly remainder. With the channels last in memory all three read the map as it is: the
MNIST-1D net's SGD step ran about 1.3x faster, the native depthwise layers 1.2-1.7x and the 1x1 convs up to 1.8x
(one product against W @ x; 1.6-2.1x against oneDNN's conv1d) (`benchmarks.layout1d`, docs/bench/depthwise.md,
"1-D maps channels-last").

Nothing in PyTorch marks such a tensor, so the layout travels as the strides themselves: the layers that produce
1-D maps in a training step (`LeanConvNormAct`, where the native BN kernels run, layers/memory.py) put their
output in it, and the layers after them (1x1 convs as products, the native depthwise and BN kernels, the SE,
residual adds, elementwise ops) keep it. Values are the same in either layout; inference, export, torch.compile
and the weights are untouched (the conversion is a training-step choice). `use_channels_last_1d(False)` keeps
contiguous maps, for comparisons on the same weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["channels_last_1d_on", "is_channels_last_1d", "to_channels_last_1d", "use_channels_last_1d"]

_state = {"enabled": True}


def is_channels_last_1d(x: torch.Tensor) -> bool:
    """Whether `x` is an (N, C, L) tensor whose channels are its fastest axis (dense (N, L, C) storage). A map
    of one position, or of one channel, is dense in both layouts and counts as either."""
    return x.dim() == 3 and x.transpose(1, 2).is_contiguous()


def to_channels_last_1d(x: torch.Tensor) -> torch.Tensor:
    """`x` (N, C, L) in the channels-last 1-D layout: `x` itself if it already is, else one transposing copy; a
    one-line ValueError for anything that is not a 3-D tensor."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = f"a {x.dim()}-D tensor {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"to_channels_last_1d needs an (N, C, L) tensor, got {got}")
    if is_channels_last_1d(x):
        return x
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def channels_last_1d_on() -> bool:
    """The `use_channels_last_1d` switch (on by default)."""
    return _state["enabled"]


@contextlib.contextmanager
def use_channels_last_1d(enabled: bool) -> Iterator[None]:
    """Inside the block, training steps of 1-D networks put their maps channels-last (True, the default) or keep
    them contiguous (False: the layout before), for comparisons on the same weights."""
    before = _state["enabled"]
    _state["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _state["enabled"] = before
