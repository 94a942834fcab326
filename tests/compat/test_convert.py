"""`mbconv convert`: random-weight torchvision / efficientnet_pytorch / timm files become run directories that
load_run, predict and export read; the model is recognised from the weights; bad choices fail in one line."""

from __future__ import annotations

import json

import pytest
import torch
from twin_check import randomise_

from mbconv.cli import main
from mbconv.workflow import load_run

tvm = pytest.importorskip("torchvision.models")


@pytest.fixture(scope="module")
def tv_run(tmp_path_factory):
    """A torchvision MobileNetV3-small with random weights, saved as a .pth and converted."""
    torch.manual_seed(0)
    tv = randomise_(tvm.mobilenet_v3_small(weights=None)).eval()
    tmp = tmp_path_factory.mktemp("convert")
    torch.save(tv.state_dict(), tmp / "mnv3s.pth")
    assert main(["convert", "--weights", str(tmp / "mnv3s.pth"), "--out", str(tmp / "run")]) == 0
    return tv, tmp / "run"


def test_converted_run_computes_what_torchvision_does(tv_run, capsys) -> None:
    tv, run = tv_run
    model, meta, ck = load_run(run)
    assert ck.name == "last" and model.spec.name == "mobilenetv3_small_100"
    assert model.spec.norm_eps == 1e-3 and model.spec.norm_momentum == 0.01  # torchvision's BN, not the zoo's
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert (model(x) - tv(x)).abs().max() <= 1e-4
    data = meta["data"]
    assert data["pretrained"]["key"] == "torchvision:mobilenet_v3_small.IMAGENET1K_V1"
    assert data["resolution"] == 224 and data["in_chans"] == 3 and data["classes"][:2] == ["tench", "goldfish"]
    assert meta["source"]["scheme"] == "torchvision" and meta["source"]["model"] == "mobilenet_v3_small"


def test_predict_and_export_read_the_converted_run(tv_run, tmp_path, capsys) -> None:
    skio = pytest.importorskip("skimage.io")
    skdata = pytest.importorskip("skimage.data")
    _, run = tv_run
    skio.imsave(tmp_path / "cat.png", skdata.chelsea())  # 300 x 451: resized, centre-cropped to 224
    skio.imsave(tmp_path / "coffee.png", skdata.coffee())  # 400 x 600: another size in the same call
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "cat.png"), str(tmp_path / "coffee.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("%" in line for line in lines)
    names = {n.rsplit(" ", 1)[0] for line in lines for n in line.split(": ", 1)[1].split(", ")}
    assert names <= set(load_run(run)[1]["data"]["classes"]) and not names & {str(i) for i in range(1000)}
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "max abs diff" in capsys.readouterr().out


def test_efficientnet_pytorch_safetensors_with_10_classes(tmp_path, capsys) -> None:
    ep = pytest.importorskip("efficientnet_pytorch")
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    m = randomise_(ep.EfficientNet.from_name("efficientnet-b0", num_classes=10)).eval()  # static pads for 224
    st.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "b0.safetensors"))
    assert main(["convert", "--weights", str(tmp_path / "b0.safetensors"), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_pytorch efficientnet-b0 -> tf_efficientnet_b0 with drop_path_rate=0.2" in out
    model, meta, _ = load_run(tmp_path / "run")
    assert model.spec.num_classes == 10 and meta["data"]["classes"] == [str(i) for i in range(10)]
    assert meta["data"]["pretrained"]["key"] == "timm:tf_efficientnet_b0.aa_in1k"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - m(x)).abs().max() <= 1e-4


def test_timm_weights_need_the_model_name(tmp_path, capsys) -> None:
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("mobilenetv3_small_100", pretrained=False).state_dict(), tmp_path / "t.pth")
    assert main(["convert", "--weights", str(tmp_path / "t.pth"), "--out", str(tmp_path / "run")]) == 2
    assert "give the zoo name (--model NAME)" in capsys.readouterr().err
    assert main(["convert", "--weights", str(tmp_path / "t.pth"), "--model", "mobilenetv3_small_100", "--out",
                 str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "last" / "meta.json").read_text())["spec"]
    assert meta["data"]["pretrained"]["key"] == "timm:mobilenetv3_small_100.lamb_in1k"


def test_bad_inputs_fail_in_one_line(tv_run, tmp_path, capsys) -> None:
    _, run = tv_run
    weights = next(run.parent.glob("*.pth"))
    assert main(["convert", "--weights", str(weights), "--model", "mobilenetv3_large_100", "--out",
                 str(tmp_path / "r")]) == 2
    assert "cannot load torchvision weights" in capsys.readouterr().err
    assert main(["convert", "--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["convert", "--weights", "no_such_weights_package", "--out", str(tmp_path / "r")]) == 2
    assert "no installed package 'no_such_weights_package'" in capsys.readouterr().err


def test_channel_mismatch_names_both_numbers(tmp_path, capsys) -> None:
    """A 1-channel dataset for a 3-channel model: one line, not an ONNX Runtime traceback."""
    assert main(["export", "efficientnet_b0", "--int8", "--data", "digits8", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'digits8' has 1 channel(s)" in err and "takes 3" in err
