"""Seeded DataLoaders whose batches, and the dataset's augmentation epoch, are a function of the seed alone."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["make_epoch_loader"]


class _EpochDataLoader(DataLoader):
    """DataLoader that tells its dataset which epoch starts, so augmentation differs per epoch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0

    def __iter__(self):
        # Set before super().__iter__() so freshly started workers receive the new epoch too; look
        # through wrappers such as Subset, which would otherwise hide set_epoch.
        ds, depth = self.dataset, 0
        while not hasattr(ds, "set_epoch") and hasattr(ds, "dataset") and depth < 8:
            ds, depth = ds.dataset, depth + 1
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(self._epoch)
        self._epoch += 1
        return super().__iter__()


def _seed_worker(worker_id: int) -> None:
    # torch seeds its own and Python's RNG per worker; NumPy's must be seeded for user transforms.
    np.random.seed(torch.initial_seed() % 2**32)


def make_epoch_loader(
    ds: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader whose order is fully determined by ``seed``.

    Two loaders built with the same arguments yield the same batches epoch after epoch (a new order
    each epoch when shuffling). Each pass also calls ``ds.set_epoch(e)`` (e = 0, 1, ...) when the dataset
    has it, so :class:`ArrayDataset` augmentation changes per epoch but stays reproducible, independent
    of ``num_workers``. ``sampler`` replaces shuffling and cannot be combined with ``shuffle=True``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sampler is not None and shuffle:
        raise ValueError("pass either shuffle=True or a sampler, not both")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return _EpochDataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )
