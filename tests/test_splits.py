"""The validation splits: carved from the training split, stratified, fixed, disjoint from train and test, for every
bundled dataset, image folder (a val/ sub-folder or a carved split) and 1-D / 3-D task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mbconv import data as D
from mbconv import data_nd as N
from mbconv.data import loading


def _write(path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(path)


def test_carve_validation_is_stratified_fixed_and_exact() -> None:
    y = np.repeat(np.arange(3), [50, 20, 1])
    train_idx = np.arange(0, 71, 1)[::-1]  # any order in; sorted out
    tr, va = D.carve_validation(y, train_idx)
    assert np.bincount(y[va], minlength=3).tolist() == [5, 2, 0]  # floor(n/10 + 0.5); a lone sample stays in train
    assert sorted(tr.tolist() + va.tolist()) == list(range(71)) and not set(tr) & set(va)
    assert list(tr) == sorted(tr) and list(va) == sorted(va)
    tr2, va2 = D.carve_validation(y, train_idx)
    assert np.array_equal(va, va2)
    _, other = D.carve_validation(y, train_idx, seed=5)  # the seed moves the choice, not the sizes
    assert not np.array_equal(va, other) and len(other) == len(va)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            D.carve_validation(y, train_idx, fraction=bad)


@pytest.mark.parametrize("name", ["mnist5k", "digits8", "mnist1d", "textures"])
def test_every_bundled_dataset_has_a_disjoint_normalised_validation_split(name: str) -> None:
    src = loading.get_source(name)
    tr, va, te = (set(src.train_idx.tolist()), set(src.val_idx.tolist()), set(src.test_idx.tolist()))
    assert va and not (tr & va or va & te or tr & te)
    ds = D.load_dataset(name, "val", augment=True)  # augmentation is for train only
    tds = D.load_dataset(name, "train")
    assert ds.transform is None and torch.equal(ds.mean, tds.mean) and torch.equal(ds.std, tds.std)
    assert ds.indices.tolist() == sorted(va) and ds.info == tds.info
    # normalised with the train statistics, not its own: its mean is not exactly 0
    assert abs(ds.x.mean().item()) > 1e-5
    assert "val" in ds.info.description.lower()


def test_photo_crops_validate_on_other_crops_of_the_calibration_photos() -> None:
    pytest.importorskip("skimage")
    if "photos" not in D.list_datasets():
        pytest.skip("no photo crops in this checkout")
    from mbconv.data import photos as P

    val = D.load_dataset("photos", "val")
    assert len(val) == len(P.CALIB_PHOTOS) * P.VAL_CROPS
    assert {r["photo"] for r in P.crop_records("val")} == set(P.CALIB_PHOTOS)  # never an evaluation photo


def test_image_folder_carves_val_without_a_val_folder(tmp_path) -> None:
    root = tmp_path / "f"
    for cls, v in (("a", 30), ("b", 220)):
        for i in range(20):
            _write(root / cls / f"{i}.png", v + i)
    tr, va, te = (D.load_dataset(str(root), s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (28, 4, 8)  # 20 % test, then 10 % of the remaining 16 per class
    assert va.y.bincount().tolist() == [2, 2]
    assert not set(va.indices.tolist()) & (set(tr.indices.tolist()) | set(te.indices.tolist()))
    assert "carved" in tr.info.description


def test_image_folder_val_subfolder_is_the_validation_split(tmp_path) -> None:
    root = tmp_path / "g"
    for cls, v in (("a", 30), ("b", 220)):
        for i in range(10):
            _write(root / cls / f"{i}.png", v)
    _write(root / "val" / "b" / "0.png", 200)
    _write(root / "val" / "b" / "1.png", 201)
    _write(root / "val" / "a" / "0.png", 10)
    tr, va, te = (D.load_dataset(str(root), s) for s in ("train", "val", "test"))
    assert tr.classes == ("a", "b")  # val/ is not a class
    assert (len(tr), len(va), len(te)) == (16, 3, 4)  # nothing carved from train when val/ exists
    assert va.y.tolist() == [0, 1, 1] and va.x[0].mean() < 0 < va.x[1].mean()
    assert "val/ sub-folder" in tr.info.description
    # a "val" folder whose sub-folders are not class names is an ordinary class
    other = tmp_path / "h"
    for cls in ("a", "val"):
        for i in range(5):
            _write(other / cls / f"{i}.png", 100)
    assert D.load_dataset(str(other), "train").classes == ("a", "val")


def test_signal_and_volume_tasks_have_three_disjoint_splits() -> None:
    s = N.load_signal_splits("mnist1d", augment=False)
    assert [len(d) for d in s] == [3601, 399, 1000]
    assert torch.equal(s.val.x, D.load_dataset("mnist1d", "val").x)
    assert not set(s.train.indices.tolist()) & set(s.val.indices.tolist())
    tr, te = N.load_signal_task("mnist1d", augment=False)
    assert torch.equal(tr.x, s.train.x) and torch.equal(te.x, s.test.x)
    shuffled = N.load_signal_splits("mnist1d", augment=False, shuffled=True)
    perm = shuffled.val.x[0, 0].sort().values
    assert torch.equal(perm, s.val.x[0, 0].sort().values) and not torch.equal(shuffled.val.x, s.val.x)
    v = N.load_volume_splits("digits8")
    assert [len(d) for d in v] == [1293, 145, 359] and v.val.x.shape[1:] == (1, 8, 8, 8)
    assert torch.equal(v.val.y, D.load_dataset("digits8", "val").y)
    vt, vte = N.load_volumes("digits8")
    assert torch.equal(vt.x, v.train.x) and torch.equal(vte.x, v.test.x)


def test_windowed_splits_use_three_disjoint_time_spans() -> None:
    sig = [(np.arange(100, dtype=np.float32), 0), (np.arange(100, dtype=np.float32) * -1, 1)]
    s = N.windowed_splits(sig, window=10, stride=10, test_fraction=0.3, val_fraction=0.2, normalize="none")
    # spans of each signal: train [0, 50), val [50, 70), test [70, 100)
    assert [len(d) for d in s] == [10, 4, 6]
    assert s.train.x[:, 0].abs().max() < 50 and s.val.x[:, 0].abs().min() >= 50
    assert s.val.x[:, 0].abs().max() < 70 and s.test.x[:, 0].abs().min() >= 70
    with pytest.raises(ValueError, match="too short"):
        N.windowed_splits(sig, window=25, stride=5, test_fraction=0.3, val_fraction=0.2)
    with pytest.raises(ValueError, match="val_fraction"):
        N.windowed_splits(sig, window=10, stride=10, test_fraction=0.5, val_fraction=0.5)


def test_eeg_windows_have_a_validation_span() -> None:
    pytest.importorskip("matplotlib")
    s = N.load_eeg_splits()
    assert [len(d) for d in s] == [4 * 31, 4 * 11, 4 * 41]
    assert s.val.y.bincount().tolist() == [11] * 4


def test_readme_dataset_table_states_the_real_split_sizes() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|.*\| (\d+) / (\d+) / (\d+) \|$", readme, flags=re.M)
    assert {r[0] for r in rows} == {"mnist5k", "digits8", "mnist1d", "textures"}
    for name, *sizes in rows:
        src = loading.get_source(name)
        assert [int(v) for v in sizes] == [len(src.train_idx), len(src.val_idx), len(src.test_idx)], name
