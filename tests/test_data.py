"""Tests for mbconv.data: bundled datasets, image folders, augmentation, windows and loaders."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import SequentialSampler

from mbconv import data as D
from mbconv.data import image_folder, loading, sources

# name -> (n_train, n_test, sample shape, num_classes); the validation split (tests/test_splits.py) is carved
# from the original training split, so train here is what is left of it
EXPECTED = {
    "mnist5k": (3600, 1000, (1, 28, 28), 10),
    "digits8": (1293, 359, (1, 8, 8), 10),
    "mnist1d": (3601, 1000, (1, 40), 10),
    "textures": (960, 240, (1, 32, 32), 5),
}
N_VAL = {"mnist5k": 400, "digits8": 145, "mnist1d": 399, "textures": 80}


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_bundled_datasets():
    # the RGB photo crops are tested in tests/test_photos.py
    assert D.list_datasets() == sorted([*EXPECTED, "photos", "photos_imagenet"])
    for name, (_, _, shape, k) in EXPECTED.items():
        info = D.dataset_info(name)
        assert info.name == name and info.num_classes == k
        assert (info.in_chans, *info.native_size) == shape
        assert info.dims == len(shape) - 1


def test_import_is_light():
    # The optional data packages must only be imported when a dataset needs them.
    code = (
        "import sys, mbconv.data\n"
        "bad = [m for m in ('mlxtend', 'sklearn', 'skimage', 'mnist1d') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_dataset_shapes_counts_labels(name):
    n_train, n_test, shape, k = EXPECTED[name]
    tr, te = D.load_dataset(name, "train"), D.load_dataset(name, "test")
    for ds, n in ((tr, n_train), (te, n_test)):
        assert len(ds) == n
        assert ds.x.shape == (n, *shape) and ds.sample_shape == shape
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert torch.isfinite(ds.x).all()
        assert sorted(ds.y.unique().tolist()) == list(range(k))  # all classes, nothing outside 0..k-1
        assert ds.info == D.dataset_info(name) and len(ds.classes) == k
        x0, y0 = ds[0]
        assert x0.shape == shape and y0.dtype == torch.int64 and y0.ndim == 0
    # disjoint, covering the pool with the validation split, and identical on a second load
    va = D.load_dataset(name, "val")
    assert len(va) == N_VAL[name]
    assert not set(tr.indices.tolist()) & set(te.indices.tolist())
    assert sorted(tr.indices.tolist() + va.indices.tolist() + te.indices.tolist()) == list(
        range(n_train + N_VAL[name] + n_test))
    tr2 = D.load_dataset(name, "train", seed=123)  # seed must not move the split
    assert np.array_equal(tr.indices, tr2.indices) and torch.equal(tr.x, tr2.x) and torch.equal(tr.y, tr2.y)


def test_stratified_counts_per_class():
    assert D.load_dataset("mnist5k", "train").y.bincount().tolist() == [360] * 10
    assert D.load_dataset("mnist5k", "val").y.bincount().tolist() == [40] * 10
    assert D.load_dataset("mnist5k", "test").y.bincount().tolist() == [100] * 10
    assert D.load_dataset("textures", "train").y.bincount().tolist() == [192] * 5
    assert D.load_dataset("textures", "val").y.bincount().tolist() == [16] * 5
    assert D.load_dataset("textures", "test").y.bincount().tolist() == [48] * 5
    tr, te = D.load_dataset("digits8", "train").y.bincount(), D.load_dataset("digits8", "test").y.bincount()
    va = D.load_dataset("digits8", "val").y.bincount()
    assert torch.all((te.double() / (tr + va + te) - 0.2).abs() < 0.01)
    assert torch.all((va.double() / (tr + va) - 0.1).abs() < 0.01)


def test_mnist1d_uses_the_package_split():
    te = D.load_dataset("mnist1d", "test")
    assert te.indices.tolist() == list(range(4000, 5000))


def test_textures_train_and_test_come_from_disjoint_image_regions():
    tr, te = D.load_dataset("textures", "train"), D.load_dataset("textures", "test")
    assert sources.TEXTURE_IMAGES == tr.classes
    # pool order: image, patch row, patch column (16 x 16 grid of 32-px patches); validation = column 12
    va = D.load_dataset("textures", "val")
    assert (tr.indices % 16 < 12).all() and (va.indices % 16 == 12).all() and (te.indices % 16 >= 13).all()
    assert (tr.indices // 256 == tr.y.numpy()).all()


def test_mnist1d_generation_is_deterministic_and_leaves_global_rngs_alone():
    np.random.seed(7)
    random.seed(7)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    fresh = sources.DATASET_LOADERS["mnist1d"].__wrapped__()  # bypass the cache: really regenerate
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    cached = sources.DATASET_LOADERS["mnist1d"]()
    assert np.array_equal(fresh.x, cached.x) and np.array_equal(fresh.y, cached.y)


def test_cached_pool_is_read_only_and_not_shared():
    ds = D.load_dataset("digits8", "train")
    ds.x.add_(100.0)  # mutating a returned dataset must not corrupt later loads
    assert abs(D.load_dataset("digits8", "train").x.mean().item()) < 1e-4
    with pytest.raises(ValueError):
        sources.DATASET_LOADERS["digits8"]().x[0, 0, 0, 0] = 1.0


# ------------------------------------------------------------------------------------ normalise / resize


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_train_statistics_normalise_both_splits(name):
    tr, te = D.load_dataset(name, "train"), D.load_dataset(name, "test")
    assert torch.allclose(tr.x.mean(dim=(0, *range(2, tr.x.ndim))), torch.zeros(1), atol=1e-4)
    assert torch.allclose(tr.x.std(dim=(0, *range(2, tr.x.ndim)), correction=0), torch.ones(1), atol=1e-4)
    assert torch.equal(tr.mean, te.mean) and torch.equal(tr.std, te.std)
    # test = (raw - train mean) / train std, not standardised with its own statistics
    raw = torch.from_numpy(loading.get_source(name).x[te.indices])
    assert torch.allclose(te.x * te.std.item() + te.mean.item(), raw, atol=1e-4)
    assert abs(te.x.mean().item()) > 1e-4


@pytest.mark.parametrize(
    ("name", "resolution", "shape"),
    [
        ("mnist5k", 16, (1, 16, 16)),
        ("digits8", 32, (1, 32, 32)),
        ("mnist1d", 64, (1, 64)),
        ("textures", 24, (1, 24, 24)),
    ],
)
def test_resize(name, resolution, shape):
    tr = D.load_dataset(name, "train", resolution=resolution)
    te = D.load_dataset(name, "test", resolution=resolution)
    assert tr.sample_shape == shape and te.sample_shape == shape
    assert abs(tr.x.mean().item()) < 1e-4 and abs(tr.x.std(correction=0).item() - 1) < 1e-4
    assert tr.info.native_size == EXPECTED[name][2][1:]  # info keeps the native size


def test_resize_is_interpolation():
    # 2x linear upsampling (align_corners=False) followed by pair-averaging nearly restores the signal
    native = D.load_dataset("mnist1d", "test")
    up = D.load_dataset("mnist1d", "test", resolution=80)
    back = torch.nn.functional.avg_pool1d(up.x, 2)  # align_corners=False: pairs average back closely
    assert (back - native.x).abs().mean() < 0.1


@pytest.mark.parametrize("resolution", [0, -3, 2.5, True, "32"])
def test_bad_resolution(resolution):
    with pytest.raises(ValueError, match="resolution"):
        D.load_dataset("digits8", resolution=resolution)


def test_bad_split_and_unknown_name():
    with pytest.raises(ValueError, match="'valid'"):
        D.load_dataset("digits8", "valid")
    with pytest.raises(ValueError, match="'no-such-set'") as err:
        D.load_dataset("no-such-set")
    for name in EXPECTED:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="no-such-set"):
        D.dataset_info("no-such-set")


def test_missing_optional_package_names_the_extra(monkeypatch):
    with pytest.raises(ImportError, match=r"mbconv\[data\]"):
        sources.import_optional("mbconv_surely_missing_module", "missing")
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    sources.DATASET_LOADERS["digits8"].cache_clear()
    try:
        with pytest.raises(ImportError, match=r"scikit-learn.*mbconv\[data\]"):
            D.load_dataset("digits8")
    finally:
        sources.DATASET_LOADERS["digits8"].cache_clear()


# ---------------------------------------------------------------------------------------- augmentation


def _shift2d(x, dy, dx):
    h, w = x.shape[-2:]
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return x[:, rows][:, :, cols]


def test_2d_augmentation_is_a_small_shift_and_reproducible():
    plain = D.load_dataset("mnist5k", "train")
    aug = D.load_dataset("mnist5k", "train", augment=True, seed=3)
    assert isinstance(aug.transform, D.RandomTranslate)
    changed = 0
    for i in range(40):
        a, y = aug[i]
        assert a.shape == plain.sample_shape and y == plain.y[i]
        assert torch.equal(a, aug[i][0])  # same (seed, epoch, index) -> same sample
        # replicate-padded translation by at most 3 px (10% of 28)
        assert any(torch.equal(a, _shift2d(plain.x[i], dy, dx)) for dy in range(-3, 4) for dx in range(-3, 4))
        changed += not torch.equal(a, plain.x[i])
    assert changed >= 30
    same_seed = D.load_dataset("mnist5k", "train", augment=True, seed=3)
    other_seed = D.load_dataset("mnist5k", "train", augment=True, seed=4)
    batch = torch.stack([aug[i][0] for i in range(40)])
    assert torch.equal(batch, torch.stack([same_seed[i][0] for i in range(40)]))
    assert not torch.equal(batch, torch.stack([other_seed[i][0] for i in range(40)]))
    aug.set_epoch(1)
    assert not torch.equal(batch, torch.stack([aug[i][0] for i in range(40)]))
    assert torch.equal(aug[-1][0], aug[len(aug) - 1][0])


def test_1d_augmentation_is_circular_shift_plus_noise():
    plain = D.load_dataset("mnist1d", "train")
    aug = D.load_dataset("mnist1d", "train", augment=True, seed=0)
    assert isinstance(aug.transform, D.RandomShiftNoise1d)
    for i in range(20):
        a = aug[i][0]
        assert a.shape == (1, 40) and torch.equal(a, aug[i][0])
        assert not torch.equal(a, plain.x[i])
        resid = min((a - torch.roll(plain.x[i], s, dims=-1)).std().item() for s in range(-3, 4))
        assert 0.01 < resid < 0.1  # noise std 0.05


def test_augmentation_is_train_only_and_textures_use_reflection():
    assert D.load_dataset("mnist5k", "test", augment=True).transform is None
    assert D.load_dataset("textures", "train", augment=True).transform.pad_mode == "reflect"


def test_random_translate_edge_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # a 3-D volume
    out = D.RandomTranslate(0.1, "circular")(x, g)
    assert out.shape == x.shape and torch.equal(out.sum(), x.sum())
    assert torch.equal(D.RandomTranslate(0.0)(x, g), x)
    with pytest.raises(ValueError):
        D.RandomTranslate(0.6)
    with pytest.raises(ValueError):
        D.RandomTranslate(0.1, "constant")


# -------------------------------------------------------------------------------------------- loaders


def _epochs(loader, n=2):
    return [[(xb.clone(), yb.clone()) for xb, yb in loader] for _ in range(n)]


def test_loader_order_is_deterministic_per_seed():
    ds = D.load_dataset("digits8", "train")
    a, b = D.make_epoch_loader(ds, 64, True, seed=5), D.make_epoch_loader(ds, 64, True, seed=5)
    ea, eb = _epochs(a), _epochs(b)
    ya = [torch.cat([y for _, y in ep]) for ep in ea]
    assert all(torch.equal(x1, x2) for e1, e2 in zip(ea, eb) for (x1, _), (x2, _) in zip(e1, e2))
    assert not torch.equal(ya[0], ya[1])  # a new order each epoch
    assert sorted(ya[0].tolist()) == sorted(ds.y.tolist())
    yc = torch.cat([y for _, y in D.make_epoch_loader(ds, 64, True, seed=6)])
    assert not torch.equal(ya[0], yc)
    ys = torch.cat([y for _, y in D.make_epoch_loader(ds, 64, False, seed=0)])
    assert torch.equal(ys, ds.y)


def test_loader_options():
    ds = D.load_dataset("digits8", "test")
    assert len(D.make_epoch_loader(ds, 100, True, 0, drop_last=True)) == len(ds) // 100
    assert len(D.make_epoch_loader(ds, 100, True, 0)) == -(-len(ds) // 100)
    loader = D.make_epoch_loader(ds, 50, False, 0, sampler=SequentialSampler(ds))
    assert torch.equal(torch.cat([y for _, y in loader]), ds.y)
    with pytest.raises(ValueError, match="sampler"):
        D.make_epoch_loader(ds, 50, True, 0, sampler=SequentialSampler(ds))
    with pytest.raises(ValueError, match="batch_size"):
        D.make_epoch_loader(ds, 0, True, 0)


def test_augmented_loader_reproducible_and_independent_of_workers():
    full = D.load_dataset("digits8", "train", augment=True, seed=1)
    ds = D.ArrayDataset(full.x[:256], full.y[:256], full.info, full.transform, seed=1)
    e0 = _epochs(D.make_epoch_loader(ds, 32, True, seed=2))
    e2 = _epochs(D.make_epoch_loader(ds, 32, True, seed=2, num_workers=2))
    for ep0, ep2 in zip(e0, e2):
        assert all(torch.equal(x0, x2) and torch.equal(y0, y2) for (x0, y0), (x2, y2) in zip(ep0, ep2))
    # each pass advances the augmentation epoch: same order would still give different pixels
    ordered = _epochs(D.make_epoch_loader(ds, 256, False, seed=0))
    assert not torch.equal(ordered[0][0][0], ordered[1][0][0])
    # also through a Subset wrapper
    sub = torch.utils.data.Subset(ds, range(64))
    ordered = _epochs(D.make_epoch_loader(sub, 64, False, seed=0))
    assert not torch.equal(ordered[0][0][0], ordered[1][0][0])


# ----------------------------------------------------------------------------------------- image folder


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture
def gray_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for cls, level in (("dog", 200), ("cat", 40)):  # sorted: cat=0 (dark), dog=1 (bright)
        for i in range(10):
            _write(root / cls / f"{i:02d}.png", np.clip(level + rng.normal(0, 10, (12, 10)), 0, 255))
    (root / "notes.txt").write_text("ignored")
    (root / "cat" / "readme.md").write_text("ignored")
    return root


def test_image_folder_grayscale(gray_folder):
    tr = D.load_dataset(str(gray_folder), "train")
    te = D.load_dataset(str(gray_folder), "test")
    assert tr.classes == ("cat", "dog") and tr.info.num_classes == 2 and tr.info.name == "shapes"
    assert tr.info.in_chans == 1 and tr.info.dims == 2 and tr.info.native_size == (12, 10)
    # 20 % of each class is test, then 10 % of the rest (0.8 -> 1 image) the carved validation split
    assert tr.x.shape == (14, 1, 12, 10) and te.x.shape == (4, 1, 12, 10)
    assert tr.y.bincount().tolist() == [7, 7] and te.y.bincount().tolist() == [2, 2]
    assert not set(tr.indices.tolist()) & set(te.indices.tolist())
    assert abs(tr.x.mean().item()) < 1e-4 and abs(tr.x.std(correction=0).item() - 1) < 1e-4
    for ds in (tr, te):  # labels follow folder names: cats are dark
        assert ds.x[ds.y == 0].mean() < 0 < ds.x[ds.y == 1].mean()
    again = D.load_dataset(str(gray_folder), "train")
    assert np.array_equal(tr.indices, again.indices) and torch.equal(tr.x, again.x)
    assert D.dataset_info(str(gray_folder)) == tr.info
    assert D.load_dataset(str(gray_folder), "train", resolution=20).sample_shape == (1, 20, 20)
    aug = D.load_dataset(str(gray_folder), "train", augment=True)
    assert aug[3][0].shape == (1, 12, 10)


def test_image_folder_sees_changes(gray_folder):
    assert len(D.load_dataset(str(gray_folder), "train")) == 14
    for i in range(5):
        _write(gray_folder / "emu" / f"{i}.png", np.full((12, 10), 128))
    tr = D.load_dataset(str(gray_folder), "train")
    assert tr.classes == ("cat", "dog", "emu") and len(tr) == 17


def test_image_folder_colour_and_mixed_sizes(tmp_path):
    root = tmp_path / "mixed"
    for i in range(3):
        _write(root / "a" / f"{i}.png", np.full((8, 8), 100))
        _write(root / "b" / f"{i}.jpg", np.full((8, 8), 150))
    _write(root / "b" / "colour.png", np.dstack([np.full((8, 8), v) for v in (255, 0, 0)]))
    _write(root / "b" / "big.png", np.full((16, 20), 150))  # odd size: resized to the common 8x8
    src = loading.get_source(str(root))
    assert src.x.shape == (8, 3, 8, 8) and src.info.in_chans == 3
    gray = src.x[src.y == 0]
    assert np.array_equal(gray[:, 0], gray[:, 1]) and np.array_equal(gray[:, 0], gray[:, 2])
    assert np.allclose(src.x[:, :, 0, 0].max(axis=0), [1.0, 150 / 255, 150 / 255], atol=0.02)
    tr = D.load_dataset(str(root), "train")
    assert tr.x.shape[1:] == (3, 8, 8) and tr.mean.shape == (3,)


def test_image_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        D.load_dataset(str(empty))
    flat = tmp_path / "flat"
    _write(flat / "x.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="no class sub-folders") as err:
        D.load_dataset(str(flat))
    assert str(flat) in str(err.value)
    noimg = tmp_path / "noimg"
    (noimg / "a").mkdir(parents=True)
    (noimg / "a" / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="no image files"):
        D.load_dataset(str(noimg))
    bad = tmp_path / "bad"
    _write(bad / "a" / "ok.png", np.zeros((4, 4)))
    (bad / "a" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="broken.png"):
        D.load_dataset(str(bad))


def test_skimage_reader_agrees_with_pil(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3))
    _write(tmp_path / "c.png", rgb)
    _write(tmp_path / "g.png", rgb[..., 0])
    for name in ("c.png", "g.png"):
        a, ca = image_folder._read_with_skimage(tmp_path / name)
        b, cb = D.read_image(tmp_path / name)
        assert ca == cb and np.array_equal(a, b)


# ------------------------------------------------------------------------------------------ windows


def test_window_dataset_counts_and_content():
    s0 = np.arange(10, dtype=np.float64)
    s1 = np.arange(14, dtype=np.float32).reshape(2, 7)
    ds = D.WindowDataset([(s0[None].repeat(2, 0), 3), (s1, 5)], window=4, stride=3)
    assert len(ds) == 3 + 2
    xs = [ds[i] for i in range(len(ds))]
    assert [int(y) for _, y in xs] == [3, 3, 3, 5, 5]
    assert all(x.shape == (2, 4) and x.dtype == torch.float32 for x, _ in xs)
    assert torch.equal(xs[2][0][0], torch.tensor([6.0, 7, 8, 9]))
    assert torch.equal(xs[4][0], torch.from_numpy(s1[:, 3:7]))
    xs[0][0].zero_()  # a returned window is a copy
    assert ds[0][0].abs().sum() > 0
    one = D.WindowDataset([(np.ones(5), 0)], window=5, stride=1)
    assert len(one) == 1 and one[0][0].shape == (1, 5)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(5, 60), min_size=1, max_size=4),
    window=st.integers(1, 5),
    stride=st.integers(1, 7),
)
def test_window_dataset_property(lengths, window, stride):
    sigs = [(np.arange(n, dtype=np.float32) + 1000 * i, i) for i, n in enumerate(lengths)]
    ds = D.WindowDataset(sigs, window, stride)
    assert len(ds) == sum((n - window) // stride + 1 for n in lengths)
    for k in range(len(ds)):
        x, y = ds[k]
        owner, start = ds.index[k]
        assert y == owner and start % stride == 0 and start + window <= lengths[owner]
        assert torch.equal(x[0], torch.arange(start, start + window, dtype=torch.float32) + 1000 * owner)


def test_window_dataset_errors():
    sig = [(np.zeros(8), 0)]
    with pytest.raises(ValueError, match="longer than signal 0"):
        D.WindowDataset(sig, window=9, stride=1)
    for window, stride in ((0, 1), (4, 0), (-1, 2), (3, -2)):
        with pytest.raises(ValueError, match="positive"):
            D.WindowDataset(sig, window=window, stride=stride)
    with pytest.raises(ValueError, match="channels"):
        D.WindowDataset([(np.zeros((2, 8)), 0), (np.zeros((3, 8)), 1)], window=4, stride=1)
    with pytest.raises(ValueError, match="shape"):
        D.WindowDataset([(np.zeros((2, 2, 8)), 0)], window=4, stride=1)
    with pytest.raises(ValueError, match="empty"):
        D.WindowDataset([], window=4, stride=1)


# ---------------------------------------------------------------------------------- dataclass / arrays


def test_dataset_info_validation():
    info = D.dataset_info("digits8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3
    with pytest.raises(ValueError):
        D.DatasetInfo("x", 2, 1, 4, (1, 1, 1, 1), "")
    with pytest.raises(ValueError):
        D.DatasetInfo("x", 2, 1, 2, (8,), "")
    with pytest.raises(ValueError):
        D.DatasetInfo("x", 0, 1, 1, (8,), "")


def test_array_dataset_from_numpy():
    x = np.random.default_rng(0).normal(size=(6, 2, 9)).astype(np.float64)
    y = np.array([0, 1, 2, 0, 1, 2])
    ds = D.ArrayDataset(x, y)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.info.num_classes == 3 and ds.info.dims == 1 and ds.info.in_chans == 2 and len(ds) == 6
    calls = []
    ds.transform = lambda t, g: calls.append(g) or t * 0
    assert torch.equal(ds[1][0], torch.zeros(2, 9)) and isinstance(calls[0], torch.Generator)
    with pytest.raises(ValueError):
        D.ArrayDataset(x, y[:5])
    with pytest.raises(ValueError):
        D.ArrayDataset(x[:, 0], y)
    with pytest.raises(ValueError):
        D.ArrayDataset(x, y, info=D.dataset_info("digits8"))


# -- channel conversion and fixed normalisation (fine-tuning RGB weights on gray data) ----------------------------
def test_channels_replicate_gray_and_match_timms_summed_stem():
    from mbconv.data import convert_channels

    gray = D.load_dataset("digits8", "test", resolution=16)
    rgb = D.load_dataset("digits8", "test", resolution=16, channels=3)
    assert rgb.info.in_chans == 3 and rgb.x.shape == (359, 3, 16, 16) and gray.info.in_chans == 1
    assert all(torch.equal(rgb.x[:, c], gray.x[:, 0]) for c in range(3))  # same train statistics per channel
    # timm's adapt_input_conv for in_chans=1 sums the RGB kernels: the same outputs as replicating the data
    w = torch.randn(8, 3, 3, 3)
    a = torch.nn.functional.conv2d(rgb.x[:4], w)
    b = torch.nn.functional.conv2d(gray.x[:4], w.sum(1, keepdim=True))
    assert torch.allclose(a, b, atol=1e-5)
    luma = convert_channels(torch.stack([torch.full((2, 2), v) for v in (1.0, 0.0, 0.0)])[None], 1)
    assert luma.shape == (1, 1, 2, 2) and torch.allclose(luma, torch.full_like(luma, 0.2125))
    with pytest.raises(ValueError, match="has 1 channel.*to 2"):
        D.load_dataset("digits8", "test", channels=2)


def test_fixed_norm_replaces_the_train_statistics():
    raw = D.load_dataset("digits8", "val", norm=([0.0], [1.0]))
    assert float(raw.x.min()) == 0.0 and float(raw.x.max()) == 1.0  # pixels in [0, 1], untouched
    half = D.load_dataset("digits8", "val", channels=3, norm=([0.5] * 3, [0.5] * 3))
    assert torch.allclose(half.x[:, 1], raw.x[:, 0] * 2 - 1) and half.mean.tolist() == [0.5] * 3
    for bad in (([0.5, 0.5], [0.5, 0.5]), ([0.5], [0.0]), ("ab", "cd")):
        with pytest.raises(ValueError, match="norm"):
            D.load_dataset("digits8", "val", channels=3, norm=bad)
