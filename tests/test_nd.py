"""1-D and 3-D families, data and capabilities on tiny shapes: zoo, exact cost, training, BN folding, windowing,
shuffled control, digit volumes, the CLI and the tour chapter."""

import importlib
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mbconv import zoo_nd
from mbconv.cost import compare_layer, module_cost, spec_cost
from mbconv.data import ArrayDataset, DatasetInfo
from mbconv.data_nd import (
    FixedPermutation,
    VolumeAugment,
    extrude_digits,
    load_eeg_electrodes,
    load_volumes,
    shuffle_positions,
    signal_sources,
    windowed_split,
)
from mbconv.layers import fuse_bn
from mbconv.net import MBConvNet
from mbconv.train import TrainConfig, Trainer
from mbconv.zoo import create_model, get_spec, list_models

SIZES = {1: (40,), 3: (12, 8, 10)}  # small, and non-cubic in 3-D (exercises per-axis ceil division)


def _measure(spec, size, meta=False):
    with torch.device("meta" if meta else "cpu"):
        model = MBConvNet(spec).eval()
        x = torch.randn(2, spec.in_chans, *size)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            out = model(x)
    return fc.get_total_flops() // 4, sum(p.numel() for p in model.parameters()), out.shape  # // 2 (MAC) // 2 (N)


# -- zoo -------------------------------------------------------------------------------------------------------
def test_registered_names_and_dims():
    names = set(list_models())
    for v in zoo_nd.B_VARIANTS:
        assert f"efficientnet1d_{v}" in names and f"efficientnet3d_{v}" in names
        assert get_spec(f"efficientnet1d_{v}").dims == 1 and get_spec(f"efficientnet3d_{v}").dims == 3
    for n in ("mbconv1d_se4", "cnn1d_plain", "mbconv3d_small", "cnn3d_plain"):
        assert n in names
    assert get_spec("efficientnet1d_b0") == zoo_nd.efficientnet1d_base_spec()
    # the MNIST-1D net is exactly the one of benchmarks/accuracy.py
    acc = importlib.import_module("benchmarks.accuracy")
    assert acc.mbconv1d_se4_spec is zoo_nd.mbconv1d_se4_spec
    assert get_spec("mbconv1d_se4") == zoo_nd.mbconv1d_se4_spec()


@pytest.mark.parametrize("prefix, dims", [("efficientnet1d", 1), ("efficientnet3d", 3)])
def test_b_series_grows_and_follows_official_ratios(prefix, dims):
    specs = [get_spec(f"{prefix}_{v}") for v in zoo_nd.B_VARIANTS]
    macs = [spec_cost(s).macs for s in specs]
    assert macs == sorted(macs) and macs[-1] > 10 * macs[0]
    assert [s.num_blocks for s in specs] == sorted(s.num_blocks for s in specs)
    base = zoo_nd.EFFICIENTNET1D_BASE_LENGTH if dims == 1 else zoo_nd.EFFICIENTNET3D_BASE_SIZE
    assert specs[0].resolution == base and specs[-1].resolution == round(base * 600 / 224)
    if dims == 3:  # the exact B0 table in 3-D: same blocks and channels as the 2-D B0
        assert get_spec("efficientnet3d_b0").stages == get_spec("efficientnet_b0").stages


def test_compound_family_is_a_cost_ladder():
    fam = zoo_nd.compound_family(zoo_nd.efficientnet1d_base_spec())
    macs = [spec_cost(s).macs for s in fam]
    assert macs == sorted(macs) and len(set(macs)) == 5
    assert [s.name for s in fam][2] == "efficientnet1d_b0_phi0"
    assert fam[0].num_blocks < fam[2].num_blocks < fam[4].num_blocks  # 'round' depth rounding shrinks and grows


@pytest.mark.parametrize("name", sorted(zoo_nd.ND_MODELS))
def test_cost_equals_flop_counter(name):
    """Analytic MACs and params equal FlopCounterMode and the module (1-D and 3-D, every registered model)."""
    spec = get_spec(name)
    size = SIZES[spec.dims]
    big = spec_cost(spec).params > 3_000_000
    macs, params, out_shape = _measure(spec, size, meta=big)
    c = spec_cost(spec, size)
    assert c.macs == macs and c.params == params
    assert tuple(out_shape) == (2, spec.num_classes)


@pytest.mark.parametrize("length", [40, 1000, 16384])
def test_1d_any_length_cost_and_forward(length):
    spec = get_spec("efficientnet1d_b0")
    macs, params, out_shape = _measure(spec, (length,), meta=length > 1000)
    assert spec_cost(spec, length).macs == macs and tuple(out_shape) == (2, 10)
    # linear in the length once the map is long enough (fully convolutional)
    assert spec_cost(spec, 16384).macs / spec_cost(spec, 8192).macs == pytest.approx(2, rel=0.01)


def test_module_cost_hooks_agree_in_3d():
    spec = get_spec("mbconv3d_small")
    m = MBConvNet(spec).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    assert module_cost(m, x).macs == spec_cost(spec, 8).macs


@pytest.mark.parametrize("c", [16, 64, 256])
def test_3d_separable_ratio_is_k3c_over_k3_plus_c(c):
    r = compare_layer(c, c, 3, dims=3, resolution=6)
    assert r["formula"]["ratio_std_sep"] == pytest.approx(27 * c / (27 + c))
    assert r["standard"]["macs"] / r["separable"]["macs"] == pytest.approx(27 * c / (27 + c))
    # and the same ratio measured by hooks on real Conv3d layers
    std = torch.nn.Conv3d(c, c, 3, padding=1, bias=False)
    sep = torch.nn.Sequential(torch.nn.Conv3d(c, c, 3, padding=1, groups=c, bias=False),
                              torch.nn.Conv3d(c, c, 1, bias=False))
    x = torch.randn(1, c, 6, 6, 6)
    assert module_cost(std, x).macs / module_cost(sep, x).macs == pytest.approx(27 * c / (27 + c))
    assert compare_layer(64, 64, 3, 3)["formula"]["ratio_std_sep"] == pytest.approx(1728 / 91)  # ~19x (science.md)


def test_plain_cnn_spec_errors_and_shape():
    with pytest.raises(ValueError, match="widths"):
        zoo_nd.plain_cnn_spec(1, [8, 16], [1])
    s = zoo_nd.cnn1d_plain_spec(0.5)
    assert s.name == "cnn1d_plain_w0.5" and all(b.block == "cn" for st in s.stages for b in st.blocks)
    with pytest.raises(ValueError, match="variant"):
        zoo_nd.efficientnet3d_spec("b9")


# -- training, BN folding ------------------------------------------------------------------------------------
def _tiny(dims, n=16, classes=3):
    g = torch.Generator().manual_seed(0)
    size = SIZES[dims] if dims == 1 else (8, 8, 8)
    x = torch.randn(n, 1, *size, generator=g)
    y = torch.arange(n) % classes
    info = DatasetInfo("tiny", classes, 1, dims, size, "random")
    return ArrayDataset(x, y, info)


@pytest.mark.parametrize("name, dims", [("mbconv1d_se4", 1), ("efficientnet1d_b0", 1), ("mbconv3d_small", 3)])
def test_train_steps_via_trainer(name, dims, tmp_path):
    ds = _tiny(dims)
    model = create_model(name, num_classes=3)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, optimizer="adamw", out_dir=str(tmp_path), progress="none")
    row = Trainer(model, ds, ds, cfg, spec={"net": model.spec.to_dict()}).fit()
    assert row["step"] == 2 and math.isfinite(row["train_loss"]) and row["test_acc"] is not None
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (tmp_path / "last" / "meta.json").exists()


@pytest.mark.parametrize("name, size", [("efficientnet1d_b2", (64,)), ("efficientnet3d_b0", (16, 16, 16)),
                                        ("mbconv3d_small", (8, 8, 8)), ("cnn3d_plain", (8, 8, 8))])
def test_fuse_bn_1d_3d(name, size):
    torch.manual_seed(0)
    m = create_model(name, num_classes=5).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.0)
    x = torch.randn(2, 1, *size)
    f = fuse_bn(m)
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in f.modules())
    torch.testing.assert_close(f(x), m(x), atol=1e-4, rtol=1e-4)


# -- optional capabilities (built by other engineers; tested here when their modules exist) -----------------------
def _opt(module: str, *names: str):
    mod = pytest.importorskip(module)
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        pytest.skip(f"{module} has no {missing}")
    return mod


def _net_and_batch(dims, classes=3):
    torch.manual_seed(0)
    m = create_model("mbconv1d_se4" if dims == 1 else "mbconv3d_small", num_classes=classes).eval()
    return m, _tiny(dims, n=8, classes=classes)


@pytest.mark.parametrize("dims", [1, 3])
def test_gates_and_pruning_1d_3d(dims):
    gates = _opt("mbconv.gates", "record_gates")
    prune = _opt("mbconv.prune", "prune")
    m, ds = _net_and_batch(dims)
    rec = gates.record_gates(m, ds, max_inputs=8)
    assert len(rec.gates) == sum(p.se_chs > 0 for p in m.plans) and rec.gates[0].shape[0] == 8
    assert all(bool(((g >= 0) & (g <= 1)).all()) for g in rec.gates)
    res = prune.prune(m, "gate", 0.25, recording=rec)
    assert res.params_after < res.params_before and res.macs_after < res.macs_before
    with torch.no_grad():
        assert res.model.eval()(ds.x[:2]).shape == (2, 3)


@pytest.mark.parametrize("dims", [1, 3])
def test_ptq_1d_3d(dims):
    ptq = _opt("mbconv.quant.ptq", "ptq")
    ins = _opt("mbconv.quant.insert", "QuantConfig")
    m, ds = _net_and_batch(dims)
    q = ptq.ptq(m, ins.QuantConfig(wbits=8, abits=8), ds.x, num_samples=8, batch_size=8)
    with torch.no_grad():
        ref, out = m(ds.x), q.eval()(ds.x)
    assert out.shape == ref.shape and not torch.equal(out, ref)  # quantised, so not bit-identical ...
    assert float((out - ref).norm() / ref.norm()) < 0.2  # ... but close at 8 bits


@pytest.mark.parametrize("dims", [1, 3])
def test_stability_gradient_profile_1d_3d(dims):
    st = _opt("mbconv.stability", "gradient_profile")
    m, ds = _net_and_batch(dims)
    rows = st.gradient_profile(m, ds.x, ds.y)
    assert len(rows) == len(m.blocks())
    assert all(math.isfinite(r["param_grad"]) and r["param_grad"] > 0 for r in rows)


@pytest.mark.parametrize("dims", [1, 3])
def test_onnx_export_1d_3d(dims, tmp_path):
    dep = _opt("mbconv.export", "export_onnx", "check_onnx")
    pytest.importorskip("onnxruntime")
    m, ds = _net_and_batch(dims)
    size = tuple(ds.x.shape[2:])
    dep.export_onnx(m, tmp_path / "m.onnx", resolution=size)
    assert dep.check_onnx(m, tmp_path / "m.onnx", ds.x[:2]) < 1e-4


# -- data ------------------------------------------------------------------------------------------------------
def test_windowed_split_is_time_disjoint_and_counts():
    t = np.arange(1000, dtype=np.float32)
    sigs = [(t + 10_000 * i, i) for i in range(3)]  # values encode (signal, time)
    tr, te = windowed_split(sigs, window=50, stride=10, test_fraction=0.3, normalize="none")
    assert len(tr) == 3 * ((700 - 50) // 10 + 1) and len(te) == 3 * ((300 - 50) // 10 + 1)
    assert tr.info.dims == 1 and tr.x.shape[1:] == (1, 50)
    for ds in (tr, te):  # each window is a contiguous slice of its own signal
        lab = (ds.x[:, 0, 0] // 10_000).long()
        assert torch.equal(lab, ds.y) and torch.all(torch.diff(ds.x[:, 0], dim=1) == 1)
    assert (tr.x[:, 0] % 10_000).max() < 700 <= (te.x[:, 0] % 10_000).min()  # disjoint time spans
    w, _ = windowed_split(sigs, 50, 10, 0.3, normalize="window")
    torch.testing.assert_close(w.x.mean(-1), torch.zeros(len(w), 1), atol=1e-4, rtol=0)
    n, _ = windowed_split(sigs, 50, 10, 0.3, normalize="train")
    assert n.mean is not None and abs(float(n.x.mean())) < 1e-3
    with pytest.raises(ValueError, match="too short"):
        windowed_split(sigs, 400, 10, 0.3)
    with pytest.raises(ValueError, match="test_fraction"):
        windowed_split(sigs, 50, 10, 1.5)
    with pytest.raises(ValueError, match="normalize"):
        windowed_split(sigs, 50, 10, 0.3, normalize="bad")


def test_long_signal_windows_16k():
    sig = np.sin(np.linspace(0, 400, 16384)).astype(np.float32)
    tr, te = windowed_split([(sig, 0), (-sig, 1)], window=4096, stride=2048, test_fraction=0.5)
    assert tr.x.shape == (2 * 3, 1, 4096) and te.x.shape == (2 * 3, 1, 4096)
    m = create_model("efficientnet1d_b0", num_classes=2).eval()
    with torch.no_grad():
        assert m(tr.x[:2]).shape == (2, 2)


def test_eeg_use_case_and_sources():
    src = signal_sources()
    assert not src["scipy.datasets.electrocardiogram"]["available"]  # would need a download
    if not src["matplotlib sample_data/eeg.dat"]["available"]:
        pytest.skip("matplotlib sample data not installed")
    tr, te = load_eeg_electrodes()
    assert (len(tr), len(te)) == (324, 164) and tr.info.num_classes == 4 and tr.x.shape[1:] == (1, 160)
    assert torch.equal(tr.y.bincount(), torch.full((4,), 81)) and torch.equal(te.y.bincount(), torch.full((4,), 41))


def test_shuffle_positions_control():
    x = torch.arange(2 * 1 * 10, dtype=torch.float32).reshape(2, 1, 10)
    info = DatasetInfo("s", 2, 1, 1, (10,), "t")

    def shift(v, g):  # a deterministic "augmentation" that depends on positions
        return torch.roll(v, 1, -1)

    ds = ArrayDataset(x, torch.tensor([0, 1]), info, transform=shift)
    sh = shuffle_positions(ds, seed=3)
    sh2 = shuffle_positions(ArrayDataset(x, torch.tensor([0, 1]), info), seed=3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sh2.x, x[..., perm]) and sh2.transform is None
    # the augmentation acts on the unshuffled signal: shuffled(aug(x)) == aug-then-permute
    assert torch.equal(sh[0][0], torch.roll(x[0], 1, -1)[..., perm])
    assert isinstance(sh.transform, FixedPermutation)
    with pytest.raises(ValueError, match="1-D"):
        shuffle_positions(_tiny(3))


def test_extrude_digits_geometry():
    img = np.zeros((1, 8, 8), np.float32)
    img[0, 2:6, 3] = 1.0
    v = extrude_digits(img, 8, seed=0, noise_std=0.0, max_tilt=0.0, max_shift=0.0)
    assert v.shape == (1, 1, 8, 8, 8)
    proj = v[0, 0].sum(0)
    np.testing.assert_allclose(proj / proj.max(), img[0], atol=1e-6)  # no tilt/shift: depth-sum = the digit
    prof = v[0, 0, :, 2, 3]
    assert prof.argmax() in range(2, 6) and prof.min() < prof.max()  # a slab, not a full-depth extrusion
    a = extrude_digits(img, 8, seed=1)
    assert np.array_equal(a, extrude_digits(img, 8, seed=1)) and not np.array_equal(a, extrude_digits(img, 8, 2))
    with pytest.raises(ValueError, match="images"):
        extrude_digits(img[0], 8, seed=0)


def test_load_volumes():
    tr, te = load_volumes("digits8")
    assert tr.x.shape == (1293, 1, 8, 8, 8) and te.x.shape == (359, 1, 8, 8, 8)
    assert tr.info.dims == 3 and "SYNTHETIC" in tr.info.description
    assert abs(float(tr.x.mean())) < 1e-3 and abs(float(tr.x.std()) - 1) < 1e-3
    tr.x.zero_()  # a returned dataset is a copy: the cache is unchanged
    assert float(load_volumes("digits8")[0].x.abs().sum()) > 0
    aug, te2 = load_volumes("digits8", augment=True)  # clean train volumes + fresh noise/shift per epoch
    assert torch.equal(te2.x, te.x) and aug.transform is not None
    a0 = aug[0][0]
    aug.set_epoch(1)
    assert not torch.equal(a0, aug[0][0]) and a0.shape == (1, 8, 8, 8)
    noise_only = VolumeAugment(0.5, max_fraction=0.0)
    x = torch.zeros(1, 8, 8, 8)
    assert abs(float(noise_only(x, torch.Generator().manual_seed(0)).std()) - 0.5) < 0.05
    with pytest.raises(ValueError, match="volume source"):
        load_volumes("cifar")


# -- CLI and tour chapter --------------------------------------------------------------------------------------
def test_cli_signals(tmp_path, capsys):
    from mbconv.cli import main

    assert main(["signals", "--task", "sources"]) == 0
    assert "eeg.dat" in capsys.readouterr().out
    assert main(["signals", "--task", "eeg", "--quick", "--out", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["signals", "--task", "volumes", "--model", "nope_net", "--quick", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_tour_chapter_signals_quick(tmp_path):
    from mbconv.tour import run_tour

    html = run_tour(tmp_path, quick=True, chapters="signals")
    text = html.read_text()
    assert "Beyond 2-D" in text and "k^3 C / (k^3 + C)" in text
    res = json.loads((tmp_path / "signals_result.json").read_text())
    assert res["quick"] and {"mnist1d", "volumes"} <= set(res)
    assert res["volumes"]["mbconv"]["macs"] < res["volumes"]["cnn"]["macs"]
