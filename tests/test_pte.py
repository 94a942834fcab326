"""ExecuTorch (.pte) export for phones (mbconv.export.pte): the mean rewrite, fp32 parity and full XNNPACK
delegation on every 2-D zoo family and a 1-D net, int8 (PT2E + XNNPACK quantizer) against fp32, against the PT2E
reference and against our fake-quant, the runtime's thread count, the CLI, and the missing-extra message.

The nets are tiny (one or two stages, width 0.25, 32 px): lowering time grows with the number of graph nodes.
Tests that need executorch skip without the `phone` extra.
"""

import copy
import gc
import sys

import pytest
import torch
from torch import nn

from mbconv import create_model
from mbconv.cli import main
from mbconv.export import pte
from mbconv.export.pte import (
    PHONE_HINT,
    PT2E_WEIGHT_EPS,
    agreement,
    bias_corrected_copy,
    export_pte,
    export_pte_int8,
    fold_pads_into_convs,
    is_zero_pad,
    lower_to_pte,
    need_executorch,
    pt2e_weight_config,
    pte_logits,
    pte_method,
    quantize_pt2e,
    rewrite_means,
    set_pte_threads,
    split_silu,
)
from mbconv.layers import fuse_bn
from mbconv.quant import QuantConfig, calibrate, insert_quantizers, ptq
from mbconv.quant.insert import host_weight, quantizers
from mbconv.zoo import get_spec

# (zoo name, leading stages kept): each family's own blocks, activations, SE gate, padding and head.
FAMILIES_2D = [
    ("efficientnet_b0", 1),  # DS block with SE, SiLU, sigmoid gate
    ("tf_efficientnet_b0", 1),  # TF 'same' pads (asymmetric StaticPad on the strided stem)
    ("tf_efficientnet_lite0", 2),  # ReLU6, no SE, TF pads on a strided IR block
    ("efficientnetv2_s", 2),  # Fused-MBConv (conv / fused-expand blocks)
    ("mobilenetv2_100", 1),  # ReLU6 DS block, symmetric pads
    ("tf_mobilenetv3_small_100", 1),  # hard-swish, ReLU SE with hard-sigmoid gate, pool-then-conv head
]
FAMILIES_1D = [("efficientnet1d_b0", 1)]  # 1-D convs and 1-D SE means
SIZE = {1: 64, 2: 32}


def tiny(name: str, stages: int) -> nn.Module:
    """A few blocks of a zoo family with non-trivial BN statistics (a wrong fold or pad would show)."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, width_mult=0.25, depth_mult=0.1,
                     stages=get_spec(name).stages[:stages]).eval()
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.0)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


def inputs(m: nn.Module, n: int) -> torch.Tensor:
    return torch.randn(n, m.spec.in_chans, *([SIZE[m.spec.dims]] * m.spec.dims))


def heavy_ops_outside_xnnpack(info: dict) -> list[str]:
    return [op for op in info["portable_ops"] if any(k in op for k in ("convolution", "mean", "mm", "mul", "add"))]


# -- no executorch needed -------------------------------------------------------------------------------------
class Pools(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # 1-D: an SE-style keepdim mean and a classifier-style pooled mean
            return (x * x.mean(2, keepdim=True)).mean(-1)
        return x.mean((2, 3)) + x.mean((-1, -2), keepdim=True).flatten(1)


@pytest.mark.parametrize("shape,rewritten", [((2, 5, 6, 7), 1), ((2, 5, 9), 2)])
def test_rewrite_means_gives_xnnpack_means_with_equal_outputs(shape, rewritten):
    x = torch.randn(*shape)
    gm = torch.export.export(Pools(), (x,)).module()
    assert rewrite_means(gm) == rewritten
    means = [n for n in gm.graph.nodes if n.target == torch.ops.aten.mean.dim]
    assert means and all(n.args[0].meta["val"].dim() == 4 and n.args[2] is True for n in means)
    torch.testing.assert_close(gm(x), Pools()(x))
    assert rewrite_means(gm) == 0  # already XNNPACK's form


def test_split_silu_gives_equal_outputs():
    m = tiny("efficientnet_b0", 1)
    gm, _ = pte.phone_module(m, 32, batch=2)
    silus = sum(1 for n in gm.graph.nodes if n.target == torch.ops.aten.silu.default)
    x = inputs(m, 2)
    ref = gm(x)
    assert silus > 0 and split_silu(gm) == silus
    assert not any(n.target == torch.ops.aten.silu.default for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), ref)


def test_agreement_metrics():
    ref = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.2, 0.1], [0.0, 0.0, 3.0]])
    out = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.2], [0.0, 0.0, 3.0]])
    a = agreement(ref, out, confident=0.5)
    assert a["top1_agreement"] == pytest.approx(2 / 3) and a["samples"] == 3
    assert a["confident_samples"] == 2 and a["top1_agreement_confident"] == 1.0  # the unsure row is the flip
    assert a["max_abs_diff"] == pytest.approx(0.1)
    assert a["sqnr_db"] == pytest.approx(10 * torch.log10(torch.tensor(25.05 / 0.02)).item(), rel=1e-6)
    assert agreement(ref, ref)["sqnr_db"] == float("inf")
    with pytest.raises(ValueError, match="expected equal"):
        agreement(ref, out[:2])


def test_missing_extra_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "executorch", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'mbconv\[phone\]'"):
        need_executorch()
    assert main(["export", "ds_r1_k3_s1_c8", "--resolution", "16", "--format", "pte",
                 "--out", str(tmp_path / "m.pte")]) == 2
    err = capsys.readouterr().err
    assert PHONE_HINT in err and len(err.strip().splitlines()) == 1


# -- with executorch ------------------------------------------------------------------------------------------
@pytest.fixture
def et():
    return pytest.importorskip("executorch")


@pytest.mark.parametrize("name,stages", FAMILIES_2D + FAMILIES_1D)
def test_family_fp32_program_is_one_delegate_equal_to_pytorch(et, name, stages, tmp_path):
    m = tiny(name, stages)
    x = inputs(m, 6)
    info = export_pte(m, tmp_path / "fp32.pte", SIZE[m.spec.dims])
    assert info["delegate_calls"] == 1 and not heavy_ops_outside_xnnpack(info), info
    assert info["input_shape"] == [1, *x.shape[1:]] and info["size_bytes"] > 0
    with torch.no_grad():
        ref = m(x)
    out = pte_logits(pte_method(info["path"]), x)
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))


# int8 on the families whose quantized graphs differ: SiLU + sigmoid SE, ReLU6 + TF pads (quantized pad),
# hard-swish + hard-sigmoid, 1-D convs and means (the others add no op the int8 path handles differently)
@pytest.mark.parametrize("name,stages", [FAMILIES_2D[0], FAMILIES_2D[2], FAMILIES_2D[5], FAMILIES_1D[0]])
def test_family_int8_program_follows_fp32_and_its_pt2e_reference(et, name, stages, tmp_path):
    m = tiny(name, stages)
    x = inputs(m, 6)
    qgm, example = quantize_pt2e(m, inputs(m, 16), SIZE[m.spec.dims])
    info = lower_to_pte(qgm, example, tmp_path / "int8.pte")
    assert info["delegate_calls"] == 1 and not heavy_ops_outside_xnnpack(info), info
    lq = pte_logits(pte_method(info["path"]), x)
    with torch.no_grad():
        ref, lref = m(x), qgm(x)
    vs_fp32, vs_ref = agreement(ref, lq), agreement(lref, lq)
    assert vs_fp32["max_abs_diff"] > 1e-5  # really quantized
    assert 20 < vs_fp32["sqnr_db"] and 30 < vs_ref["sqnr_db"], (vs_fp32, vs_ref)


def test_fold_pads_keeps_outputs_and_xnnpack_folds_the_pads(et, tmp_path):
    from mbconv.export.pte_profile import pte_op_times

    m = tiny("tf_efficientnet_lite0", 2)  # TF pads: on the strided stem (float input) and a strided depthwise
    x = inputs(m, 4)
    plain, example = quantize_pt2e(m, inputs(m, 16), 32, fold_pads=False)
    folded = copy.deepcopy(plain)
    pads = [n for n in folded.graph.nodes if is_zero_pad(n)]
    assert len(pads) == 2 and fold_pads_into_convs(folded) == 2 and fold_pads_into_convs(folded) == 0
    for n in pads:  # dequantize -> pad -> conv: the pattern ExecuTorch's partitioner takes into the int8 conv
        assert n.args[0].target == torch.ops.quantized_decomposed.dequantize_per_tensor.default
        assert [u.target for u in n.users] == [torch.ops.aten.conv2d.default]
    with torch.no_grad():
        assert torch.equal(folded(x), plain(x))
    paths = {k: tmp_path / f"{k}.pte" for k in ("plain", "folded")}
    for k, gm in (("plain", plain), ("folded", folded)):
        assert lower_to_pte(gm, example, paths[k])["delegate_calls"] == 1
    torch.testing.assert_close(pte_logits(pte_method(paths["folded"]), x), pte_logits(pte_method(paths["plain"]), x),
                               rtol=0, atol=1e-6)
    set_pte_threads(1)
    ops = {k: [e["event"] for e in p["events"]] for k, p in pte_op_times(paths, example, runs=1, warmup=0).items()}
    fp32_pads = {k: sum("Constant Pad (ND, X32)" in e for e in v) for k, v in ops.items()}
    converts = {k: sum(e.startswith("Convert") for e in v) for k, v in ops.items()}
    assert fp32_pads == {"plain": 2, "folded": 0}, ops
    assert converts["folded"] == 2 and converts["plain"] > 2, ops  # only the input's and the output's


def test_relu6_is_quantized_after_the_clamp(et, monkeypatch):
    m = tiny("tf_efficientnet_lite0", 2)
    for mod in m.modules():  # wide pre-activations, as in a trained net: most of the range lies outside 0..6
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.weight.data *= 4
    gm = pte.phone_module(m, 32)[0]  # BN folded: every ReLU6 follows its conv
    xq = need_executorch("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    relu6 = sum(1 for n in gm.graph.nodes if n.target == torch.ops.aten.hardtanh.default)
    assert relu6 > 0 and pte.annotate_conv_relu6(gm, xq.get_symmetric_quantization_config()) == relu6
    calib, x = inputs(m, 16), inputs(m, 16)
    with torch.no_grad():
        ref = m(x)
        fixed = agreement(ref, quantize_pt2e(m, calib, 32, observer="histogram")[0](x))
        monkeypatch.setattr(pte, "annotate_conv_relu6", lambda gm, config: 0)  # the quantizer's own annotation
        shared = agreement(ref, quantize_pt2e(m, calib, 32, observer="histogram")[0](x))
    assert fixed["sqnr_db"] > shared["sqnr_db"] + 3, (fixed, shared)


def test_pt2e_int8_is_comparable_to_our_fake_quant(et):
    m = tiny("efficientnet_b0", 1)
    calib, x = inputs(m, 32), inputs(m, 32)
    with torch.no_grad():
        ref = m(x)
        pt2e = quantize_pt2e(m, calib, 32)[0](x)
        ours = ptq(m, QuantConfig(wbits=8, abits=8), calib)(x)
    a_pt2e, a_ours = agreement(ref, pt2e), agreement(ref, ours)
    assert a_pt2e["sqnr_db"] > 20 and a_ours["sqnr_db"] > 20
    assert abs(a_pt2e["sqnr_db"] - a_ours["sqnr_db"]) < 12, (a_pt2e, a_ours)
    assert agreement(ours, pt2e)["top1_agreement"] >= 0.8


def pt2e_weights(qgm: torch.fx.GraphModule) -> list[torch.Tensor]:
    """The dequantized weights of a converted PT2E module, in graph order (its per-channel constants)."""
    out = []
    for n in qgm.graph.nodes:
        if n.op == "call_function" and "dequantize_per_channel" in str(n.target) and n.args[0].op == "get_attr":
            out.append(n.target(*[getattr(qgm, a.target) if isinstance(a, torch.fx.Node) else a for a in n.args]))
    return out


def test_fake_quant_weights_round_exactly_like_pt2e(et):
    m = tiny("tf_efficientnet_lite0", 2)
    with torch.no_grad():  # a near-dead stem channel: its scale is PT2E's eps floor, not max|w| / 127
        m.stem.conv.weight[0] *= 1e-3
    qgm, _ = quantize_pt2e(m, inputs(m, 4), 32)
    q = fuse_bn(m)
    insert_quantizers(q, pt2e_weight_config())
    calibrate(q, inputs(m, 1), 1, 1)
    fqs = list(quantizers(q, ["weight"]).values())
    theirs = pt2e_weights(qgm)
    assert len(theirs) == len(fqs) > 5  # every conv and the classifier
    assert float(fqs[0].scale[0]) < PT2E_WEIGHT_EPS  # the floor matters for that channel
    for fq in fqs:
        fq.scale.data.clamp_(min=PT2E_WEIGHT_EPS)  # as bias_corrected_copy does
    for fq, w in zip(fqs, theirs):
        ours = fq(host_weight(q, fq)).detach()
        assert torch.equal(ours, w.reshape(ours.shape)), fq.site


def test_bias_correction_brings_pt2e_int8_closer_to_fp32(et, tmp_path):
    m = tiny("tf_efficientnet_lite0", 2)
    torch.manual_seed(1)
    calib, held = inputs(m, 32) * 0.5 + 0.3, inputs(m, 64) * 0.5 + 0.3  # non-zero mean inputs: a mean shift
    fixed = bias_corrected_copy(m, calib)
    biases = [mod.bias for mod in fuse_bn(m).modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    moved = [mod.bias for mod in fixed.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert len(moved) == len(biases) and all(not torch.equal(a, b) for a, b in zip(biases, moved))
    with torch.no_grad():
        ref = m(held)
        plain = agreement(ref, quantize_pt2e(m, calib, 32)[0](held))
        qgm, example = quantize_pt2e(m, calib, 32, bias_correction=True)
        corrected = agreement(ref, qgm(held))
        same = agreement(qgm(held), quantize_pt2e(fixed, calib, 32)[0](held))  # = PT2E of the corrected copy
    assert corrected["sqnr_db"] > plain["sqnr_db"] + 0.5, (plain, corrected)
    assert same["max_abs_diff"] < 1e-5, same
    info = export_pte_int8(m, tmp_path / "bc.pte", calib, 32, bias_correction=True)
    assert info["bias_correction"] and info["delegate_calls"] == 1
    lq = pte_logits(pte_method(info["path"]), held[:4])
    assert agreement(qgm(held[:4]).detach(), lq)["sqnr_db"] > 30  # the program runs the corrected PT2E graph


class FakeMethod:
    """Stands in for a batch-2 ExecuTorch method: returns the per-sample sums, reusing one output buffer."""

    def __init__(self) -> None:
        self.out = torch.zeros(2, 1)
        self.shapes: list[tuple[int, ...]] = []

    def execute(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        self.shapes.append(tuple(args[0].shape))
        self.out.copy_(args[0].flatten(1).sum(1, keepdim=True))
        return [self.out]


def test_pte_logits_pads_the_last_batch_and_copies_outputs():
    x = torch.arange(10.0).reshape(5, 2)
    out = pte_logits(FakeMethod(), x, batch=2)
    assert out.flatten().tolist() == [1.0, 5.0, 9.0, 13.0, 17.0]  # not five copies of the last buffer
    m = FakeMethod()
    pte_logits(m, x, batch=2)
    assert m.shapes == [(2, 2)] * 3  # the static shape every call, the last sample repeated


def test_export_errors(et, tmp_path):
    torch.manual_seed(0)
    m = create_model("ds_r1_k3_s1_c8", num_classes=10).eval()
    with pytest.raises(ValueError, match="should end in .pte"):
        export_pte(m, tmp_path / "m.onnx", 32)
    with pytest.raises(ValueError, match="calibration samples of shape"):
        export_pte_int8(m, tmp_path / "q.pte", torch.randn(4, 3, 16, 16), 32)
    with pytest.raises(ValueError, match="empty"):
        export_pte_int8(m, tmp_path / "q.pte", torch.randn(0, 3, 32, 32), 32)
    with pytest.raises(ValueError, match="invalid observer='mse'"):
        export_pte_int8(m, tmp_path / "q.pte", torch.randn(4, 3, 32, 32), 32, observer="mse")
    with pytest.raises(ValueError, match="needs per_channel=True"):
        export_pte_int8(m, tmp_path / "q.pte", torch.randn(4, 3, 32, 32), 32, per_channel=False, bias_correction=True)
    with pytest.raises(ValueError, match="dims=3"):
        export_pte(create_model("mbconv3d_small"), tmp_path / "m.pte", 16)
    with pytest.raises(ValueError, match="invalid batch"):
        export_pte(m, tmp_path / "m.pte", 32, batch=0)
    with pytest.raises(FileNotFoundError):
        pte_method(tmp_path / "missing.pte")
    assert not list(tmp_path.iterdir())  # nothing written by a failed export
    (tmp_path / "afile").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="cannot create the folder"):  # before lowering, not pathlib's error after
        export_pte(m, tmp_path / "afile" / "m.pte", 32)
    with pytest.raises(ValueError, match="ExecuTorch cannot load .*afile") as e:  # was executorch's RuntimeError
        pte_method(tmp_path / "afile")
    assert "\n" not in str(e.value)


def test_cli_export_pte_and_bench_executorch(et, tmp_path, capsys):
    out = tmp_path / "m.pte"
    net = "ds_r1_k3_s1_c8"
    assert main(["export", net, "--resolution", "32", "--num-classes", "5", "--format", "pte", "--int8",
                 "--calib-samples", "8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "calibrating on random inputs" in text and "XNNPACK int8" in text
    assert "ops outside XNNPACK: none" in text and "top-1 agreement" in text
    assert "(no bias correction)" in text  # random calibration: nothing to correct on
    assert main(["export", net, "--resolution", "32", "--num-classes", "5", "--format", "pte", "--int8", "--data",
                 "photos", "--calib-samples", "8", "--out", str(tmp_path / "bc.pte")]) == 0
    assert "ExecuTorch int8 (bias-corrected)" in capsys.readouterr().out  # the default with --data
    assert main(["bench", net, "--resolution", "32", "--rounds", "2", "--batch", "2", "--backend", "executorch"]) == 0
    assert "batch 2, executorch, 1 thread(s)" in capsys.readouterr().out
    assert main(["export", net, "--format", "pte", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "should end in .pte" in capsys.readouterr().err
    # the threadpool: resized only while no loaded method is alive (one loaded before a resize crashes)
    assert set_pte_threads(1) == 1
    method = pte_method(out)
    with pytest.raises(ValueError, match="1 loaded method"):
        set_pte_threads(2)
    assert set_pte_threads(1) == 1  # the same size: nothing to do
    del method
    gc.collect()
    assert set_pte_threads(2) == 2
    assert pte_logits(pte_method(out), torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="invalid threads"):
        set_pte_threads(0)
    gc.collect()
    assert set_pte_threads(1) == 1
