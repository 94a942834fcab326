"""torchvision weight import: for every family the torchvision model with random weights (never a download) and our
twin compute the same eval outputs; every twin's keys map exactly; the twin is recognised from the weights alone;
a model with the right keys but the wrong conventions is refused."""

from __future__ import annotations

import pytest
import torch
from twin_check import TOL, assert_same_function, compare, randomise_

from mbconv.compat import find_twin, get_scheme, load_weights, match_twins, twin_spec
from mbconv.compat.torchvision_scheme import key_map
from mbconv.net import MBConvNet
from mbconv.zoo import create_model

tvm = pytest.importorskip("torchvision.models")

TV = get_scheme("torchvision")
# One per family and BN convention: B0 (eps 1e-5), B5 (eps 1e-3, momentum 0.01), V2 (Fused-MBConv, eps 1e-3),
# MobileNetV2, MobileNetV3 large/small (eps 1e-3, Linear head). B5 at 64 px is the slowest (~2 s).
FAMILIES = ["efficientnet_b0", "efficientnet_b5", "efficientnet_v2_s", "mobilenet_v2", "mobilenet_v3_large",
            "mobilenet_v3_small"]
LAYOUTS = {"mobilenet_v2": "mobilenet_v2", "mobilenet_v3_large": "mobilenet_v3", "mobilenet_v3_small": "mobilenet_v3"}


def tv_model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise_(getattr(tvm, name)(weights=None, **kw)).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_outputs_match_torchvision(name: str) -> None:
    tv = tv_model(name)
    ours = load_weights(MBConvNet(twin_spec(find_twin("torchvision", name))), tv).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert_same_function(ours, tv.features, tv, x, f"torchvision {name}")


def test_num_classes_from_the_weights() -> None:
    tv = tv_model("mobilenet_v3_small", num_classes=7)
    sd = tv.state_dict()
    [(twin, spec)] = match_twins(sd, TV, "mobilenet_v3")
    assert twin.name == "mobilenet_v3_small" and spec.num_classes == 7
    ours = load_weights(MBConvNet(spec), sd)
    assert_same_function(ours, tv.features, tv, torch.randn(1, 3, 64, 64), "mobilenet_v3_small, 7 classes")


@pytest.mark.parametrize("twin", [t.name for t in TV.twins])
def test_every_twin_maps_exactly_and_is_recognised(twin: str) -> None:
    """Keys and shapes of every torchvision model correspond one to one with its twin's (meta device: instant),
    and the weights alone identify the twin."""
    with torch.device("meta"):
        sd = getattr(tvm, twin)(weights=None).state_dict()
        ours = MBConvNet(twin_spec(find_twin("torchvision", twin)), init="torch").state_dict()
    layout = TV.detect(set(sd))
    assert layout == LAYOUTS.get(twin, "efficientnet")
    km = key_map(twin_spec(find_twin("torchvision", twin)), layout)
    converted = km.to_ours(sd)
    assert list(converted) == list(ours)  # same keys, in forward order
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert [t.name for t, _ in match_twins(sd, TV, layout)] == [twin]
    back = km.to_theirs(ours)
    assert list(back) == list(sd) and all(back[k].shape == sd[k].shape for k in sd)


def test_wrong_conventions_are_refused_and_would_change_the_output() -> None:
    """The zoo's mobilenetv3_large_100 (timm's BN eps 1e-5) has torchvision's keys but not its BN: refused by
    name; loaded anyway, the outputs differ (the comparison above would catch the difference)."""
    tv = tv_model("mobilenet_v3_large")
    with pytest.raises(ValueError, match=r"torchvision mobilenet_v3_large weights.*norm_eps=0\.001.*"
                                         r"norm_eps=1e-05.*mobilenetv3_large_100 with norm_eps=0\.001"):
        load_weights(create_model("mobilenetv3_large_100"), tv)
    loose = load_weights(create_model("mobilenetv3_large_100"), tv, check_conventions=False).eval()
    d_logits, d_feat, _ = compare(loose, tv.features, tv, torch.randn(2, 3, 64, 64))
    assert d_feat > 10 * TOL


def test_missing_and_unexpected_keys_are_named_in_torchvision_words() -> None:
    sd = dict(tv_model("mobilenet_v2").state_dict())
    del sd["features.3.conv.1.1.running_var"]
    sd["features.99.conv.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        load_weights(create_model("mobilenetv2_100"), sd)
    msg = str(e.value)
    assert msg.startswith("cannot load torchvision weights from the given state dict into 'mobilenetv2_100' "
                          "(1 missing, 1 unexpected, 0 shape mismatches)")
    assert "stages.1.1.depthwise.bn.running_var (torchvision: features.3.conv.1.1.running_var)" in msg
    assert "features.99.conv.0.weight" in msg
