"""Keras applications weight import (Keras 3 on the torch backend): EfficientNetB0 and MobileNetV2 built with random
weights (`weights=None`, never a download) compute what our twins compute; every twin maps exactly and is
recognised; a Keras .h5 file loads and converts; Keras 3's class-named .weights.h5 is refused with the way out."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from twin_check import TOL

from mbconv.compat import find_twin, get_scheme, load_weights, match_twins, twin_spec
from mbconv.net import MBConvNet

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("these tests run Keras on its torch backend", allow_module_level=True)

KERAS = get_scheme("keras")
SIZE = 64
FAMILIES = {"EfficientNetB0": ("EfficientNetB0", "top_activation"), "MobileNetV2_100": ("MobileNetV2", "out_relu")}


def keras_model(app: str, seed: int = 0):
    """A Keras application with random weights and random BN statistics (logits out: no softmax)."""
    keras.utils.set_random_seed(seed)
    m = getattr(keras.applications, app)(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    rng = np.random.default_rng(seed)
    for w in m.weights:
        name, shape = w.path.rsplit("/", 1)[-1], tuple(w.shape)
        if name == "gamma":
            w.assign(rng.uniform(0.3, 0.8, shape))
        elif name in ("beta", "moving_mean", "bias"):
            w.assign(rng.normal(0.0, 0.1, shape))
        elif name == "moving_variance":
            w.assign(rng.uniform(0.05, 1.5, shape))
    return m


def keras_outputs(m, feature_layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features NCHW, logits) of a Keras model (NHWC inside) on NCHW input."""
    nhwc = x.permute(0, 2, 3, 1)
    feats = keras.Model(m.inputs, [m.get_layer(feature_layer).output, m.outputs[0]])
    f, logits = feats(nhwc, training=False)
    return torch.as_tensor(f).permute(0, 3, 1, 2), torch.as_tensor(logits)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' own numpy 2 __array__ notice on assign
@pytest.mark.parametrize("twin", list(FAMILIES))
def test_outputs_match_keras(twin: str) -> None:
    app, feature_layer = FAMILIES[twin]
    m = keras_model(app)
    ours = load_weights(MBConvNet(twin_spec(find_twin(KERAS, twin))), m).eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    scale = 255.0 if "EfficientNet" in app else 1.0  # Keras' EfficientNet takes raw pixels: Rescaling(1/255) inside
    f, logits = keras_outputs(m, feature_layer, x * scale)
    with torch.no_grad():
        fb = ours.forward_features(x)
        lb = ours.forward_head(fb)
    assert 1e-2 < f.abs().max() < 1e3
    assert (f - fb).abs().max() <= TOL and (logits - lb).abs().max() <= TOL, twin


# Keras builds every weight for real (no meta device): B4-B7 (3-7 s each) are left out; they come from the same
# Keras code with larger width/depth factors, whose rounding our zoo shares with timm (tests/test_zoo.py).
CHECKED = [t.name for t in KERAS.twins if t.name not in ("EfficientNetB4", "EfficientNetB5", "EfficientNetB6",
                                                           "EfficientNetB7")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("twin", CHECKED)
def test_every_twin_maps_exactly_and_is_recognised(twin: str) -> None:
    spec = twin_spec(find_twin(KERAS, twin))
    if twin.startswith("MobileNetV2"):
        m = keras.applications.MobileNetV2(weights=None, alpha=int(twin[-3:]) / 100)
    else:
        m = getattr(keras.applications, twin)(weights=None)
    sd = {w.path: torch.zeros(tuple(w.shape)) for w in m.weights}
    with torch.device("meta"):
        ours = MBConvNet(spec, init="torch").state_dict()
    layout = KERAS.detect(set(sd))
    converted = KERAS.key_map(spec, layout).to_ours(KERAS.torch_form(sd))
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert [t.name for t, _ in match_twins(KERAS.torch_form(sd), KERAS, layout)] == [twin]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_h5_file_loads_and_converts(tmp_path, capsys) -> None:
    from mbconv.cli import main
    from mbconv.workflow import load_run

    m = keras_model("MobileNetV2")
    path = tmp_path / "mnv2.h5"
    m.save(path)  # Keras' legacy HDF5: layers stored by name
    x = torch.rand(1, 3, SIZE, SIZE)
    _, logits = keras_outputs(m, "out_relu", x)
    assert main(["convert", "--weights", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "keras MobileNetV2_100 -> mobilenetv2_100 with padding=same" in capsys.readouterr().out
    model, meta, _ = load_run(tmp_path / "run")
    assert model.spec.padding == "same" and meta["data"]["pretrained"]["key"] == "keras:mobilenet_v2"
    with torch.no_grad():
        assert (model(x) - logits).abs().max() <= TOL
    m.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ValueError, match="names layers by class.*pass the model"):
        load_weights(MBConvNet(model.spec), tmp_path / "w.weights.h5")
