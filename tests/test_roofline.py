"""mbconv.roofline and `mbconv roofline` / `mbconv scale --latency-ms` (the CLI side; the search itself is
tested in test_latency_search.py): tiny shapes, one thread."""

import json

import pytest
from torch import nn

from mbconv.cli import main
from mbconv.cost import spec_cost
from mbconv.net import MBConvNet
from mbconv.roofline import inference_model, layer_table, measure_machine, profile_model
from mbconv.zoo import get_spec

# a fixed machine (GFLOP/s, GB/s) so predictions are hand-computable and tests need no timing
MACHINE = {"peak_gflops": 100.0, "bandwidth_gbs": 20.0, "ridge_macs_per_byte": 2.5}
TINY = "ds_r1_k3_s1_c8_se0.25;ir_r1_k3_s2_e4_c16_se0.25;ir_r2_k5_s1_e3_c16;er_r1_k3_s1_e2_c24;cn_r1_k3_s1_c24"


def tiny_spec(dims: int = 2):
    return get_spec(TINY, dims=dims, num_classes=5, in_chans=2, resolution={1: 64, 2: 16}[dims])


def test_hand_computed_conv_row():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    rows = layer_table(nn.Sequential(conv), (1, 4, 5, 5), MACHINE)
    assert len(rows) == 1
    r = rows[0]
    assert r.name == "0" and r.kind == "full conv"
    assert r.macs == 8 * 25 * 4 * 9  # output elements x Cin x k^2
    elems = 4 * 25 + 8 * 4 * 9 + 8 * 25  # input + weight + output
    assert r.elems == elems and r.weight_elems == 8 * 4 * 9
    assert r.bytes_fp32 == 4 * elems and r.bytes_int8 == elems
    assert r.intensity_fp32 == pytest.approx(7200 / (4 * elems))
    t_compute, t_memory = 2 * 7200 / 100e9, 4 * elems / 20e9
    assert r.predicted_ms == pytest.approx(1e3 * max(t_compute, t_memory))
    assert r.bound == ("compute" if t_compute > t_memory else "memory")


def test_pointwise_more_intense_than_depthwise_and_kinds():
    c = 32
    net = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                        nn.ReLU(), nn.BatchNorm2d(c))
    rows = {r.name: r for r in layer_table(net.eval(), (1, c, 14, 14), MACHINE)}
    pw, dw = rows["0"], rows["1"]
    assert pw.kind == "pointwise" and dw.kind == "depthwise"
    assert rows["2"].kind == "activation" and rows["3"].kind == "norm"
    assert pw.intensity_fp32 > 3 * dw.intensity_fp32
    assert pw.intensity_int8 == pytest.approx(4 * pw.intensity_fp32)
    assert dw.bound == "memory" and rows["2"].bound == "memory" and rows["2"].macs == 0


@pytest.mark.parametrize("dims", [1, 2])
def test_rows_cover_every_leaf_and_macs_sum_to_spec_cost(dims):
    spec = tiny_spec(dims)
    model = MBConvNet(spec).eval()
    for net in (model, inference_model(model, spec.resolution)):  # training module and inference path
        rows = layer_table(net, spec.resolution, MACHINE)
        names = {r.name for r in rows}
        leaves = {n for n, m in net.named_modules() if not list(m.children()) and not isinstance(
            m, (nn.Identity, nn.Dropout)) and "drop_path" not in n}
        assert leaves <= names, leaves - names
        assert sum(r.macs for r in rows) == spec_cost(spec).macs
        kinds = {r.kind for r in rows}
        assert {"pointwise", "depthwise", "full conv", "SE", "activation", "linear", "pool"} <= kinds
        if dims == 2:  # the SE's pool + gate multiply and the residual add are rows of their own
            assert any(r.kind == "SE" and "mul" in r.ops for r in rows)
            assert any(r.kind == "elementwise" and "add" in r.ops for r in rows)


def test_profile_model_measures_every_row():
    spec = tiny_spec(2)
    rf = profile_model(MBConvNet(spec), spec.resolution, machine=MACHINE, rounds=2, threads=1)
    assert rf.extra["inference_path"] and rf.latency_ms > 0
    assert all(r.measured_ms is not None and r.measured_ms >= 0 for r in rf.rows)
    assert sum(r.measured_ms > 0 for r in rf.rows) >= 0.9 * len(rf.rows)
    assert 0 < rf.share("memory") < 1
    d = json.loads(json.dumps(rf.to_dict()))
    assert d["macs"] == spec_cost(spec).macs and len(d["rows"]) == len(rf.rows)


def test_measure_machine_is_fast_and_sane():
    m = measure_machine(threads=1, seconds=0.2, n=256, copy_mib=16)
    assert m["peak_gflops"] > 0.1 and m["bandwidth_gbs"] > 0.1
    assert m["ridge_macs_per_byte"] == pytest.approx(m["peak_gflops"] / (2 * m["bandwidth_gbs"]))


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_bad_input(capsys):
    rc, _, err = run(capsys, "scale", "--base", "efficientnet_b0", "--latency-ms", "-5")
    assert rc == 2 and "invalid latency budget" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "scale", "--base", "no_such_net", "--latency-ms", "5")
    assert rc == 2 and "unknown model" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "scale", "--latency-ms", "5", "--phi", "1")
    assert rc == 2 and "--latency-ms chooses phi" in err
    rc, _, err = run(capsys, "roofline", "no_such_net")
    assert rc == 2 and "unknown model" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "roofline", "efficientnet_b0", "--batch", "0")
    assert rc == 2 and "--batch" in err


def test_cli_roofline_tiny(capsys, tmp_path):
    rc, out, err = run(capsys, "roofline", TINY, "--num-classes", "5", "--in-chans", "2", "--resolution", "16",
                       "--rounds", "2", "--top", "5", "--out", str(tmp_path))
    assert rc == 0, err
    assert "GFLOP/s" in out and "memory-bound layers" in out and "meas/pred" in out
    d = json.loads((tmp_path / "roofline.json").read_text())
    assert d["macs"] == spec_cost(get_spec(TINY, num_classes=5, in_chans=2), 16).macs
    assert (tmp_path / "fig_roofline.png").stat().st_size > 1000


def test_tour_chapter_hardware_quick(tmp_path):
    from mbconv.tour import run_tour

    html = run_tour(tmp_path, quick=True, chapters="hardware").read_text()
    assert "Design meets hardware" in html and "Memory-bound layers take" in html
    d = json.loads((tmp_path / "hardware" / "latency_search.json").read_text())
    assert d["best"]["latency_ms"] <= d["budget_ms"]
    assert (tmp_path / "hardware" / "fig_roofline_b0.png").exists()
