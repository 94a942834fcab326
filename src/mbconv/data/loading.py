"""The public loading API: list and describe datasets, and load a split as a normalised :class:`ArrayDataset`.

Pipeline of :func:`load_dataset`: raw arrays (cached in memory) -> fixed split -> optional resize to
``resolution`` -> per-channel normalisation with the *train* split's mean/std (also applied to the val and test
splits) -> :class:`ArrayDataset`, whose optional per-sample transform does augmentation.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import torch

from .datasets import ArrayDataset, DatasetInfo
from .image_folder import load_image_folder
from .photos import PHOTO_INFOS, PHOTO_LOADERS
from .sources import DATASET_INFOS, DATASET_LOADERS, Source
from .splits import SPLITS
from .transforms import RandomShiftNoise1d, RandomTranslate, Transform, resize_batch

__all__ = ["dataset_info", "get_source", "list_datasets", "load_dataset", "split_indices"]

# The registry: the bundled pools of `sources` and the photo crops of `photos` (which builds on `sources`).
_INFOS = {**DATASET_INFOS, **PHOTO_INFOS}
_LOADERS = {**DATASET_LOADERS, **PHOTO_LOADERS}


def list_datasets() -> list[str]:
    """Names of the bundled datasets (sorted)."""
    return sorted(_LOADERS)


def dataset_info(name: str) -> DatasetInfo:
    """Static info of a registered dataset (no data is loaded), or of an image folder (which is scanned)."""
    if name in _INFOS:
        return _INFOS[name]
    return get_source(name).info


def get_source(name_or_path: str) -> Source:
    """The cached raw pool and fixed split of a registry name or an image folder."""
    if name_or_path in _LOADERS:
        return _LOADERS[name_or_path]()
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return load_image_folder(name_or_path)
    raise ValueError(
        f"unknown dataset {name_or_path!r}: it is neither a registered dataset "
        f"({', '.join(list_datasets())}) nor an existing directory"
    )


def split_indices(src: Source, split: str) -> np.ndarray:
    """The pool indices of `split` ('train', 'val' or 'test') of a source; ValueError for a bad split name or a
    dataset without a validation split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    if split == "val" and src.val_idx is None:
        raise ValueError(f"dataset {src.info.name!r} has no validation split")
    return {"train": src.train_idx, "val": src.val_idx, "test": src.test_idx}[split]


# Train statistics per source and output size, so loading the test split needs no second pass over train.
_STATS_CACHE: weakref.WeakKeyDictionary[Source, dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant channel: centre only
    return mean.float(), std.float()


def load_dataset(
    name_or_path: str,
    split: str = "train",
    resolution: int | None = None,
    augment: bool = False,
    seed: int = 0,
) -> ArrayDataset:
    """Load a bundled dataset (see :func:`list_datasets`) or an image folder as an :class:`ArrayDataset`.

    Args:
        name_or_path: a registry name, or a directory with one sub-folder of images (png/jpg/...) per
            class. Class labels follow the sorted sub-folder names; images are read as grayscale unless
            any image is colour, then all are RGB; images of an odd size are resized to the most common
            size. A registry name wins over a same-named directory (use ``./name`` for the directory).
        split: ``"train"``, ``"val"`` (carved from the training split, for model selection) or ``"test"``
            (for reporting only); splits are fixed and disjoint (see the module docstring).
        resolution: resize once at load time: 2-D/3-D to ``resolution`` per side (bilinear/trilinear,
            so non-square images become square), 1-D to length ``resolution`` (linear). None keeps the
            native size.
        augment: attach the light augmentation (train split only; ignored for ``"val"`` and ``"test"`` so
            callers can pass the same options for all three). 2-D/3-D: random shift by up to 10% of each
            side; 1-D: circular shift of up to 3 samples plus gaussian noise (std 0.05).
        seed: seed of the augmentation randomness. It does not change the split.

    Samples are normalised per channel with the train split's mean/std (also for val and test), so
    the train split has mean 0 and std 1 per channel at the requested resolution; the photo crops
    (`photos`, `photos_imagenet`) use their pretrained config's fixed mean/std instead.

    Raises:
        ValueError: unknown name, bad split or resolution, or a malformed image folder.
        ImportError: the optional package behind a registry dataset is missing.
    """
    if split not in SPLITS:  # before any data is read
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    bad_resolution = isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
    if resolution is not None and bad_resolution:
        raise ValueError(f"resolution must be a positive int or None, got {resolution!r}")
    src = get_source(name_or_path)
    idx = split_indices(src, split)
    info = src.info
    size = tuple(info.native_size) if resolution is None else (resolution,) * info.dims

    def prepare(idx: np.ndarray) -> torch.Tensor:
        # Index first (copies), so the cached read-only pool is never handed out or modified.
        return resize_batch(torch.from_numpy(src.x[idx]), size)

    stats = _STATS_CACHE.setdefault(src, {})
    x = prepare(idx)
    if src.norm is not None:  # a pretrained network's normalisation, whatever the train split's statistics
        stats[size] = (torch.tensor(src.norm[0], dtype=torch.float32), torch.tensor(src.norm[1], dtype=torch.float32))
    elif split == "train":
        stats[size] = _channel_stats(x)
    elif size not in stats:
        stats[size] = _channel_stats(prepare(src.train_idx))
    mean, std = stats[size]
    shape = (1, -1) + (1,) * info.dims
    x = (x - mean.view(shape)) / std.view(shape)

    transform: Transform | None = None
    if augment and split == "train":
        transform = RandomShiftNoise1d() if info.dims == 1 else RandomTranslate(0.1, src.pad_mode)
    return ArrayDataset(
        x.contiguous(),
        torch.from_numpy(src.y[idx].copy()),
        info,
        transform,
        seed=seed,
        classes=src.classes,
        mean=mean.clone(),
        std=std.clone(),
        indices=idx.copy(),
    )
