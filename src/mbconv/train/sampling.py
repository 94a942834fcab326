"""Seeded samplers and loaders: each rank's shard of a (seed, epoch) permutation that can skip what a resumed epoch
already consumed, and in-order evaluation shards that count every sample once."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableSampler", "make_shard_loader"]


class ResumableSampler(DistributedSampler):
    """DistributedSampler (order = f(seed, epoch)) whose current epoch can skip its first `skip` samples.

    Used with ``num_replicas=1`` too, so a 1-process run and an N-process run see the same permutation:
    the union of the ranks' k-th batches is the 1-process k-th batch of size ``batch_size * N``.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class _ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... without padding, so sharded evaluation counts every sample once."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def make_shard_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, drop_last: bool = True, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """Seeded DataLoader: train = this rank's :class:`ResumableSampler` shard; eval = in-order shard."""
    if train:
        sampler = ResumableSampler(dataset, world_size, rank, shuffle=True, seed=seed)
    else:
        sampler, drop_last = _ShardSampler(len(dataset), rank, world_size), False
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=pin_memory, generator=g)
