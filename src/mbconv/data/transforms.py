"""Per-sample transforms (augmentation) and the load-time resize.

A transform is called as ``transform(x, generator) -> x`` with ``x`` of shape (C, *spatial); all randomness comes
from ``generator`` so augmentation is reproducible (see :class:`mbconv.data.ArrayDataset`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["Transform", "RandomTranslate", "RandomShiftNoise1d", "resize_batch"]

#: A per-sample transform: ``transform(x, generator) -> x`` with ``x`` of shape (C, *spatial). All
#: randomness must come from ``generator`` so augmentation is reproducible (see :class:`ArrayDataset`).
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def resize_batch(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize a float batch (N, C, *spatial) to ``size`` (linear / bilinear / trilinear)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    # Antialiasing only exists for 2-D in torch; it matters only when shrinking.
    antialias = mode == "bilinear" and any(s < n for s, n in zip(size, x.shape[2:]))
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


@functools.lru_cache(maxsize=1024)
def _shift_index(n: int, shift: int, mode: str) -> torch.Tensor:
    """Source positions so that ``out[i] = x[i - shift]`` along an axis of length ``n``, per ``mode``."""
    j = torch.arange(n) - shift
    if mode == "replicate":
        return j.clamp(0, n - 1)
    if mode == "circular":
        return j % n
    # reflect (edge sample not repeated), valid while |shift| < n
    j = j.abs()
    return torch.where(j > n - 1, 2 * (n - 1) - j, j)


class RandomTranslate:
    """Random shift of a (C, *spatial) sample by up to ``max_fraction`` of each side (pad + crop).

    No flips: they would change the meaning of digits. ``pad_mode`` fills the uncovered border
    (``"replicate"`` suits digits on a flat background, ``"reflect"`` suits textures and photos,
    ``"circular"`` wraps around).
    """

    _MODES = ("replicate", "reflect", "circular")

    def __init__(self, max_fraction: float = 0.1, pad_mode: str = "replicate") -> None:
        if not 0.0 <= max_fraction < 0.5:
            raise ValueError(f"max_fraction must be in [0, 0.5), got {max_fraction}")
        if pad_mode not in self._MODES:
            raise ValueError(f"pad_mode must be one of {self._MODES}, got {pad_mode!r}")
        self.max_fraction = max_fraction
        self.pad_mode = pad_mode

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = x
        for axis, n in enumerate(x.shape[1:], start=1):
            p = max(1, round(self.max_fraction * n)) if self.max_fraction > 0 else 0
            p = min(p, n - 1)  # reflection needs |shift| < n; also keeps tiny inputs valid
            if p == 0:
                continue
            shift = int(torch.randint(-p, p + 1, (1,), generator=generator))
            # Gathering with a cached index is equivalent to pad + crop and ~20x faster than F.pad on
            # small CPU tensors, which matters because this runs per sample on a couple of cores.
            if shift:
                out = out.index_select(axis, _shift_index(n, shift, self.pad_mode))
        return out

    def __repr__(self) -> str:
        return f"RandomTranslate(max_fraction={self.max_fraction}, pad_mode={self.pad_mode!r})"


class RandomShiftNoise1d:
    """Circular shift of a (C, L) signal by up to ``max_shift`` samples plus gaussian noise."""

    def __init__(self, max_shift: int = 3, noise_std: float = 0.05) -> None:
        if max_shift < 0 or noise_std < 0:
            raise ValueError(f"max_shift and noise_std must be >= 0, got {max_shift}, {noise_std}")
        self.max_shift = max_shift
        self.noise_std = noise_std

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shift = int(torch.randint(-self.max_shift, self.max_shift + 1, (1,), generator=generator))
        out = torch.roll(x, shifts=shift, dims=-1)
        if self.noise_std > 0:
            out = out + self.noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return out

    def __repr__(self) -> str:
        return f"RandomShiftNoise1d(max_shift={self.max_shift}, noise_std={self.noise_std})"
