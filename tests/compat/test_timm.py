"""timm weight import: outputs equal timm's per family, key maps are exact, files load, errors are clear."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from twin_check import TOL, randomise_

from mbconv.compat import (
    from_timm,
    load_timm_weights,
    mbconv_to_timm_state_dict,
    module_name_map,
    timm_to_mbconv_state_dict,
)
from mbconv.zoo import create_model, get_spec, list_models

timm = pytest.importorskip("timm")

# One representative per timm family (V2-S at 64 px is the largest; all run in a few seconds on 2 cores).
FAMILIES = ["efficientnet_b0", "tf_efficientnet_b0", "efficientnet_lite0", "tf_efficientnetv2_s",
            "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100"]


def timm_model(name: str, **kw) -> nn.Module:
    return randomise_(timm.create_model(name, pretrained=False, **kw)).eval()


def max_diffs(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """(max |diff| of logits, max |diff| of features, max |feature|)."""
    with torch.no_grad():
        fa, fb = theirs.forward_features(x), ours.forward_features(x)
        la, lb = theirs.forward_head(fa), ours.forward_head(fb)
    return (la - lb).abs().max().item(), (fa - fb).abs().max().item(), fa.abs().max().item()


@pytest.fixture(scope="module")
def b0_pair() -> tuple[nn.Module, nn.Module]:
    tm = timm_model("tf_efficientnet_b0", num_classes=10)
    return tm, load_timm_weights(create_model("tf_efficientnet_b0", num_classes=10), tm).eval()


# -- numerics ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_outputs_match_timm(name: str) -> None:
    tm = timm_model(name)
    ours = load_timm_weights(create_model(name), tm).eval()
    # 64 is even, so TF SAME padding of the stride-2 convs is asymmetric (0 before, 1 after) at every level;
    # 65 exercises the odd case.
    sizes = (64, 65) if name.startswith("tf_") else (64,)
    for size in sizes:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        d_logits, d_feat, scale = max_diffs(ours, tm, x)
        assert 1e-2 < scale < 1e3, f"{name}: degenerate activations ({scale}); the comparison would be weak"
        assert d_logits <= TOL and d_feat <= TOL, f"{name} @ {size}px: logits {d_logits}, features {d_feat}"


@pytest.mark.parametrize("wrong", [dict(padding="symmetric"), dict(norm_eps=1e-5)])
def test_comparison_detects_padding_and_eps_errors(wrong: dict, b0_pair) -> None:
    """Control: the test above would catch a symmetric-vs-SAME padding or a BN eps mistake."""
    tm, _ = b0_pair
    bad = load_timm_weights(create_model("tf_efficientnet_b0", num_classes=10, **wrong), tm).eval()
    _, d_feat, _ = max_diffs(bad, tm, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert d_feat > 10 * TOL


# -- key maps ----------------------------------------------------------------------------------------------
TIMM_NAMES = set(timm.list_models())


@pytest.mark.parametrize("name", [n for n in list_models() if n in TIMM_NAMES])  # 1-D/3-D nets have no timm twin
def test_key_map_is_exact_for_every_zoo_model(name: str) -> None:
    """Every zoo model's keys and shapes correspond one to one with timm's (built on the meta device: no
    memory, no init, so even L2 is instant)."""
    with torch.device("meta"):
        tsd = timm.create_model(name, pretrained=False).state_dict()
        osd = create_model(name, init="torch").state_dict()
    spec = get_spec(name)
    converted = timm_to_mbconv_state_dict(tsd, spec)
    assert list(converted) == list(osd)  # same keys, and in forward order
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in osd.items()}
    assert list(mbconv_to_timm_state_dict(osd, spec)) == list(tsd)


def test_round_trip_through_timm_names(b0_pair) -> None:
    tm, ours = b0_pair
    tsd = tm.state_dict()
    back = mbconv_to_timm_state_dict(timm_to_mbconv_state_dict(tsd, ours.spec), ours.spec)
    assert list(back) == list(tsd) and all(back[k] is tsd[k] for k in tsd)
    # ours -> timm loads strictly into a fresh timm model, which then computes the same function.
    fresh = timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=10).eval()
    fresh.load_state_dict(mbconv_to_timm_state_dict(ours.state_dict(), ours.spec))
    d_logits, d_feat, _ = max_diffs(ours, fresh, torch.randn(1, 3, 64, 64))
    assert d_logits == d_feat == 0.0


def test_map_uses_block_structure() -> None:
    """The same timm word names different layers by block type: conv_pw/bn2 follow the structure."""
    m = module_name_map(get_spec("efficientnet_b0"))
    assert m["stages.0.0.depthwise.bn"] == "blocks.0.0.bn1"  # DS block (t = 1, no expansion conv)
    assert m["stages.0.0.project.conv"] == "blocks.0.0.conv_pw"
    assert m["stages.1.0.expand.conv"] == "blocks.1.0.conv_pw"  # InvertedResidual
    assert m["stages.1.0.depthwise.bn"] == "blocks.1.0.bn2"
    assert m["stages.1.0.project.bn"] == "blocks.1.0.bn3"
    m = module_name_map(get_spec("efficientnetv2_s"))
    assert m["stages.0.1.conv.bn"] == "blocks.0.1.bn1"  # ConvBnAct
    assert m["stages.1.0.expand.conv"] == "blocks.1.0.conv_exp"  # EdgeResidual
    assert m["stages.1.0.project.bn"] == "blocks.1.0.bn2"
    m = module_name_map(get_spec("mobilenetv3_large_100"))
    assert m["head.conv"] == "conv_head" and "head.bn" not in m


# -- sources -----------------------------------------------------------------------------------------------
def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_from_safetensors_file(tmp_path, b0_pair) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tm, ours = b0_pair
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(path))
    loaded = load_timm_weights(create_model("tf_efficientnet_b0", num_classes=10), path)
    assert same_weights(loaded, ours)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_load_from_pth_file(tmp_path, b0_pair, wrap: str) -> None:
    tm, ours = b0_pair
    sd = tm.state_dict()
    obj = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 3, "arch": "tf_efficientnet_b0"},
           "model": {"model": sd}, "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    loaded = load_timm_weights(create_model("tf_efficientnet_b0", num_classes=10), str(path))
    assert same_weights(loaded, ours)


def test_load_from_state_dict(b0_pair) -> None:
    tm, ours = b0_pair
    loaded = load_timm_weights(create_model("tf_efficientnet_b0", num_classes=10), tm.state_dict())
    assert same_weights(loaded, ours)


# -- errors ------------------------------------------------------------------------------------------------
def test_missing_extra_and_wrong_shape_in_one_error(tmp_path, b0_pair) -> None:
    tm, _ = b0_pair
    sd = dict(tm.state_dict())
    del sd["blocks.1.0.bn2.running_var"]
    sd["blocks.9.0.conv_pw.weight"] = torch.zeros(3)
    sd["classifier.weight"] = torch.zeros(7, 1280)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    model = create_model("tf_efficientnet_b0", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_timm_weights(model, path)
    msg = str(e.value)
    assert str(path) in msg
    assert "missing (1)" in msg and "stages.1.0.depthwise.bn.running_var" in msg and "blocks.1.0.bn2" in msg
    assert "unexpected (1)" in msg and "blocks.9.0.conv_pw.weight" in msg
    assert "shape mismatch (1)" in msg and "classifier.weight: ours (10, 1280) vs source (7, 1280)" in msg
    # Nothing was loaded: a failed load leaves the model as it was.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_strict_false_tolerates_missing_and_extra_but_not_shapes(b0_pair) -> None:
    tm, ours = b0_pair
    sd = dict(tm.state_dict())
    del sd["conv_head.weight"]
    sd["extra.weight"] = torch.zeros(1)
    model = load_timm_weights(create_model("tf_efficientnet_b0", num_classes=10), sd, strict=False)
    assert torch.equal(model.stem.conv.weight, ours.stem.conv.weight)
    sd["classifier.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"classifier\.bias: ours \(10,\) vs source \(3,\)"):
        load_timm_weights(create_model("tf_efficientnet_b0", num_classes=10), sd, strict=False)


def test_wrong_architecture_lists_everything() -> None:
    tm = timm.create_model("mobilenetv3_small_100", pretrained=False)
    pattern = r"(?s)missing \(103\):.*unexpected \(35\):.*shape mismatch \(141\):"
    with pytest.raises(ValueError, match=pattern) as e:
        load_timm_weights(create_model("mobilenetv3_large_100"), tm)
    first_line = str(e.value).splitlines()[0]
    assert "module MobileNetV3" in first_line
    assert "103 missing, 35 unexpected, 141 shape mismatches" in first_line


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_corrupt_file_names_path(tmp_path, suffix: str) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"\x00not a checkpoint at all\xff" * 10)
    with pytest.raises(ValueError, match="cannot read weights") as e:
        load_timm_weights(create_model("mobilenetv3_small_100"), path)
    assert str(path) in str(e.value) and "\n" not in str(e.value) and "weights_only=False" not in str(e.value)


def test_missing_file_and_directory_name_path(tmp_path) -> None:
    for path in (tmp_path / "nope.pth", tmp_path):
        with pytest.raises(ValueError, match="no such file") as e:
            load_timm_weights(create_model("mobilenetv3_small_100"), path)
        assert str(path) in str(e.value)


class Payload:
    """A pickled object whose unpickling would run code; weights_only=True must refuse it."""

    ran = False

    def __reduce__(self):
        return (Payload._run, ())

    @staticmethod
    def _run():
        Payload.ran = True
        return {}


def test_pickled_code_is_not_run(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="cannot read weights") as e:
        load_timm_weights(create_model("mobilenetv3_small_100"), path)
    assert str(path) in str(e.value) and not Payload.ran
    assert "not a weights-only torch checkpoint" in str(e.value) and "\n" not in str(e.value)


def test_non_tensor_entries_and_bad_source_type() -> None:
    model = create_model("mobilenetv3_small_100")
    with pytest.raises(ValueError, match="non-tensor entries"):
        load_timm_weights(model, {"conv_stem.weight": [1, 2, 3]})
    with pytest.raises(TypeError, match="source must be"):
        load_timm_weights(model, 42)


# -- from_timm ---------------------------------------------------------------------------------------------
def test_from_timm_model_and_name() -> None:
    tm = timm_model("mobilenetv3_small_100", num_classes=5)
    ours = from_timm(tm)
    assert ours.spec.name == "mobilenetv3_small_100" and ours.spec.num_classes == 5 and not ours.training
    d_logits, d_feat, _ = max_diffs(ours, tm, torch.randn(2, 3, 64, 64))
    assert d_logits <= TOL and d_feat <= TOL
    by_name = from_timm("mobilenetv3_small_100", pretrained=False, num_classes=3)
    assert by_name.spec.num_classes == 3 and by_name.classifier.out_features == 3
    with pytest.raises(ValueError, match="no mbconv zoo counterpart"):
        from_timm(timm.create_model("resnet10t", pretrained=False))
