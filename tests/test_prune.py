"""Pruning: exact surgery on every block type (1-D/2-D, both SE positions), spec/cost agreement, criteria,
plans, runs that load back, and the CLI's bad-input errors."""

from __future__ import annotations

import json

import pytest
import torch

from mbconv.cost import module_cost, spec_cost
from mbconv.net import MBConvNet
from mbconv.prune import (
    PrunePlan,
    apply_plan,
    channel_means,
    channel_scores,
    make_plan,
    min_keep_for,
    prunable_blocks,
    prune,
    pruned_spec,
    ratio_for_macs,
    save_pruned,
)
from mbconv.spec import NetSpec, parse_arch

# every block type: ds (no expansion, SE), MBConv t>1 with SE (repeated, strided), Fused-MBConv with SE,
# MBConv without SE, Fused-MBConv without SE
ARCH = ("ds_r1_k3_s1_c8_se0.25;ir_r2_k3_s2_e4_c12_se0.25;er_r1_k3_s1_e3_c12_se0.25;"
        "ir_r1_k3_s1_e3_c16;er_r1_k3_s2_e2_c16")


def tiny_spec(dims: int = 2, se_position: str = "after_dw", **kw) -> NetSpec:
    return NetSpec(stages=parse_arch(ARCH), name="tiny", dims=dims, in_chans=1, num_classes=5, stem_chs=8,
                   stem_stride=1, head_chs=24, resolution=12, se_position=se_position, drop_rate=0.0, **kw)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics/affines so that slicing mistakes show up in outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g, dtype=m.weight.dtype) + 0.5
            m.bias.data = torch.randn(n, generator=g, dtype=m.bias.dtype) * 0.1
            m.running_mean.data = torch.randn(n, generator=g, dtype=m.running_mean.dtype) * 0.1
            m.running_var.data = torch.rand(n, generator=g, dtype=m.running_var.dtype) + 0.5


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("se_position", ["after_dw", "before_dw"])
def test_pruning_dead_channels_is_exact(dims, se_position):
    """Channels whose contribution is exactly zero (project column and SE-reduce column zero) are removed
    without changing the output; the pruned spec rebuilds the same module and costs what the module costs."""
    torch.manual_seed(0)
    spec = tiny_spec(dims, se_position)
    model = MBConvNet(spec).double().eval()
    randomize_bn(model)
    blocks = prunable_blocks(model)
    kinds = {(b.kind, b.se_on_mid) for b in blocks}
    # MBConv with/without SE, fused with/without SE on mid (before_dw fused SE gates the input)
    assert ("mbconv", True) in kinds and ("mbconv", False) in kinds and ("fused", False) in kinds
    assert ("fused", True) in kinds or se_position == "before_dw"
    assert "stages.0.0" not in {b.name for b in blocks}  # ds block: no expansion, not prunable
    keep = {}
    for b in blocks:
        dead = torch.arange(0, b.mid, 3)  # every third channel
        with torch.no_grad():
            b.module.project.conv.weight[:, dead] = 0
            if b.se_on_mid:
                b.module.se.conv_reduce.weight[:, dead] = 0
        keep[b.name] = torch.tensor([c for c in range(b.mid) if c % 3])
    plan = PrunePlan(keep, {b.name: b.mid for b in blocks})
    x = torch.randn(3, 1, *([12] * dims), dtype=torch.float64)
    pruned = apply_plan(model, plan).double().eval()
    torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-12)
    # the pruned module is an MBConvNet of the pruned spec, smaller by exactly the removed channels
    assert isinstance(pruned, MBConvNet)
    for b, pb in zip(blocks, prunable_blocks(pruned)):
        assert pb.mid == len(keep[b.name]) < b.mid
    new = pruned.spec
    assert NetSpec.from_dict(json.loads(json.dumps(new.to_dict()))) == new  # JSON round trip
    rebuilt = MBConvNet(new).double().eval()
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=1e-12)
    c, mc = spec_cost(new), module_cost(pruned, x)
    assert c.macs == mc.macs < spec_cost(spec).macs
    assert c.params == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("dims,se_position", [(1, "after_dw"), (2, "before_dw")])
def test_mean_compensation_is_exact_for_constant_channels(dims, se_position):
    """A channel that is constant over inputs and positions (BN gamma 0, constant gate) still feeds the project
    conv and the SE squeeze; pruning it with mean compensation folds that constant in exactly."""
    torch.manual_seed(0)
    model = MBConvNet(tiny_spec(dims, se_position)).double().eval()
    randomize_bn(model)
    keep = {}
    for b in prunable_blocks(model):
        dead = torch.arange(1, b.mid, 4)
        with torch.no_grad():
            b.module.expand.bn.weight[dead] = 0
            if b.kind == "mbconv":
                b.module.depthwise.bn.weight[dead] = 0
            if b.se_on_mid:
                b.module.se.conv_expand.weight[dead] = 0
        keep[b.name] = torch.tensor([c for c in range(b.mid) if c % 4 != 1])
    plan = PrunePlan(keep, {b.name: b.mid for b in prunable_blocks(model)})
    x = torch.randn(4, 1, *([12] * dims), dtype=torch.float64)
    means = channel_means(model, x)
    for b in prunable_blocks(model):
        assert means[b.name]["project"].shape == (b.mid,) and ("se" in means[b.name]) == b.se_on_mid
    exact = apply_plan(model, plan, means=means)
    torch.testing.assert_close(exact(x), model(x), rtol=0, atol=1e-10)
    assert (apply_plan(model, plan)(x) - model(x)).abs().max() > 1e-3  # without compensation it is not exact
    with pytest.raises(ValueError, match="no entry"):
        apply_plan(model, plan, means={})


def test_non_mbconvnet_module_is_pruned_in_place():
    """A module that is not an MBConvNet but has MBConv-named blocks is pruned by names (no spec)."""
    torch.manual_seed(1)
    inner = MBConvNet(tiny_spec()).eval()
    wrapper = torch.nn.Sequential(inner.stem, inner.stages)
    blocks = prunable_blocks(wrapper)
    plan = make_plan(channel_scores(wrapper, "l1"), 0.5)
    out = apply_plan(wrapper, plan)
    assert isinstance(out, torch.nn.Sequential)
    assert [b.mid for b in prunable_blocks(out)] == [len(plan.keep[b.name]) for b in blocks]
    out(torch.randn(2, 1, 12, 12))


def test_criteria_rank_the_right_channels():
    torch.manual_seed(0)
    model = MBConvNet(tiny_spec()).eval()
    b = prunable_blocks(model)[0]
    with torch.no_grad():
        b.module.depthwise.bn.weight.copy_(torch.linspace(1, 0.1, b.mid))  # last channels have small gamma
        b.module.project.conv.weight[:, : b.mid // 4] = 0  # the first quarter has zero L1
    plan = make_plan(channel_scores(model, "bn"), 0.25)
    assert plan.keep[b.name].tolist() == list(range(b.mid - b.mid // 4))
    plan = make_plan(channel_scores(model, "l1"), 0.25)
    assert plan.keep[b.name].tolist() == list(range(b.mid // 4, b.mid))
    r1, r2, r3 = (channel_scores(model, "random", seed=s)[b.name] for s in (0, 0, 1))
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    x = torch.randn(16, 1, 12, 12)
    g = channel_scores(model, "gate", data=x)
    ga = channel_scores(model, "gate_act", data=x)
    on = {p.name for p in prunable_blocks(model) if p.se_on_mid}
    assert set(g) == set(ga) == on  # blocks without an SE on the mid channels are skipped
    assert all(((v > 0) & (v < 1)).all() for v in g.values())


def test_gate_criterion_without_se_is_a_clear_error():
    spec = NetSpec(stages=parse_arch("ir_r1_k3_s1_e4_c8;ir_r1_k3_s1_e4_c8"), dims=1, in_chans=1, num_classes=3,
                   stem_chs=8, head_chs=16, resolution=16)
    model = MBConvNet(spec).eval()
    with pytest.raises(ValueError, match="no prunable block has a squeeze-excite"):
        channel_scores(model, "gate", data=torch.randn(2, 1, 16))
    with pytest.raises(ValueError, match="needs gate values"):
        channel_scores(MBConvNet(tiny_spec()), "gate")
    with pytest.raises(ValueError, match="criterion"):
        channel_scores(model, "taylor")
    r = prune(model, "bn", 0.5)  # non-gate criteria work on SE-free nets
    assert r.macs_after < r.macs_before


def test_plans_per_block_global_rounding():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(32, generator=g), "b": torch.rand(48, generator=g) + 1, "c": torch.rand(12, generator=g)}
    p = make_plan(scores, 0.5, round_to=8)
    assert {n: len(k) for n, k in p.keep.items()} == {"a": 16, "b": 24, "c": 8}
    for n, k in p.keep.items():  # the kept channels are the top scores, sorted
        assert k.tolist() == sorted(k.tolist())
        assert scores[n][k].min() >= scores[n][[i for i in range(len(scores[n])) if i not in k.tolist()]].max()
    p = make_plan(scores, 0.4, scope="global", normalize="none")
    assert p.removed == 37 and len(p.keep["b"]) == 48  # raw scores: all of 'b' rank above 'a' and 'c'
    p = make_plan(scores, 0.4, scope="global")  # divided by the block mean: 'b' loses channels too
    assert p.removed == 37 and len(p.keep["b"]) < 48
    p = make_plan(scores, 0.9, scope="global", round_to=8)
    assert all(len(k) >= 8 for k in p.keep.values()) and all(len(k) % 8 == 0 for k in p.keep.values())
    assert make_plan(scores, 0.0).removed == 0
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(ValueError, match="ratio"):
            make_plan(scores, bad)
    with pytest.raises(ValueError, match="scope"):
        make_plan(scores, 0.5, scope="layer")
    with pytest.raises(ValueError, match="round_to"):
        make_plan(scores, 0.5, round_to=0)


def test_se_base_mid_keeps_squeeze_width_and_ratio_for_macs():
    """MobileNetV3-style SE (squeeze width from the expanded width, rounded to 8) keeps its width."""
    spec = NetSpec(stages=parse_arch("ir_r2_k3_s2_e6_c16_se0.25;ir_r1_k5_s1_e4_c24_se0.25"), dims=2, in_chans=1,
                   num_classes=4, stem_chs=16, head_chs=32, resolution=16, se_base="mid", se_divisor=8,
                   se_gate="hard_sigmoid", head_type="pool_conv")
    model = MBConvNet(spec).eval()
    se_before = [m.se.conv_reduce.out_channels for m in model.blocks()]
    r = prune(model, "l1", 0.7, round_to=8)
    assert [m.se.conv_reduce.out_channels for m in r.model.blocks()] == se_before
    assert all(b.mid >= se for b, se in zip(prunable_blocks(r.model), se_before))
    assert min_keep_for(model) == dict(zip([b.name for b in prunable_blocks(model)], se_before))
    assert spec_cost(r.model.spec).params == sum(p.numel() for p in r.model.parameters())
    scores = channel_scores(model, "l1")
    ratio = ratio_for_macs(model, scores, 0.3)
    assert prune(model, "l1", ratio).macs_removed >= 0.3 > prune(model, "l1", ratio - 0.02).macs_removed
    with pytest.raises(ValueError, match="cannot remove"):
        ratio_for_macs(model, scores, 0.99)
    with pytest.raises(ValueError, match="no expansion conv"):
        pruned_spec(tiny_spec(), {0: 4})


def test_saved_pruned_run_loads_and_evaluates(tmp_path):
    from mbconv.workflow import load_run

    torch.manual_seed(0)
    model = MBConvNet(tiny_spec(1)).eval()
    r = prune(model, "random", 0.5, round_to=4)
    meta = {"net": r.model.spec.to_dict(), "data": {"name": "mnist1d", "resolution": 12}}
    save_pruned(tmp_path / "run", r.model, meta)
    loaded, run, ck = load_run(tmp_path / "run")
    x = torch.randn(2, 1, 12)
    torch.testing.assert_close(loaded(x), r.model.eval()(x))
    assert ck.name == "last" and run["net"] == meta["net"] and loaded.spec.name == "tiny_pruned"
    from mbconv.layers import fuse_bn  # deployment sees an ordinary (smaller) MBConvNet

    torch.testing.assert_close(fuse_bn(loaded)(x), loaded(x), rtol=1e-4, atol=1e-5)


# -- CLI -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mbconv.workflow import RunConfig, train_run

    out = tmp_path_factory.mktemp("prune_cli") / "run"
    arch = "ir_r1_k3_s1_e4_c16_se0.25;ir_r1_k3_s2_e4_c24_se0.25"
    train_run(RunConfig(model=arch, data="digits8", out=str(out), epochs=1, batch_size=64, progress="none",
                        overrides={"stem_chs": 16, "head_chs": 32, "stem_stride": 1}))
    return out


def test_cli_prune_writes_a_smaller_run(tiny_run, tmp_path, capsys):
    from mbconv.cli import main
    from mbconv.workflow import evaluate_run, load_run

    out = tmp_path / "pruned"
    assert main(["prune", "--checkpoint", str(tiny_run), "--criterion", "gate", "--ratio", "0.5", "--round", "8",
                 "--finetune-epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fewer" in text and "fine-tuned" in text
    summary = json.loads((out / "prune.json").read_text())
    assert summary["macs_after"] < summary["macs_before"] and summary["scope"] == "per_block"  # the default
    model, run, _ = load_run(out)
    assert spec_cost(model.spec).macs == summary["macs_after"]
    assert [b.mid for b in prunable_blocks(model)] == [32, 32]  # 64 -> 32 in both blocks
    assert 0 <= evaluate_run(out)["acc"] <= 1
    assert main(["eval", "--checkpoint", str(out)]) == 0
    assert main(["prune", "--checkpoint", str(tiny_run), "--criterion", "bn", "--ratio", "0.3", "--global",
                 "--compensate", "--calib-inputs", "200", "--out", str(tmp_path / "p2")]) == 0
    p2 = json.loads((tmp_path / "p2" / "prune.json").read_text())
    assert p2["compensated"] is True and p2["scope"] == "global"
    load_run(tmp_path / "p2")


@pytest.mark.parametrize("argv,needle", [
    (["--criterion", "bn", "--ratio", "1.5"], "ratio"),
    (["--criterion", "taylor", "--ratio", "0.5"], "invalid choice"),
    (["--criterion", "bn", "--ratio", "abc"], "not a number"),
    (["--criterion", "bn", "--ratio", "0.5", "--round", "0"], "must be >= 1"),
    (["--criterion", "bn", "--ratio", "0.5", "--per-block", "--global"], "not allowed"),
    (["--criterion", "bn", "--ratio", "0.5", "--finetune-epochs", "-1"], "finetune-epochs"),
])
def test_cli_prune_bad_input(tiny_run, tmp_path, capsys, argv, needle):
    from mbconv.cli import main

    rc = main(["prune", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_prune_bad_paths(tiny_run, tmp_path, capsys):
    from mbconv.cli import main

    rc = main(["prune", "--checkpoint", str(tmp_path / "nope"), "--criterion", "bn", "--ratio", "0.5",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "no such run" in capsys.readouterr().err
    rc = main(["prune", "--checkpoint", str(tiny_run), "--criterion", "bn", "--ratio", "0.5", "--out", str(tiny_run)])
    assert rc == 2 and "source run" in capsys.readouterr().err


def test_prune_api_refuses_bad_values_in_one_line(tmp_path):
    import numpy as np

    model = MBConvNet(tiny_spec())
    scores = channel_scores(model, "l1")
    assert make_plan(scores, np.float32(0.5)).ratio == 0.5  # numpy numbers are numbers (were refused)
    cases = [(lambda: make_plan(scores, float("nan")), "ratio"), (lambda: make_plan(scores, 0.5, min_keep=-1),
                                                                   "min_keep"),
             (lambda: make_plan(scores, 0.5, min_keep={"stages.1.0": 0}), "min_keep['stages.1.0']"),
             (lambda: prune(model, "l1", 0.5, max_inputs=0), "max_inputs"),  # was accepted
             (lambda: prune(model, "random", 0.5, seed=1.5), "seed"),  # was truncated to 1
             (lambda: save_pruned(tmp_path / "f" / "run", model, {}), "cannot create the folder")]
    (tmp_path / "f").write_text("a file where the run's folder would go")
    for call, field in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert field in str(e.value) and "\n" not in str(e.value), str(e.value)
