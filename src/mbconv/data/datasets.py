"""What a dataset is: its static description (:class:`DatasetInfo`), in-memory arrays with reproducible
per-sample augmentation (:class:`ArrayDataset`), and fixed-length windows of long signals (:class:`WindowDataset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .hashing import sample_seed
from .transforms import Transform

__all__ = ["DatasetInfo", "ArrayDataset", "WindowDataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes:
        name: registry name (or the folder name for an image folder).
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        in_chans: channels per sample.
        dims: spatial dimensionality: 1 for signals, 2 for images, 3 for volumes.
        native_size: spatial size before any resize, ``len(native_size) == dims``.
        description: human-readable provenance and split.
    """

    name: str
    num_classes: int
    in_chans: int
    dims: int
    native_size: tuple[int, ...]
    description: str

    def __post_init__(self) -> None:
        if self.dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {self.dims}")
        if len(self.native_size) != self.dims:
            raise ValueError(f"native_size {self.native_size} does not have dims={self.dims} entries")
        if self.num_classes < 1 or self.in_chans < 1:
            raise ValueError(
                f"num_classes and in_chans must be >= 1, got {self.num_classes}, {self.in_chans}"
            )


class ArrayDataset(Dataset):
    """In-memory dataset of float32 samples ``x`` (N, C, *spatial) and int64 labels ``y`` (N,).

    Items are ``(x[i], y[i])``. If ``transform`` is set it is called as ``transform(x[i], generator)``
    with a fresh ``torch.Generator`` seeded from ``(seed, epoch, i)``: the augmented sample depends only
    on those three numbers, not on worker count or visiting order, so runs are reproducible.
    :func:`make_epoch_loader` advances ``epoch`` on each pass; call :meth:`set_epoch` when using another loader.

    Attributes:
        x, y: the tensors. info: :class:`DatasetInfo`. classes: class names in label order.
        mean, std: per-channel normalisation that was applied (train statistics), or None.
        indices: position of each sample in the dataset's full pool (train and test together), or None.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        info: DatasetInfo | None = None,
        transform: Transform | None = None,
        *,
        seed: int = 0,
        classes: Sequence[str] | None = None,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        indices: np.ndarray | None = None,
    ) -> None:
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(y).to(torch.int64)
        if x.ndim < 3 or x.ndim > 5:
            raise ValueError(f"x must have shape (N, C, *spatial), 1-3 spatial dims; got {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
        if info is None:
            info = DatasetInfo(
                name="arrays",
                num_classes=int(y.max()) + 1 if len(y) else 1,
                in_chans=x.shape[1],
                dims=x.ndim - 2,
                native_size=tuple(x.shape[2:]),
                description="in-memory arrays",
            )
        if x.shape[1] != info.in_chans or x.ndim - 2 != info.dims:
            raise ValueError(
                f"x of shape {tuple(x.shape)} does not match {info.in_chans} channels, dims={info.dims}"
            )
        self.x, self.y, self.info, self.transform = x, y, info, transform
        self.seed = int(seed)
        self.epoch = 0
        if classes is None:
            classes = [str(i) for i in range(info.num_classes)]
        self.classes = tuple(classes)
        self.mean, self.std, self.indices = mean, std, indices

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        if self.transform is not None:
            if index < 0:  # same sample -> same seed, whichever way it is addressed
                index += len(self)
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, self.epoch, int(index)))
            x = self.transform(x, g)
        return x, self.y[index]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation epoch (new random transforms per epoch, reproducible)."""
        self.epoch = int(epoch)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, (C, *spatial), after any resize."""
        return tuple(self.x.shape[1:])

    def __repr__(self) -> str:
        return (
            f"ArrayDataset({self.info.name!r}, n={len(self)}, sample_shape={self.sample_shape}, "
            f"transform={self.transform})"
        )


class WindowDataset(Dataset):
    """Fixed-length windows cut from long 1-D signals, each labelled with its signal's label.

    Signals of shape (T,) are treated as one channel; all signals must have the same channel count.
    A signal of length T yields ``(T - window) // stride + 1`` windows starting at 0, stride, ...;
    a trailing remainder shorter than ``window`` is dropped. Items are ``(x, y)`` with x float32
    ``(C, window)`` and y an int64 scalar.
    """

    def __init__(self, signals: Sequence[tuple[np.ndarray, int]], window: int, stride: int) -> None:
        if window <= 0 or stride <= 0:
            raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
        if len(signals) == 0:
            raise ValueError("signals is empty")
        self.window, self.stride = int(window), int(stride)
        self.signals: list[torch.Tensor] = []
        labels, starts, owners = [], [], []
        chans = None
        for i, (sig, label) in enumerate(signals):
            t = torch.as_tensor(np.asarray(sig), dtype=torch.float32)
            if t.ndim == 1:
                t = t[None]
            if t.ndim != 2:
                raise ValueError(f"signal {i} must have shape (C, T) or (T,), got {tuple(t.shape)}")
            if chans is None:
                chans = t.shape[0]
            elif t.shape[0] != chans:
                raise ValueError(f"signal {i} has {t.shape[0]} channels, expected {chans} like signal 0")
            length = t.shape[1]
            if self.window > length:
                raise ValueError(f"window {self.window} is longer than signal {i} (length {length})")
            n = (length - self.window) // self.stride + 1
            self.signals.append(t)
            labels.append(int(label))
            starts.append(np.arange(n, dtype=np.int64) * self.stride)
            owners.append(np.full(n, i, dtype=np.int64))
        self.labels = torch.tensor(labels, dtype=torch.int64)
        #: (num_windows, 2) array of (signal index, start sample) for every window.
        self.index = np.stack([np.concatenate(owners), np.concatenate(starts)], axis=1)
        self.in_chans = int(chans)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        owner, start = self.index[i]
        # clone: a view would keep the whole signal alive and let callers mutate it in place
        x = self.signals[owner][:, start : start + self.window].clone()
        return x, self.labels[owner]
