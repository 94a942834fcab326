"""The three splits of every dataset: train, a validation split carved from the training split, and test.

Model selection (the trainer's ``best/``, the coefficient search, the experiments' choices) reads the validation
split; the test split is evaluated for reporting only. The validation split is fixed: a stratified hash
permutation with its own seed (:data:`VAL_SEED`; the test split of the bundled pools uses seed 0), so it never
moves with a run's seed or a library upgrade, and it is disjoint from both train and test.
"""

from __future__ import annotations

import numpy as np

from .hashing import stratified_split

__all__ = ["SPLITS", "VAL_FRACTION", "VAL_SEED", "carve_validation"]

SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1  # of each class of the training split
VAL_SEED = 1


def carve_validation(y: np.ndarray, train_idx: np.ndarray, fraction: float = VAL_FRACTION,
                     seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split the training indices `train_idx` (positions in the pool whose labels are `y`) into (train, val).

    Per class, ``floor(n * fraction + 0.5)`` samples go to validation (at least one on each side for classes with
    two or more training samples), chosen by :func:`stratified_split`. Returns sorted pool indices; together they
    are exactly `train_idx`.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"invalid validation fraction={fraction!r}: must be in (0, 1)")
    train_idx = np.sort(np.asarray(train_idx))
    keep, val = stratified_split(np.asarray(y)[train_idx], fraction, seed=seed)
    return train_idx[keep], train_idx[val]
