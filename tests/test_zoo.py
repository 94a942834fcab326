"""Zoo: every registered model equals timm's same-named model (parameters, buffers; for a few, outputs)."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from torch import nn

from mbconv.net import MBConvNet
from mbconv.spec import NetSpec
from mbconv.zoo import EFFICIENTNET_PARAMS, create_model, get_spec, list_models

TIMM_MODELS = set(timm.list_models())


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list_models())
def test_matches_timm_on_meta(name):
    if name not in TIMM_MODELS:
        pytest.skip(f"timm has no model named {name!r}")
    with torch.device("meta"):
        ours = create_model(name)
        ref = timm.create_model(name, pretrained=False)
    assert _count(ours) == _count(ref)
    # stronger: the same tensors in the same order (so widths are not just summing to the same total)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    assert [tuple(b.shape) for b in ours.buffers()] == [tuple(b.shape) for b in ref.buffers()]


# torchvision weight metadata (anchors.md §1.0), equal to timm's counts for the same architectures
KNOWN_COUNTS = {
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b7": 66_347_960,
    "tf_efficientnet_b0": 5_288_548, "efficientnetv2_s": 21_458_488, "efficientnetv2_l": 118_515_272,
}


@pytest.mark.parametrize("name, count", sorted(KNOWN_COUNTS.items()))
def test_known_parameter_counts(name, count):
    with torch.device("meta"):
        assert _count(create_model(name)) == count


def test_registry_contents():
    names = list_models()
    for v in EFFICIENTNET_PARAMS:
        assert f"efficientnet_{v}" in names and f"tf_efficientnet_{v}" in names
    assert list_models("efficientnet_b?") == [f"efficientnet_b{i}" for i in range(9)]
    assert all(n.startswith("tf_") for n in list_models("tf_*"))
    assert list_models("no_such_*") == []
    assert names == sorted(names)


# -- exact numerical equivalence with timm (weights copied across) ------------------------------------------

@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0", "tf_efficientnet_lite0",
                                  "mobilenetv3_large_100", "tf_mobilenetv3_small_100", "mobilenetv2_050"])
def test_same_outputs_as_timm(name):
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    for m in ref.modules():  # non-trivial BN statistics so that eval-mode BN matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    ours = create_model(name).eval()
    keys = list(ours.state_dict())
    assert len(keys) == len(ref.state_dict())
    ours.load_state_dict(dict(zip(keys, ref.state_dict().values())))
    ours_eps = [m.eps for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert ours_eps == [m.eps for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.randn(2, 3, 33, 35)  # odd sizes: TF SAME pads asymmetrically on the tf_ models
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
        feats = ours.forward_features(x)
        torch.testing.assert_close(feats, ref.forward_features(x), rtol=1e-4, atol=1e-5)


# -- names and overrides -------------------------------------------------------------------------------------

def test_unknown_model_name_is_named():
    with pytest.raises(ValueError, match="unknown model 'efficientnet_b9'") as e:
        get_spec("efficientnet_b9")
    assert "did you mean" in str(e.value) and "efficientnet_b" in str(e.value).split("did you mean")[1]
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")


def test_unknown_override_key_raises():
    with pytest.raises(ValueError, match="num_clases"):
        get_spec("efficientnet_b0", num_clases=10)
    with pytest.raises(ValueError, match="colour"):
        create_model("efficientnet_b0", colour="red")


def test_override_num_classes_and_in_chans():
    net = create_model("efficientnet_lite0", num_classes=10, in_chans=1).eval()
    assert net.classifier.out_features == 10 and net.stem.conv.in_channels == 1
    with torch.no_grad():
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with torch.device("meta"):
        delta = _count(create_model("efficientnet_b0")) - _count(create_model("efficientnet_b0",
                                                                               num_classes=10))
    assert delta == 990 * 1280 + 990


def test_override_dims():
    spec = get_spec("efficientnet_b0", dims=1, num_classes=7)
    assert spec.dims == 1 and spec.stages == get_spec("efficientnet_b0").stages
    net = MBConvNet(spec).eval()
    assert all(not isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in net.modules())
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64)).shape == (2, 7)
    with torch.device("meta"):
        n3 = _count(create_model("efficientnet_b0", dims=3))
        n2 = _count(create_model("efficientnet_b0"))
        n1 = _count(net)
    assert n1 < n2 < n3
    with torch.device("meta"):
        assert sum(isinstance(m, nn.Conv3d) for m in create_model("efficientnet_b0", dims=3).modules()) > 0


def test_override_se_position():
    spec = get_spec("efficientnet_b0", se_position="before_dw")
    assert spec.se_position == "before_dw"
    with torch.device("meta"):
        net = create_model("efficientnet_b0", se_position="before_dw")
    assert {b.se_position for b in net.blocks()} == {"before_dw"}
    assert _count(net) == 5_288_548  # SE sits on the expanded channels either way for MBConv
    with pytest.raises(ValueError, match="se_position='middle'"):
        get_spec("efficientnet_b0", se_position="middle")


def test_override_width_depth_resolution():
    spec = get_spec("efficientnet_b0", width_mult=1.1, depth_mult=1.2, resolution=260)
    b2 = get_spec("efficientnet_b2")
    assert dataclasses.replace(spec, name=b2.name, drop_rate=b2.drop_rate) == b2
    wide = get_spec("efficientnet_b0", width_mult=2.0)
    assert [s.repeats for s in wide.stages] == [s.repeats for s in get_spec("efficientnet_b0").stages]
    assert (wide.stem_chs, wide.head_chs, wide.stages[-1].out_chs, wide.width_mult) == (64, 2560, 640, 2.0)
    assert get_spec("efficientnet_b0", resolution=128).resolution == 128
    assert get_spec("efficientnet_b0", resolution=128).stages == get_spec("efficientnet_b0").stages


def test_get_spec_from_arch_string_and_spec():
    spec = get_spec("ir_r1_k3_s1_e6_c16;ds_r2_k3_s2_c24", num_classes=5, stem_chs=8)
    assert [s.out_chs for s in spec.stages] == [16, 24] and spec.num_blocks == 3
    assert (spec.num_classes, spec.stem_chs) == (5, 8)
    assert get_spec("ir_r1_k3_s1_e6_c16").num_blocks == 1
    base = NetSpec(stages=("ir_r1_k3_s1_e2_c8",), head_chs=16)
    assert get_spec(base) == base
    assert get_spec(base, num_classes=3).num_classes == 3


def test_create_model_init_argument():
    torch.manual_seed(0)
    tf = create_model("mobilenetv2_050", init="tf")
    torch.manual_seed(0)
    pt = create_model("mobilenetv2_050", init="torch")
    dw_tf, dw_pt = tf.stages[1][0].depthwise.conv.weight, pt.stages[1][0].depthwise.conv.weight
    # TF init: normal with fan_out k*k = 9 for depthwise (std 0.47); torch: uniform with fan_in 9 (std 0.19)
    assert dw_tf.std() > 2 * dw_pt.std()
    with pytest.raises(ValueError, match="init='xavier'"):
        create_model("mobilenetv2_050", init="xavier")
