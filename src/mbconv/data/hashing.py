"""Deterministic hashing behind the fixed splits and the per-sample augmentation seeds (splitmix64).

NumPy's and torch's generators do not promise identical streams across versions; these functions do, so a
dataset's split and a sample's augmentation never change with a library upgrade.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["sample_seed", "stratified_split"]

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # Nested mixing so that neighbouring (seed, epoch, index) triples get unrelated generator streams.
    z = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64))
    return z >> 1  # 63 bits: always a valid torch seed


def _hash_order(n: int, seed: int) -> np.ndarray:
    """A pseudo-random permutation of ``range(n)`` defined by splitmix64 hashes.

    Used instead of a NumPy RNG because NumPy does not promise identical streams across versions,
    and the dataset splits must never change.
    """
    z = np.arange(n, dtype=np.uint64) + np.uint64(_splitmix64(seed & _MASK64))
    z = z + np.uint64(0x9E3779B97F4A7C15)  # uint64 array arithmetic wraps silently, as splitmix64 needs
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable")


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: per class, ``floor(n * test_fraction + 0.5)`` samples go to test.

    Classes with at least two samples keep at least one sample on each side. Returns sorted indices.
    """
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[_hash_order(len(idx), seed + 1_000_003 * int(c))]
        n_test = int(math.floor(len(idx) * test_fraction + 0.5))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
