"""BN folding, the inference module, ONNX export (checked in ONNX Runtime) and the export/bench CLI."""

import pytest
import torch
from torch import nn

from mbconv import create_model
from mbconv.export import align_se, check_onnx, export_onnx, op_counts
from mbconv.inference import channels_last_input, prepare_inference, record_pads
from mbconv.layers import DropPath, SamePad, fuse_bn, strip_training
from mbconv.net import MBConvNet

SIZE = {1: (40,), 2: (48, 48), 3: (16, 16, 16)}


def randomized(name, dims=2, **kw):
    """A model with non-trivial BN statistics and affine parameters, so a wrong fold would show."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, dims=dims, **kw).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.0)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


@pytest.mark.parametrize("name,dims", [("efficientnet_b0", 2), ("mobilenetv3_small_100", 2), ("tf_efficientnetv2_s", 2),
                                       ("efficientnet_b0", 1), ("efficientnet_b0", 3)])
def test_fuse_bn_equal_outputs(name, dims):
    m = randomized(name, dims)
    x = torch.randn(2, 3, *SIZE[dims])
    f = fuse_bn(m)
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in f.modules())
    assert any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in m.modules())  # copy, not in place
    torch.testing.assert_close(f(x), m(x), atol=1e-4, rtol=1e-4)


# -- the inference module ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dims,size", [
    ("efficientnet_b0", 2, 48), ("tf_efficientnet_b0", 2, 48), ("tf_efficientnet_b0", 2, 47),
    ("tf_mobilenetv3_small_100", 2, 50), ("tf_efficientnetv2_s", 2, 40), ("tf_efficientnet_b0", 1, 41),
    ("tf_efficientnet_b0", 3, 18)])
def test_inference_module_equal_and_free_of_training_branches(name, dims, size):
    m = randomized(name, dims, drop_path_rate=0.2)
    m.train()  # prepare_inference must switch to eval itself
    x = torch.randn(3, 3, *([size] * dims))
    ref = m.eval()(x)
    m.train()
    for cl in (False, True):
        net = prepare_inference(m, size, channels_last=cl)
        assert isinstance(net, MBConvNet) and not net.training
        kinds = {type(mod) for mod in net.modules()}
        assert not kinds & {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, DropPath, nn.Dropout, SamePad}
        out = net(channels_last_input(x) if cl else x)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert m.training and any(isinstance(mod, DropPath) for mod in m.modules())  # input model untouched
    # without a resolution the TF pads stay dynamic: other input sizes still work
    dyn = prepare_inference(m)
    x2 = torch.randn(2, 3, *([size + 3] * dims))
    torch.testing.assert_close(dyn(x2), m.eval()(x2), atol=1e-4, rtol=1e-4)


def test_inference_module_keeps_names_for_hooks_and_does_not_touch_input():
    m = randomized("efficientnet_b0")
    net = prepare_inference(m, 32)
    names = dict(net.named_modules())
    assert {"stem.conv", "stages.1.0.expand.conv", "stages.1.0.depthwise.act", "stages.1.0.se.gate",
            "stages.1.0.project.conv", "head.conv", "classifier"} <= set(names)
    gates = []
    h = names["stages.1.0.se.gate"].register_forward_hook(lambda mod, i, o: gates.append(o.clone()))
    x = torch.randn(2, 3, 32, 32)
    x0 = x.clone()
    net(x)
    h.remove()
    assert len(gates) == 1 and gates[0].shape[:2] == (2, m.stages[1][0].se.conv_expand.out_channels)
    assert torch.equal(x, x0)  # in-place ops never write into the caller's tensor


def test_static_pads_recorded_and_folded():
    m = fuse_bn(randomized("tf_efficientnet_b0"))
    pads = record_pads(m, torch.zeros(1, 3, 64, 64))
    assert pads["stem.pad"] == [0, 1, 0, 1]  # k3 s2 on an even size: TF pads after only
    assert pads["stages.2.0.depthwise.pad"] == [1, 2, 1, 2]  # k5 s2
    odd = record_pads(m, torch.zeros(1, 3, 65, 65))
    assert odd["stem.pad"] == [1, 1, 1, 1]
    net = prepare_inference(m, 65)
    assert net.stem.conv.padding == (1, 1) and isinstance(net.stem.pad, nn.Identity)  # symmetric: in the conv


def test_strip_training_and_errors():
    m = create_model("efficientnet_b0", num_classes=3, drop_path_rate=0.3).train()
    s = strip_training(m)
    assert not s.training and not any(isinstance(mod, (DropPath, nn.Dropout)) for mod in s.modules())
    with pytest.raises(ValueError, match="MBConvNet-like"):
        prepare_inference(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="resolution"):
        prepare_inference(m, (32, 0))
    with pytest.raises(ValueError, match="resolution"):
        prepare_inference(m, (32, 32, 32))
    with pytest.raises(ValueError, match="spec"):
        export_onnx(nn.Conv2d(3, 3, 3), "/tmp/never.onnx", 32)


def test_align_se_is_exact():
    m = randomized("efficientnet_b0")
    net = prepare_inference(m, 32, inplace=False)
    x = torch.randn(2, 3, 32, 32)
    ref = net(x)
    align_se(net, 16)
    widths = {mod.conv_reduce.out_channels for mod in net.modules() if hasattr(mod, "conv_reduce")}
    assert widths and all(w % 16 == 0 for w in widths)
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)


# -- ONNX export in ONNX Runtime ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,dims,size", [
    ("efficientnet_b0", 2, 48), ("tf_efficientnet_b0", 2, 48), ("tf_efficientnetv2_s", 2, 32),
    ("mobilenetv3_small_100", 2, 48), ("tf_efficientnet_b0", 1, 40), ("efficientnet_b0", 3, 16)])
def test_export_onnx_matches_pytorch(tmp_path, name, dims, size):
    m = randomized(name, dims)
    info = export_onnx(m, tmp_path / "m.onnx", size)
    ops = op_counts(tmp_path / "m.onnx")
    assert ops == info["ops"]
    # clean graph: BN folded, pads merged into Conv, no identity/shape/reshape noise, SE squeeze as GAP
    assert not set(ops) & {"BatchNormalization", "Pad", "Identity", "Shape", "Gather", "Reshape", "ReduceMean",
                           "Constant", "ConstantOfShape"}
    assert ops["GlobalAveragePool"] >= 2
    for batch in (1, 3):  # dynamic batch axis
        x = torch.randn(batch, 3, *([size] * dims))
        assert check_onnx(m, tmp_path / "m.onnx", x) <= 1e-4


def test_export_onnx_static_batch(tmp_path):
    import onnx

    m = randomized("mobilenetv3_small_100")
    export_onnx(m, tmp_path / "s.onnx", 32, dynamic_batch=False, se_multiple=0)
    dim0 = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1
    assert check_onnx(m, tmp_path / "s.onnx", torch.randn(1, 3, 32, 32)) <= 1e-4


# -- CLI ---------------------------------------------------------------------------------------------------
def test_cli_export_and_bench(tmp_path, capsys):
    from mbconv.cli import main

    out = tmp_path / "b0.onnx"
    assert main(["export", "tf_efficientnet_b0", "--resolution", "32", "--num-classes", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "max abs diff" in text and "(ok" in text
    assert main(["bench", "mobilenetv3_small_100", "--resolution", "32", "--rounds", "2", "--batch", "2"]) == 0
    assert "img/s" in capsys.readouterr().out
    assert main(["bench", "efficientnet_b0", "--resolution", "32", "--rounds", "2", "--backend", "onnx"]) == 0
    assert "onnx" in capsys.readouterr().out
    assert main(["export", "efficientnet_b0", "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["export", "--out", str(out)]) == 2
    assert main(["export", "efficientnet_b0", "--checkpoint", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("mbconv: error:") == 3 and "Traceback" not in err


# -- ONNX Runtime int8 with bias correction ------------------------------------------------------------------
def ort_weights(path):
    """{weight shape: dequantized weights} of the conv/linear weight initializers of an int8 QDQ ONNX file."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2:
            q, s, z = (inits[i].astype(np.float64) for i in n.input[:3])
            shape = [-1] + [1] * (q.ndim - 1)
            out.setdefault(q.shape, []).append((q - z.reshape(shape)) * s.reshape(shape))
    return out


@pytest.mark.parametrize("weight", ["s8", "u8"])
def test_ort_bias_correction_grid_is_the_one_ort_writes(tmp_path, weight):
    pytest.importorskip("onnxruntime")
    from mbconv.export.int8 import export_int8, ort_weight_quantized
    from mbconv.quant.insert import host_weight, quantizers

    m = randomized("ds_r1_k3_s1_c8")
    x = torch.rand(8, 3, 32, 32)
    info = export_int8(m, tmp_path / "m.onnx", x, 32, weight=weight)
    assert info["weight"] == weight and not info["bias_correction"]
    written = ort_weights(tmp_path / "m.onnx")
    q = ort_weight_quantized(m, weight)
    for fq in quantizers(q, ["weight"]).values():
        mine = fq(host_weight(q, fq)).detach().double().numpy()
        cands = written[mine.shape]
        steps = fq.step().double().numpy().reshape([-1] + [1] * (mine.ndim - 1))
        off = min(((abs(c - mine) > 1e-3 * steps).sum(axis=tuple(range(1, mine.ndim))) for c in cands),
                  key=lambda v: v.sum())
        # s8: every weight as ORT rounds it; u8: at most one tap per channel (a float32 tie at -max|w|)
        assert off.max() <= (0 if weight == "s8" else 1), (fq.site, off)
        assert min(float((abs(c - mine) / steps).max()) for c in cands) <= 1.001  # one step at most


@pytest.mark.parametrize("weight", ["s8", "u8"])
def test_ort_bias_correction_removes_the_mean_logit_shift(tmp_path, weight):
    pytest.importorskip("onnxruntime")
    from mbconv.export import ort_logits, ort_session
    from mbconv.export.int8 import export_int8

    m = randomized("ds_r1_k3_s1_c8")
    with torch.no_grad():  # one large tap per output channel: coarse weight steps, a large mean rounding shift
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.view(mod.weight.shape[0], -1)[:, 0] = 8 * mod.weight.abs().max()
    torch.manual_seed(1)
    x = torch.rand(32, 3, 32, 32) * 2  # a non-zero mean input: what the correction's E[x] must carry
    with torch.no_grad():
        ref = m(x).numpy()
    shift = {}
    for bc in (False, True):
        info = export_int8(m, tmp_path / f"m{bc}.onnx", x, 32, weight=weight, bias_correction=bc)
        assert info["bias_correction"] is bc
        out, _ = ort_logits(ort_session(tmp_path / f"m{bc}.onnx", 1), x)
        shift[bc] = float(abs((out - ref).mean(0)).mean())  # per-class mean error: the bias term
    assert shift[True] < 0.7 * shift[False], shift


def test_cli_export_int8_bias_correction(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import mbconv.export.int8 as int8
    from mbconv.cli import main

    base = ["export", "ds_r1_k3_s1_c8", "--resolution", "32", "--num-classes", "5", "--int8", "--calib-samples", "8"]
    weight = int8.int8_kernels()["weight"]
    assert main([*base, "--data", "photos", "--out", str(tmp_path / "d.onnx")]) == 0
    on = weight in int8.BC_DEFAULT_WEIGHTS  # the measured default for this CPU's weight grid
    assert (f"{weight} weights, {'bias-corrected' if on else 'no bias correction'}," in capsys.readouterr().out)
    monkeypatch.setattr(int8, "BC_DEFAULT_WEIGHTS", frozenset({weight}))  # a grid where it is the default
    assert main([*base, "--data", "photos", "--out", str(tmp_path / "bc.onnx")]) == 0
    assert ", bias-corrected," in capsys.readouterr().out
    assert main([*base, "--data", "photos", "--no-bias-correction", "--out", str(tmp_path / "p.onnx")]) == 0
    assert ", no bias correction," in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "r.onnx")]) == 0  # random calibration: nothing to correct on
    text = capsys.readouterr().out
    assert ", no bias correction," in text and "random inputs" in text
    assert (tmp_path / "bc.onnx").exists() and (tmp_path / "bc.fp32.onnx").exists()


def test_cli_export_int8_bias_correction_forced(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import mbconv.export.int8 as int8
    from mbconv.cli import main

    base = ["export", "ds_r1_k3_s1_c8", "--resolution", "32", "--num-classes", "5", "--int8", "--calib-samples", "8"]
    monkeypatch.setattr(int8, "BC_DEFAULT_WEIGHTS", frozenset())  # a grid where it is off by default
    assert main([*base, "--data", "photos", "--bias-correction", "--out", str(tmp_path / "f.onnx")]) == 0
    assert ", bias-corrected," in capsys.readouterr().out
    assert main([*base, "--bias-correction", "--out", str(tmp_path / "g.onnx")]) != 0
    assert "--bias-correction needs --data" in capsys.readouterr().err
    assert main([*base, "--data", "photos", "--bias-correction", "--no-bias-correction", "--out",
                 str(tmp_path / "h.onnx")]) != 0  # the two switches exclude each other
    assert "not allowed with argument --bias-correction" in capsys.readouterr().err
    assert not (tmp_path / "g.onnx").exists()


# -- bad arguments: one line naming what is wrong, before any work and before any file is written ---------------
def test_export_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    from mbconv.export import export_int8, ort_run, ort_session, quantize_onnx, time_sessions

    torch.manual_seed(0)
    m = MBConvNet(create_model("ir_r1_k3_s1_e2_c8_se0.25", num_classes=3, resolution=16).spec).eval()
    (tmp_path / "afile").write_text("x")
    cases = [
        (lambda: export_onnx(m, tmp_path / "m.onnx", opset=999), "opset=999"),  # torch printed its IR graph
        (lambda: export_onnx(m, tmp_path / "m.onnx", opset=9), "opset=9"),
        (lambda: export_onnx(m, tmp_path / "m.onnx", se_multiple=-1), "se_multiple=-1"),
        (lambda: export_onnx(m, tmp_path, opset=17), "is a folder"),  # was an IsADirectoryError after the export
        (lambda: export_onnx(m, tmp_path / "afile" / "m.onnx"), "cannot create the folder"),
        (lambda: export_onnx(m, tmp_path / "m.onnx", example=torch.randn(1, 3, 16)), "expects rank 4"),
        (lambda: export_int8(m, tmp_path / "q.onnx", torch.randn(4, 3, 16, 16), batch_size=0), "batch_size=0"),
        (lambda: quantize_onnx(tmp_path / "none.onnx", tmp_path / "q.onnx", []), "no such ONNX file"),
    ]
    for call, words in cases:
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            call()
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert "graph(" not in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written, not even a temp file

    fp = export_onnx(m, tmp_path / "m.onnx")["path"]
    s = ort_session(fp)
    for call, words in [(lambda: ort_run(s, torch.randn(1, 1, 16, 16)), "(N, 3, 16, 16)"),
                        (lambda: ort_run(s, torch.randn(1, 3, 16)), "shape (1, 3, 16)"),
                        (lambda: ort_session(fp, threads=0), "threads=0"),
                        (lambda: time_sessions({"a": s}, torch.randn(0, 3, 16, 16).numpy()), "no samples"),
                        (lambda: quantize_onnx(fp, tmp_path / "q.onnx", [torch.randn(2, 1, 16, 16).numpy()]),
                         "does not fit")]:
        with pytest.raises(ValueError) as e:
            call()
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "q.onnx.tmp").exists()
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load .*bad.onnx") as e:  # was InvalidProtobuf
        ort_session(tmp_path / "bad.onnx")
    assert "\n" not in str(e.value)
