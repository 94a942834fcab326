"""The public loading API: list and describe datasets, and load a split as a normalised :class:`ArrayDataset`.

Pipeline of :func:`load_dataset`: raw arrays (cached in memory) -> fixed split -> optional resize to
``resolution`` -> optional channel conversion (``channels``) -> per-channel normalisation with the *train* split's
mean/std (also applied to the val and test splits), or a fixed ``norm`` -> :class:`ArrayDataset`, whose optional
per-sample transform does augmentation.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from .datasets import ArrayDataset, DatasetInfo
from .image_folder import load_image_folder
from .photos import PHOTO_INFOS, PHOTO_LOADERS
from .sources import DATASET_INFOS, DATASET_LOADERS, Source
from .splits import SPLITS
from .transforms import RandomShiftNoise1d, RandomTranslate, Transform, resize_batch

__all__ = ["CHANNEL_CONVERSIONS", "convert_channels", "dataset_info", "get_source", "list_datasets", "load_dataset",
           "split_indices"]

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


# (from, to) channel counts `convert_channels` supports: gray replicated to RGB, RGB to ITU-R 709 luma.
CHANNEL_CONVERSIONS = ((1, 3), (3, 1))
LUMA_709 = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray's weights (the textures dataset uses them too)


def convert_channels(x: torch.Tensor, channels: int, name: str = "the data") -> torch.Tensor:
    """(N, C, *spatial) samples with `channels` channels: 1 -> 3 repeats the gray channel (what a pretrained RGB
    network sees for a grayscale photo; equivalent to timm's `adapt_input_conv`, which sums the stem's RGB
    kernels for one input channel, when the three channels are normalised alike), 3 -> 1 takes the ITU-R 709
    luma. ValueError naming both counts for any other pair."""
    have = x.shape[1]
    if have == channels:
        return x
    if (have, channels) == (1, 3):
        return x.expand(-1, 3, *x.shape[2:]).contiguous()
    if (have, channels) == (3, 1):
        w = torch.tensor(LUMA_709, dtype=x.dtype).view(1, 3, *([1] * (x.ndim - 2)))
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"{name} has {have} channel(s); cannot convert to {channels} (supported: 1 -> 3 gray "
                     "replicated, 3 -> 1 luma)")


# Train statistics per source and output size, so loading the test split needs no second pass over train.
_STATS_CACHE: weakref.WeakKeyDictionary[Source, dict[tuple, tuple[torch.Tensor, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant channel: centre only
    return mean.float(), std.float()


def _check_norm(norm: tuple[Sequence[float], Sequence[float]], chans: int) -> tuple[list[float], list[float]]:
    try:
        mean, std = ([float(v) for v in part] for part in norm)
    except (TypeError, ValueError):
        raise ValueError(f"norm must be (mean, std), two sequences of numbers, got {norm!r}") from None
    ok = all(len(v) in (1, chans) for v in (mean, std)) and all(np.isfinite(mean)) and all(
        np.isfinite(s) and s > 0 for s in std)
    if not ok:
        raise ValueError(f"norm (mean={mean}, std={std}) needs 1 or {chans} finite values each, std > 0")
    return mean, std


def load_dataset(
    name_or_path: str,
    split: str = "train",
    resolution: int | None = None,
    augment: bool = False,
    seed: int = 0,
    channels: int | None = None,
    norm: tuple[Sequence[float], Sequence[float]] | None = None,
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
        channels: convert the samples to this many channels after the resize (:func:`convert_channels`: 1 -> 3
            replicates gray, 3 -> 1 takes the luma); None keeps the dataset's own. The returned ``info`` says
            the new count.
        norm: a fixed per-channel ``(mean, std)`` (one value each, or one per channel) applied to the pixel
            values instead of the train split's statistics, e.g. a pretrained network's; the bundled image
            datasets and image folders hold pixels in [0, 1] (``textures`` is standardised per image).

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
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
        raise ValueError(f"channels must be a positive int or None, got {channels!r}")
    src = get_source(name_or_path)
    idx = split_indices(src, split)
    info = src.info
    size = tuple(info.native_size) if resolution is None else (resolution,) * info.dims
    chans = info.in_chans if channels is None else channels
    if chans != info.in_chans and (info.in_chans, chans) not in CHANNEL_CONVERSIONS:
        convert_channels(torch.zeros(1, info.in_chans), chans, f"dataset {info.name!r}")  # raises, naming both
    fixed = norm or src.norm
    if norm is None and src.norm is not None and chans != info.in_chans:  # the photos' per-channel values, merged
        fixed = tuple([float(np.mean(v))] for v in src.norm)
    fixed = None if fixed is None else _check_norm(fixed, chans)

    def prepare(idx: np.ndarray) -> torch.Tensor:
        # Index first (copies), so the cached read-only pool is never handed out or modified.
        return convert_channels(resize_batch(torch.from_numpy(src.x[idx]), size), chans)

    stats = _STATS_CACHE.setdefault(src, {})
    key = (size, chans)
    x = prepare(idx)
    if fixed is not None:  # a pretrained network's normalisation, whatever the train split's statistics
        mean, std = (torch.tensor(v, dtype=torch.float32).expand(chans).clone() for v in fixed)
    else:
        if split == "train":
            stats[key] = _channel_stats(x)
        elif key not in stats:
            stats[key] = _channel_stats(prepare(src.train_idx))
        mean, std = stats[key]
    shape = (1, -1) + (1,) * info.dims
    x = (x - mean.view(shape)) / std.view(shape)

    transform: Transform | None = None
    if augment and split == "train":
        transform = RandomShiftNoise1d() if info.dims == 1 else RandomTranslate(0.1, src.pad_mode)
    if chans != info.in_chans:
        info = dataclasses.replace(info, in_chans=chans)
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
