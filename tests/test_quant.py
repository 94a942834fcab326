"""Quantization: fake quantizers (known answers, edge cases, STE/LSQ), insertion, PTQ/QAT, measured noise and
gains, the analytic model, ONNX Runtime int8, the CLI and the tour chapter."""

import json
import math

import pytest
import torch
from torch import nn

from mbconv.net import MBConvNet
from mbconv.quant import FakeQuantize, QuantSpec, quantize_tensor
from mbconv.quant.fake import calibrate_range, fake_quant
from mbconv.quant.insert import QuantConfig, float_mode, insert_quantizers, quantizers, remove_quantizers
from mbconv.quant.ptq import ptq
from mbconv.spec import NetSpec, parse_arch


def sqnr(x, y):
    return 10 * math.log10(float(x.pow(2).mean() / (x - y).pow(2).mean()))


def gaussian(n=2**16):
    """A smooth N(0, 1) sample: the inverse CDF at evenly spaced probabilities (no sampling noise)."""
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()


# -- known answers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 6, 8])
def test_noise_is_delta_squared_over_12_on_smooth_input(bits):
    x = torch.linspace(-1, 1, 200_001)
    y = quantize_tensor(x, QuantSpec(bits))
    delta = 1.0 / (2 ** (bits - 1) - 1)  # symmetric restricted grid on max|x| = 1
    assert float((x - y).pow(2).mean()) / (delta**2 / 12) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("bits,spec_kw,target", [
    (4, dict(symmetric=False, integer_zero_point=False), 19.38),  # Max's 16-level uniform quantizer
    (3, dict(symmetric=False, integer_zero_point=False), 14.27),
    (2, dict(symmetric=False, integer_zero_point=False), 9.25),
    (4, dict(symmetric=False), 19.26),  # integer zero point: zero on the grid, levels -8..7
    (4, dict(symmetric=True), 18.90),   # restricted signed grid -7..7
])
def test_mse_optimal_gaussian_sqnr(bits, spec_kw, target):
    x = gaussian()
    y = quantize_tensor(x, QuantSpec(bits, calib="mse", **spec_kw))
    assert sqnr(x, y) == pytest.approx(target, abs=0.05)


def test_mse_beats_minmax_and_percentile_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    s = {c: sqnr(x, quantize_tensor(x, QuantSpec(4, calib=c, percentile=99.9))) for c in ("minmax", "percentile",
                                                                                          "mse")}
    assert s["mse"] > s["percentile"] > s["minmax"] + 3


# -- quantizer properties ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [QuantSpec(3), QuantSpec(5, symmetric=False), QuantSpec(8, per_channel=True),
                                  QuantSpec(4, symmetric=False, per_channel=True, ch_axis=1)])
def test_outputs_on_the_grid_idempotent_and_in_range(spec):
    torch.manual_seed(1)
    x = torch.randn(6, 5, 7) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0])[None, :, None] + 0.3
    fq = FakeQuantize(spec)
    fq.calibrate_from(x)
    y = fq(x)
    axis = fq.axis
    s = fq.scale.detach()
    z = fq.zero_point
    if axis is not None:
        shape = [1] * 3
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    q = y / s + z
    assert torch.allclose(q, q.round(), atol=1e-3)
    qmin, qmax = fq.qmin_qmax
    assert q.min() >= qmin - 1e-3 and q.max() <= qmax + 1e-3 and qmax - qmin <= 2**spec.bits - 1
    assert torch.equal(fq(y), y)


def test_signedness_is_decided_by_the_data():
    pos = quantize_tensor(torch.rand(1000) * 6, QuantSpec(4))  # ReLU6-like: unsigned grid [0, 15]
    fq = FakeQuantize(QuantSpec(4))
    fq.calibrate_from(torch.rand(1000) * 6)
    assert not bool(fq.signed_flag) and fq.qmin_qmax == (0, 15) and pos.min() >= 0
    assert len(pos.unique()) == 16


def test_per_channel_ranges_follow_each_channel():
    w = torch.randn(4, 3, 3) * torch.tensor([1e-3, 1.0, 100.0, 0.0])[:, None, None]
    fq = FakeQuantize(QuantSpec(8, per_channel=True))
    fq.calibrate_from(w)
    y = fq(w)
    assert torch.isfinite(y).all() and torch.equal(y[3], torch.zeros_like(y[3]))  # all-zero channel stays 0
    for c in range(3):
        assert sqnr(w[c], y[c]) > 38  # every channel gets its own 8-bit range
    per_tensor = quantize_tensor(w, QuantSpec(8))
    assert torch.count_nonzero(per_tensor[0]) == 0  # one shared range wipes the small channel out


@pytest.mark.parametrize("x", [torch.zeros(20), torch.full((20,), 3.0), torch.full((20,), -1e-30),
                               torch.tensor([1e30, -3e38, 3e38, 0.0]), torch.tensor([1.0, float("inf"), -2.0])])
@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(2, symmetric=False), QuantSpec(4, calib="mse"),
                                  QuantSpec(8, calib="percentile"), QuantSpec(3, per_channel=True)])
def test_edge_cases_are_finite(x, spec):
    y = quantize_tensor(x, spec)
    assert torch.isfinite(y).all()
    if torch.isfinite(x).all() and x.abs().max() < 1e3:
        assert (y - x).abs().max() <= x.abs().max() + 1e-6


def test_invalid_specs_name_the_problem():
    for kw, word in [(dict(bits=1), "bits"), (dict(bits=8.0), "bits"), (dict(calib="kl"), "calib"),
                     (dict(percentile=20), "percentile"), (dict(fixed_range=(0.5, 1.0)), "fixed_range")]:
        with pytest.raises(ValueError, match=word):
            QuantSpec(**kw)
    with pytest.raises(ValueError, match="no data"):
        FakeQuantize(QuantSpec(8)).finalize()
    with pytest.raises(ValueError, match="not calibrated"):
        FakeQuantize(QuantSpec(8))(torch.ones(3))


def test_ste_gradient_is_one_inside_zero_when_clipped():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 2.0], requires_grad=True)
    y = fake_quant(x, torch.tensor(0.1), torch.tensor(0.0), -7, 7)  # range +-0.7
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_learns_the_step():
    x = gaussian(4096)
    fq = FakeQuantize(QuantSpec(3, learn=True, calib="minmax"))
    fq.calibrate_from(x)  # min/max start: far too coarse for 3 bits on a Gaussian
    opt = torch.optim.Adam(fq.parameters(), lr=0.01)
    fq.train()
    with torch.no_grad():
        before = float((fq(x) - x).pow(2).mean())
    for _ in range(80):
        loss = (fq(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float((fq(x) - x).pow(2).mean()) < 0.7 * before


def test_calibrate_range_minmax_and_percentile():
    x = torch.arange(1001, dtype=torch.float64)[None] - 500
    lo, hi = calibrate_range(x, QuantSpec(8, calib="minmax"), True)
    assert (float(lo), float(hi)) == (-500.0, 500.0)
    lo, hi = calibrate_range(x, QuantSpec(8, calib="percentile", percentile=90.0, symmetric=False), True)
    assert float(hi) == pytest.approx(400.0) and float(lo) == pytest.approx(-400.0)


# -- insertion -------------------------------------------------------------------------------------------------
def tiny_net(se_position="after_dw", dims=1, seed=0):
    spec = NetSpec(stages=parse_arch("ir_r1_k3_s1_e4_c16_se0.25;ir_r2_k5_s1_e4_c16_se0.25"), dims=dims, in_chans=2,
                   num_classes=5, stem_chs=16, stem_stride=1, head_chs=32, resolution=12, se_position=se_position)
    torch.manual_seed(seed)
    m = MBConvNet(spec)
    for mod in m.modules():  # trained-like BN statistics: re-estimate them on inputs
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.randn(64, 2, *([12] * dims)))
    return m.eval()


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    return tiny_net(), torch.randn(96, 2, 12)


def test_sites_names_kinds_and_placements(net_and_data):
    m, x = net_and_data
    q = ptq(m, QuantConfig(placement="runtime"), x)
    qs = quantizers(q)
    kinds = {v.kind for v in qs.values()}
    assert kinds == {"input", "weight", "act", "se_inner", "se", "add", "pool", "logits"}
    for s in ("input", "stem.conv:weight", "stages.0.0.depthwise:act", "stages.0.0.se:se", "stages.1.0:add",
              "stages.1.1.project.conv:weight", "classifier:logits", "classifier:linear_in"):
        assert s in qs, s
    assert qs["stages.1.0:add"].block == "stages.1.0" and qs["stem:act"].block == "stem"
    full = quantizers(ptq(m, QuantConfig(placement="full"), x))
    assert set(full) - set(qs) == {f"stages.{i}.se.gate:gate" for i in ("0.0", "1.0", "1.1")}
    assert all(v.kind == "weight" for v in quantizers(ptq(m, QuantConfig(placement="weights"), x)).values())
    # the module tree keeps its names: other tools still find expand/depthwise/se/gate/project
    assert isinstance(q.stages[0][0].se.gate, nn.Sigmoid) and q.stages[0][0].depthwise.conv.weight.shape[1] == 1


def test_float_mode_equals_the_folded_net_and_remove_restores(net_and_data):
    m, x = net_and_data
    q = ptq(m, QuantConfig(4, 4), x)
    with torch.no_grad():
        ref = m(x)
        with float_mode(q):
            torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-4)
        assert (q(x) - ref).abs().max() > 1e-3  # quantized really differs
        assert all(v.mode == "quant" for v in quantizers(q).values())
        remove_quantizers(q)
        assert not quantizers(q)
        torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="already has quantizers"):
        insert_quantizers(ptq(m, QuantConfig(), x), QuantConfig())


def test_mixed_precision_overrides(net_and_data):
    m, x = net_and_data
    cfg = QuantConfig(4, 4, first_last_bits=8, overrides={"*depthwise.conv:weight": 6, "stages.1.1:add": 0})
    qs = quantizers(ptq(m, cfg, x))
    bits = {s: v.spec.bits for s, v in qs.items()}
    assert bits["input"] == bits["stem.conv:weight"] == bits["classifier:weight"] == bits["classifier:logits"] == 8
    assert bits["stages.0.0.depthwise.conv:weight"] == 6 and bits["stages.1.0.expand.conv:weight"] == 4
    assert bits["stages.0.0.depthwise:act"] == 4 and "stages.1.1:add" not in qs
    for bad in (dict(placement="nowhere"), dict(wbits=1), dict(a_calib="kl"), dict(overrides={"x": 99})):
        with pytest.raises(ValueError):
            QuantConfig(**bad)


QUANT_BAD = [("wbits", 0), ("wbits", 33), ("abits", -1), ("wbits", 8.0), ("w_calib", "kl"), ("percentile", math.nan),
             ("percentile", 10.0), ("placement", None), ("overrides", None), ("w_per_channel", "no"),
             ("learn_step", 1), ("gate_fixed_range", "yes"), ("calib_max_samples", 10)]


@pytest.mark.parametrize("field, value", QUANT_BAD)
def test_quant_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError) as e:
        QuantConfig(**{field: value})
    msg = str(e.value)
    assert f"{field}={value!r}" in msg and "\n" not in msg


def test_quant_config_takes_numpy_bits(net_and_data):
    import numpy as np

    m, x = net_and_data
    cfg = QuantConfig(np.int64(6), np.int64(8), overrides={"stem.conv:weight": np.int64(4)})
    assert cfg.wbits == 6 and type(cfg.wbits) is int
    bits = {s: v.spec.bits for s, v in quantizers(ptq(m, cfg, x)).items()}
    assert bits["stem.conv:weight"] == 4 and bits["stages.0.0.expand.conv:weight"] == 6


def test_ptq_and_qat_refuse_bad_arguments(net_and_data):
    from mbconv.quant.qat import qat

    m, x = net_and_data
    for kw, words in ((dict(batch_size=0), "batch_size=0"), (dict(num_samples=0), "num_samples=0")):
        with pytest.raises(ValueError, match=words):
            ptq(m, QuantConfig(), x, **kw)
    with pytest.raises(ValueError, match="cfg must be a QuantConfig"):
        ptq(m, {"wbits": 8}, x)
    bad = x.clone()
    bad[3, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):  # would become every quantizer's range
        ptq(m, QuantConfig(), bad)
    with pytest.raises(ValueError, match=r"invalid kinds=\['wieght'\]"):
        quantizers(m, ["wieght"])
    q = ptq(m, QuantConfig(), x)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    for kw in (dict(lr=-1.0), dict(lr=math.nan), dict(batch_size=0), dict(weight_decay=-1.0),
               dict(label_smoothing=1.5), dict(max_steps=-1), dict(epochs=0)):
        (name, value), = kw.items()
        with pytest.raises(ValueError, match=f"{name} must be") as e:
            qat(q, ds, **kw)
        assert repr(value) in str(e.value)
    with pytest.raises(ValueError, match="fewer than batch_size=128"):  # was a ZeroDivisionError
        qat(q, ds, batch_size=128)


def test_more_bits_less_noise_and_per_channel_weights_matter(net_and_data):
    from mbconv.quant.noise import measure_sqnr

    m, x = net_and_data
    out = {b: measure_sqnr(ptq(m, QuantConfig(b, b), x), x)["output_db"] for b in (4, 6, 8)}
    assert out[8] > out[6] + 6 > out[4] + 12 and out[8] > 25
    # blow up one depthwise channel through its folded BN: per-tensor weight ranges lose the others
    m2 = tiny_net()
    with torch.no_grad():
        bn = m2.stages[1][0].depthwise.bn
        bn.weight[0] *= 300.0
        m2.stages[1][0].project.conv.weight[:, 0] /= 300.0
    w_only = dict(abits=None, wbits=6)
    pc = measure_sqnr(ptq(m2, QuantConfig(**w_only), x), x)["output_db"]
    pt = measure_sqnr(ptq(m2, QuantConfig(**w_only, w_per_channel=False), x), x)["output_db"]
    assert pc > pt + 10


def test_per_channel_activations_keep_pooled_sites_per_tensor_by_default(net_and_data):
    """Pooled sites (SE vectors, classifier input, logits) see one value per sample and channel: per-channel
    ranges there clip unseen inputs (docs/claims/f_quant_se_placement.md), so they stay per-tensor unless asked."""
    from mbconv.quant.insert import POOLED_KINDS

    m, x = net_and_data
    for kw, pooled in (({}, False), ({"a_per_channel_pooled": True}, True)):  # the default first
        q = ptq(m, QuantConfig(a_per_channel=True, **kw), x)
        qs = {k: fq for k, fq in quantizers(q).items() if fq.kind != "weight"}
        kinds = {fq.kind for fq in qs.values()}
        assert {"se_inner", "pool", "logits"} <= kinds and {"act", "se", "add"} <= kinds
        for fq in qs.values():
            per_channel = fq.kind not in POOLED_KINDS or pooled
            assert fq.spec.per_channel == per_channel and (fq.scale.numel() > 1) == per_channel, fq.site
    acts = [fq for fq in quantizers(ptq(m, QuantConfig(), x)).values() if fq.kind != "weight"]
    assert len(acts) > 5 and all(fq.scale.numel() == 1 for fq in acts)


# -- measured noise, gains, the analytic model ------------------------------------------------------------------
def test_measure_sqnr_local_accumulated_and_agreement(net_and_data):
    from mbconv.quant.noise import measure_sqnr

    m, x = net_and_data
    q = ptq(m, QuantConfig(6, 6), x)
    rep = measure_sqnr(q, x, num_samples=64)
    site = rep["sites"]["stages.0.0.expand.conv:weight"]
    w = q.stages[0][0].expand.conv.parametrizations["weight"].original.detach()
    fq = quantizers(q)["stages.0.0.expand.conv:weight"]
    assert site["local_db"] == pytest.approx(sqnr(w, fq(w)), abs=1e-3)
    s = rep["sites"]["input"]
    assert s["local_db"] == pytest.approx(s["accum_db"], abs=1e-6)  # nothing upstream of the input
    assert [b["block"] for b in rep["blocks"]] == ["stem", "stages.0.0", "stages.1.0", "stages.1.1", "head",
                                                   "classifier"]
    assert rep["blocks"][0]["sqnr_db"] > rep["blocks"][-2]["sqnr_db"]  # noise accumulates with depth
    assert rep["output_db"] == rep["blocks"][-1]["sqnr_db"] and 0.5 < rep["top1_agreement"] <= 1.0


def test_noise_gain_known_answers(net_and_data):
    from mbconv.quant.noise import noise_gains

    m, x = net_and_data
    q = ptq(m, QuantConfig(8, 8), x)
    g = noise_gains(q, x, num_samples=64, batch_size=64,
                    sites=["classifier:logits", "classifier:linear_in"])["gains"]
    assert g["classifier:logits"]["output"] == pytest.approx(1.0, rel=1e-6)  # identity after the logits
    w = q.classifier.parametrizations["weight"].original.detach()
    expect = float(w.pow(2).sum()) / w.shape[0]  # E||W z||^2 / E||z||^2 per element, z white
    assert g["classifier:linear_in"]["output"] == pytest.approx(expect, rel=0.25)


def test_predictions_track_measurement_at_8_bits(net_and_data):
    from mbconv.quant.noise_model import compare

    m, x = net_and_data
    q = ptq(m, QuantConfig(8, 8, placement="full"), x)
    r = compare(q, x, num_samples=96, gains=True, gain_samples=96)
    rows = {row["block"]: row for row in r["rows"]}
    for b in ("stem", "stages.0.0", "stages.1.0"):  # near where noise enters the white-noise model holds
        assert abs(rows[b]["model_err_db"]) < 1.5, rows[b]
    assert all(abs(row["gains_err_db"]) < 1.5 for row in r["rows"]), r["rows"]


def test_model_counts_only_taps_that_see_the_input():
    from mbconv.quant.noise_model import NoiseModel

    m = tiny_net(dims=2)
    x = torch.randn(8, 2, 2, 2)  # 2x2 maps: a 5x5 depthwise kernel reads 4 taps per output on average
    q = ptq(m, QuantConfig(8, 8), x)
    nm = NoiseModel(q).fit(x, num_samples=8)
    cov = nm._coverage("stages.1.0.depthwise.conv", q.stages[1][0].depthwise.conv)
    assert float(cov.sum()) == pytest.approx(4.0) and cov.numel() == 25
    assert nm.predict()["output_db"] > 0
    with pytest.raises(ValueError, match="no quantizers"):
        NoiseModel(tiny_net())


def test_se_placement_variants_quantize_and_predict():
    from mbconv.quant.noise_model import compare

    x = torch.randn(64, 2, 12)
    for pos in ("after_dw", "before_dw"):
        q = ptq(tiny_net(pos), QuantConfig(8, 6, placement="full"), x)
        rows = compare(q, x, num_samples=64)["rows"]
        assert all(math.isfinite(r["model_db"]) and math.isfinite(r["measured_db"]) for r in rows)


# -- QAT ------------------------------------------------------------------------------------------------------
def test_qat_lowers_the_loss_and_trains_lsq_steps():
    from mbconv.quant.qat import qat

    torch.manual_seed(0)
    m = tiny_net()
    x = torch.randn(128, 2, 12)
    y = (x[:, 0, :6].mean(1) > 0).long() + 2 * (x[:, 1, 6:].mean(1) > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    q = ptq(m, QuantConfig(4, 4, learn_step=True), x)
    steps_before = {s: v.scale.detach().clone() for s, v in quantizers(q).items() if v.kind != "gate"}
    crit = nn.CrossEntropyLoss()
    with torch.no_grad():
        before = float(crit(q(x), y))
    r = qat(q, ds, epochs=6, lr=3e-3, batch_size=32, label_smoothing=0.0)
    with torch.no_grad():
        after = float(crit(q(x), y))
    assert r["steps"] == 24 and after < before - 0.2
    changed = [s for s, v in quantizers(q).items() if s in steps_before and not torch.equal(v.scale, steps_before[s])]
    assert len(changed) > len(steps_before) // 2
    with pytest.raises(ValueError, match="calibrated"):
        qat(tiny_net(), ds)


# -- ONNX Runtime int8 -----------------------------------------------------------------------------------------
def test_onnx_export_rewrite_and_int8(tmp_path):
    import onnx

    from mbconv.export import export_onnx, ort_logits, ort_session, quantize_onnx, time_sessions

    m = tiny_net(dims=2)
    x = torch.randn(32, 2, 12, 12)
    fp = export_onnx(m, tmp_path / "m.onnx", example=x)["path"]
    ops = [n.op_type for n in onnx.load(str(fp)).graph.node]
    assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 4  # 3 SE squeezes + the final pool
    s32 = ort_session(fp)
    lf, _ = ort_logits(s32, x)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(lf), m(x), atol=1e-4, rtol=1e-4)
    i8 = quantize_onnx(fp, tmp_path / "m8.onnx", (x[i:i + 8].numpy() for i in range(0, 32, 8)))
    ops8 = {n.op_type for n in onnx.load(str(i8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops8
    li, _ = ort_logits(ort_session(i8), x)
    assert (li.argmax(1) == lf.argmax(1)).mean() >= 0.8
    assert 10 * math.log10((lf**2).mean() / ((li - lf) ** 2).mean()) > 15
    t = time_sessions({"a": s32, "b": ort_session(i8)}, x[:2].numpy(), repeats=2, warmup=1)
    assert set(t) == {"a", "b"} and t["a"]["median_ms"] > 0
    with pytest.raises(ValueError, match="calibration method"):
        quantize_onnx(fp, tmp_path / "x.onnx", [], method="kl")


# -- CLI and tour chapter --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from mbconv.checkpoint import save_checkpoint
    from mbconv.data import load_dataset
    from mbconv.workflow import build_for_data, data_meta

    ds = load_dataset("digits8", "train")
    torch.manual_seed(0)
    model = build_for_data("ir_r1_k3_s1_e4_c16_se0.25;ir_r1_k3_s2_e4_c24_se0.25", ds.info, 8, stem_chs=16,
                           head_chs=32, stem_stride=1)
    nn.init.normal_(model.classifier.weight, 0, 0.1)  # untrained, but not all-zero logits
    out = tmp_path_factory.mktemp("quant_cli") / "run"
    save_checkpoint(out / "best", model, extra={"epoch": 0, "step": 0},
                    spec={"net": model.spec.to_dict(), "data": data_meta(ds, "digits8", 8)})
    return out


def test_cli_quantize_noise_and_int8(small_run, tmp_path, capsys):
    from mbconv.cli import main

    assert main(["quantize", "--checkpoint", str(small_run), "--wbits", "4", "--abits", "8", "--first-last-bits",
                 "8", "--override", "*depthwise.conv:weight=8", "--out", str(tmp_path / "q"), "--qat-epochs", "1",
                 "--calib-samples", "64", "--sqnr-samples", "64", "--export", str(tmp_path / "e" / "m.onnx")]) == 0
    text = capsys.readouterr().out
    assert "accuracy fp32" in text and "stages.1.0" in text and "W4A8" in text and "QAT (1 ep)" in text
    assert "int8 ONNX" in text and (tmp_path / "e" / "m.onnx").exists()
    saved = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert saved["sqnr_sites"]["stages.0.0.depthwise.conv:weight"]["bits"] == 8
    assert (tmp_path / "q" / "fig_site_sqnr.png").stat().st_size > 1000
    assert main(["quant-noise", "--checkpoint", str(small_run), "--no-gains", "--abits", "6", "--json", "--out",
                 str(tmp_path / "n"), "--calib-samples", "64", "--sqnr-samples", "64"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["block"] == "stem" and rows[-1]["block"] == "classifier"
    assert main(["quant-noise", "--checkpoint", str(small_run), "--abits", "6", "--out", str(tmp_path / "n"),
                 "--calib-samples", "32", "--sqnr-samples", "32", "--gain-samples", "8"]) == 0
    assert "largest contributors" in capsys.readouterr().out
    saved = json.loads((tmp_path / "n" / "quant_noise.json").read_text())
    assert saved["noise_gain_to_output"]["classifier:logits"] == pytest.approx(1.0)
    assert main(["int8", "--checkpoint", str(small_run), "--out", str(tmp_path / "i" / "m.onnx"), "--batch-sizes",
                 "1", "--repeats", "2", "--calib-samples", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["accuracy"]["ort_fp32"] == pytest.approx(r["accuracy"]["torch_fp32"], abs=0.01)
    assert (tmp_path / "i" / "m.onnx").exists() and (tmp_path / "i" / "m.fp32.onnx").exists()


@pytest.mark.parametrize("argv,needle", [
    (["quantize", "--checkpoint", "/nonexistent/run"], "no such run"),
    (["quantize", "--checkpoint", "x", "--wbits", "1"], "bits"),
    (["quantize", "--checkpoint", "x", "--override", "nobits"], "PATTERN=BITS"),
    (["int8", "--batch-sizes", "0"], "must be >= 1"),
])
def test_cli_bad_input_is_one_line(argv, needle, capsys):
    from mbconv.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_tour_chapter_on_a_small_run(small_run, tmp_path):
    from mbconv.report import Report
    from mbconv.tour import CHAPTERS, TourContext

    ctx = TourContext(tmp_path, True, Report("t"), {"tour_run": str(small_run)})
    CHAPTERS["quant"](ctx)
    ch = ctx.report.chapters[-1]
    assert ch.title.startswith("Quantization") and len(ch.figures) == 3
    assert "skipped (no results folder given" in ctx.report.render()  # ctx.results is None
    res = json.loads((tmp_path / "quant_result.json").read_text())
    assert res["quick"] and len(res["ptq"]) == 2 and "1" in res["int8"]["latency"]
    assert all(f.stat().st_size > 1000 for _, f in ch.figures)


def test_quantizers_and_inputs_follow_the_model_device(net_and_data):
    """Calibration and QAT on a GPU need quantizer state and input batches on the model's device; the meta
    device stands in for CUDA here (the full CPU-vs-CUDA equivalence was checked on a GPU machine, see
    docs/claims/f_quant_se_placement.md)."""
    from mbconv.quant.ptq import iter_batches
    from mbconv.train import model_device

    m, x = net_and_data
    assert model_device(m).type == "cpu" and model_device(nn.ReLU()).type == "cpu"
    assert [b.device.type for b in iter_batches(x, 40, 16, device="meta")] == ["meta"] * 3
    ds = torch.utils.data.TensorDataset(x, torch.zeros(96, dtype=torch.long))
    assert {b.device.type for b in iter_batches(ds, 20, 8, device="meta")} == {"meta"}
    gate = FakeQuantize(QuantSpec(bits=8, symmetric=False, fixed_range=(0.0, 1.0))).to("meta")
    gate.finalize()  # the fixed range is made on the CPU; the qparams must still land beside the module
    assert gate.scale.device.type == "meta" and gate.zero_point.device.type == "meta"
