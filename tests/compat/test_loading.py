"""load_weights across schemes: our own state dicts, unknown keys, a forced scheme that does not fit."""

from __future__ import annotations

import pytest
import torch

from mbconv.compat import detect_scheme, load_weights
from mbconv.zoo import create_model


def test_our_own_state_dict_loads_as_the_mbconv_scheme() -> None:
    torch.manual_seed(0)
    src = create_model("mobilenetv3_small_100", num_classes=5)
    dst = load_weights(create_model("mobilenetv3_small_100", num_classes=5), src.state_dict())
    assert detect_scheme(src.state_dict())[0].name == "mbconv"
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_unknown_keys_name_the_schemes() -> None:
    with pytest.raises(ValueError, match=r"cannot tell which library.*'layer1\.weight'.*efficientnet_pytorch"):
        load_weights(create_model("mobilenetv3_small_100"), {"layer1.weight": torch.zeros(1)})


def test_forced_scheme_must_fit_the_keys() -> None:
    sd = create_model("mobilenetv3_small_100").state_dict()
    with pytest.raises(ValueError, match=r"are not torchvision weights: keys \('stem\.conv\.weight'"):
        load_weights(create_model("mobilenetv3_small_100"), sd, scheme="torchvision")
    with pytest.raises(ValueError, match="unknown weight scheme 'caffe'"):
        load_weights(create_model("mobilenetv3_small_100"), sd, scheme="caffe")


def test_a_few_names_then_a_count() -> None:
    sd = create_model("mobilenetv3_large_100").state_dict()
    with pytest.raises(ValueError) as e:
        load_weights(create_model("mobilenetv3_small_100"), sd)
    missing = str(e.value).split("missing (")[1].split("unexpected")[0]
    assert missing.count("\n    stages.") == 5 and "... and" in missing and "more" in missing
