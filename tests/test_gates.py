"""SE gate recording (ours, from_timm-built and raw timm models), statistics, regulariser and the gates CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mbconv.gates import (
    GatePenalty,
    GateRecording,
    find_gates,
    gate_stats,
    histograms,
    record_gates,
    summarize,
)
from mbconv.net import MBConvNet
from mbconv.spec import NetSpec, parse_arch


def tiny(dims: int = 2, se_position: str = "after_dw") -> MBConvNet:
    spec = NetSpec(stages=parse_arch("ds_r1_k3_s1_c8_se0.25;ir_r2_k3_s2_e4_c12_se0.25;er_r1_k3_s1_e3_c12_se0.25;"
                                     "ir_r1_k3_s1_e3_c16"),
                   dims=dims, in_chans=1, num_classes=4, stem_chs=8, stem_stride=1, head_chs=16, resolution=8,
                   se_position=se_position)
    return MBConvNet(spec).eval()


@pytest.mark.parametrize("dims,se_position", [(1, "after_dw"), (2, "before_dw")])
def test_record_shapes_values_and_contribution(dims, se_position):
    torch.manual_seed(0)
    model = tiny(dims, se_position)
    sites = find_gates(model)
    assert [s.block for s in sites] == ["stages.0.0", "stages.1.0", "stages.1.1", "stages.2.0"]  # not the SE-free one
    x = torch.randn(10, 1, *([8] * dims))
    rec = record_gates(model, x, batch_size=4)  # batches of 4, 4, 2 are concatenated
    assert rec.num_inputs == 10 and rec.depth == [0.0, 1 / 3, 2 / 3, 1.0]
    for s, g, a in zip(sites, rec.gates, rec.act):
        assert g.shape == a.shape == (10, s.se.conv_expand.out_channels)
        assert ((g > 0) & (g < 1)).all()
    # act = RMS over positions of the gated output = g * RMS(x) of the SE input, checked by hand on one block
    se = sites[1].se
    seen = {}
    h = se.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    model(x)
    h.remove()
    xin = seen["x"]
    with torch.no_grad():
        g = se.gate(se.conv_expand(se.act(se.conv_reduce(xin.mean(dim=tuple(range(2, xin.ndim)), keepdim=True)))))
    g = g.flatten(1)
    torch.testing.assert_close(rec.gates[1], g)
    torch.testing.assert_close(rec.act[1], g * xin.pow(2).mean(dim=tuple(range(2, xin.ndim))).sqrt(), rtol=1e-5,
                               atol=1e-6)
    assert not model.training  # mode restored
    rec2 = record_gates(model, torch.utils.data.TensorDataset(x, torch.arange(10)), max_inputs=7)
    assert rec2.num_inputs == 7 and rec2.labels.tolist() == list(range(7))
    torch.testing.assert_close(rec2.gates[0], rec.gates[0][:7])


def test_stats_match_numpy():
    rng = np.random.default_rng(0)
    g = rng.uniform(0, 1, size=(200, 6)).astype(np.float32)
    g[:, 0] *= 0.01  # consistently suppressed: p99 < 0.05
    g[:, 1] = 0.97 + 0.02 * g[:, 1]  # saturated: p1 > 0.95
    g[:, 2] = np.where(np.arange(200) < 190, 0.01, 0.9)  # mostly suppressed, but p99 high: not "consistent"
    rec = GateRecording(["b0"], ["b0.se"], [torch.from_numpy(g)], [torch.from_numpy(g * 2)])
    (s,) = gate_stats(rec, low=0.05, high=0.95)
    np.testing.assert_allclose(s.mean.numpy(), g.mean(0), rtol=1e-5)
    for q, v in ((1, s.p1), (50, s.p50), (99, s.p99)):
        np.testing.assert_allclose(v.numpy(), np.percentile(g, q, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.std.numpy(), g.std(0, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(s.frac_below.numpy(), (g < 0.05).mean(0))
    np.testing.assert_allclose(s.act_mean.numpy(), 2 * g.mean(0), rtol=1e-5)
    assert s.suppressed.tolist() == [0] and s.saturated.tolist() == [1]
    assert s.frac_below[2] == pytest.approx(0.95)
    summ = summarize([s], rec)
    assert summ["suppressed"] == 1 and summ["saturated"] == 1 and summ["channels"] == 6
    h = histograms(rec, bins=20)
    assert h.shape == (1, 20) and float(h.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="low"):
        gate_stats(rec, low=1.5)


def test_timm_model_and_its_import_record_the_same_gates():
    """Hooks find timm's '*.se.gate' modules; the from_timm-built MBConvNet records identical gates."""
    timm = pytest.importorskip("timm")
    from mbconv.compat import from_timm

    torch.manual_seed(0)
    tm = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
    ours = from_timm(tm).eval()
    x = torch.randn(2, 3, 32, 32)
    rt, ro = record_gates(tm, x), record_gates(ours, x)
    assert len(rt.blocks) == len(ro.blocks) == 16
    assert rt.blocks[1] == "blocks.1.0" and ro.blocks[1] == "stages.1.0"
    for a, b in zip(rt.gates + rt.act, ro.gates + ro.act):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_errors_on_no_se_and_empty_data():
    spec = NetSpec(stages=parse_arch("ir_r1_k3_s1_e4_c8"), dims=1, in_chans=1, num_classes=3, stem_chs=8,
                   head_chs=16, resolution=8)
    with pytest.raises(ValueError, match="no squeeze-excite"):
        record_gates(MBConvNet(spec), torch.randn(2, 1, 8))
    with pytest.raises(ValueError, match="empty"):
        record_gates(tiny(1), torch.randn(0, 1, 8))
    with pytest.raises(ValueError, match="invalid data"):
        record_gates(tiny(1), 42)
    with pytest.raises(ValueError, match="lam"):
        GatePenalty(tiny(1), lam=-1)
    with pytest.raises(ValueError, match="reduction"):
        GatePenalty(tiny(1), reduction="max")


def test_gate_penalty_pushes_gates_down_in_the_trainer():
    from mbconv.train import TrainConfig, Trainer

    model = tiny(1)
    x = torch.randn(6, 1, 8)
    pen = GatePenalty(model, lam=0.5)
    seen = []
    hs = [s.gate.register_forward_hook(lambda m, i, o: seen.append(o.detach().flatten())) for s in find_gates(model)]
    model.train()
    model(x)  # an earlier forward: its gates are dropped by the next one
    seen.clear()
    out = model(x)
    for h in hs:
        h.remove()
    torch.testing.assert_close(pen.penalty(), 0.5 * torch.cat(seen).mean())
    pen.reduction = "sum"
    torch.testing.assert_close(pen.penalty(), 0.5 * torch.cat(seen).sum() / 6)
    pen.reduction = "mean"
    loss = pen.wrap(torch.nn.functional.cross_entropy)(out, torch.zeros(6, dtype=torch.long))
    loss.backward()
    assert model.stages[1][0].se.conv_expand.bias.grad.abs().sum() > 0
    with torch.no_grad():
        model.eval()
        model(x)
    assert float(pen.penalty()) == 0.0  # an eval forward records nothing

    def train(lam: float) -> float:
        torch.manual_seed(0)
        m = tiny(1)
        data = torch.utils.data.TensorDataset(torch.randn(128, 1, 8), torch.randint(0, 4, (128,)))
        tr = Trainer(m, data, None, TrainConfig(epochs=4, batch_size=32, lr=0.05, optimizer="adamw",
                                                progress="none"))
        if lam:
            GatePenalty(tr.model, lam).attach(tr)
        tr.fit()
        return float(torch.cat([g.flatten() for g in record_gates(m, data.tensors[0]).gates]).mean())

    assert train(2.0) < train(0.0) - 0.1  # measured: 0.30 vs 0.49


# -- CLI -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    from mbconv.checkpoint import save_checkpoint
    from mbconv.data import load_dataset
    from mbconv.workflow import build_for_data, data_meta

    ds = load_dataset("digits8", "train")
    torch.manual_seed(0)
    model = build_for_data("ir_r1_k3_s1_e4_c16_se0.25;ir_r1_k3_s2_e4_c24_se0.25", ds.info, 8,
                           stem_chs=16, head_chs=32, stem_stride=1)
    out = tmp_path_factory.mktemp("gates_cli") / "run"
    save_checkpoint(out / "best", model, extra={"epoch": 0, "step": 0},
                    spec={"net": model.spec.to_dict(), "data": data_meta(ds, "digits8", 8)})
    return out


def test_cli_gates_table_json_and_figures(untrained_run, tmp_path, capsys):
    from mbconv.cli import main

    out = tmp_path / "g"
    assert main(["gates", "--checkpoint", str(untrained_run), "--out", str(out), "--max-inputs", "100"]) == 0
    text = capsys.readouterr().out
    assert "stages.1.0" in text and "suppressed" in text and "saturated" in text
    assert (out / "fig_gate_hist_depth.png").stat().st_size > 1000 and (out / "fig_gate_channels.png").exists()
    saved = json.loads((out / "gates.json").read_text())
    assert saved["summary"]["inputs"] == 100 and len(saved["blocks"]) == 2
    assert main(["gates", "--checkpoint", str(untrained_run), "--json", "--no-figures", "--split", "train",
                 "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["channels"] == 64 + 64


@pytest.mark.parametrize("argv,needle", [
    (["--low", "2"], "thresholds"),
    (["--data", "mnist1d"], "dims"),
    (["--data", "nosuchdata"], "nosuchdata"),
    (["--max-inputs", "0"], "must be >= 1"),
    (["--split", "validation"], "invalid choice"),
])
def test_cli_gates_bad_input(untrained_run, tmp_path, capsys, argv, needle):
    from mbconv.cli import main

    rc = main(["gates", "--checkpoint", str(untrained_run), "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_gates_missing_checkpoint(tmp_path, capsys):
    from mbconv.cli import main

    assert main(["gates", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no such run" in capsys.readouterr().err


def test_tour_chapter_on_a_small_run(untrained_run, tmp_path):
    from mbconv.chapters.gates import chapter_gates
    from mbconv.report import Report
    from mbconv.tour import CHAPTERS, TourContext

    assert CHAPTERS["gates"] is chapter_gates
    ctx = TourContext(tmp_path, True, Report("t"), {"tour_run": str(untrained_run)})
    chapter_gates(ctx)
    html = ctx.report.render()
    assert "Verdict on claim (c)" in html and "Quick mode" in html and html.count("<img") == 3
    res = json.loads((tmp_path / "gates_result.json").read_text())
    assert {r["criterion"] for r in res["pruning"]} >= {"gate", "gate_act", "bn", "l1", "random"}
    assert all(0 < r["macs_removed"] < 1 for r in res["pruning"])
    empty = TourContext(tmp_path / "none", True, Report("t"), {})
    chapter_gates(empty)
    assert "skipped" in empty.report.chapters[0].paragraphs[0]
