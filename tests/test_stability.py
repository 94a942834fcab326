"""Stability tools: known-answer tests for the Jacobian estimators, hooks on blocks, and experiment surgery."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mbconv import stability as S
from mbconv.zoo import create_model

ARCH = "ir_r2_k3_s1_e4_c8_se0.25;ir_r2_k3_s2_e4_c16_se0.25"


def tiny_net(dims: int = 2, double: bool = True) -> nn.Module:
    torch.manual_seed(0)
    m = create_model(ARCH, num_classes=10, in_chans=1, stem_chs=8, stem_stride=1, head_chs=32, dims=dims).eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding and eval mode matter
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m.double() if double else m


def inputs(n: int = 4, size: int = 8, dims: int = 2) -> torch.Tensor:
    return torch.randn(n, 1, *([size] * dims), generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# -- known answers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims,cin,cout,groups,k,n", [(2, 3, 4, 1, 3, 6), (2, 4, 4, 4, 3, 6), (1, 2, 3, 1, 5, 9),
                                                      (2, 6, 6, 2, 3, 5)])
def test_circular_conv_singular_values_match_exact_svd(dims, cin, cout, groups, k, n):
    torch.manual_seed(dims * 10 + groups)
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(cin, cout, k, padding=k // 2, padding_mode="circular",
                                                    groups=groups, bias=False).double()
    x = torch.randn(1, cin, *([n] * dims), dtype=torch.float64)
    exact = torch.linalg.svdvals(S.jacobian(conv, x))
    fft = S.circular_conv_singular_values(conv.weight, n, groups)
    assert len(fft) == len(exact) == min(cin, cout) * n**dims
    torch.testing.assert_close(fft, exact, atol=1e-10, rtol=1e-10)


def test_circular_conv_rejects_kernel_larger_than_grid():
    with pytest.raises(ValueError, match="size"):
        S.circular_conv_singular_values(torch.randn(2, 2, 5, 5), 3)


@pytest.fixture(scope="module")
def stage_op():
    m = tiny_net()
    recs, _ = S.record_blocks(m, inputs(size=4))  # the first run maps 8 x 4 x 4 = 128 dims to itself
    run = S.square_runs(recs)[0]
    op = S.JacobianOperator(S.chain([r.module for r in run]), run[0].input[:1])
    return op, torch.linalg.svdvals(S.jacobian(op))


def test_jacobian_matches_autograd_both_directions():
    torch.manual_seed(0)
    a = torch.randn(5, 7, dtype=torch.float64)

    def f(z):
        return torch.tanh(a @ z.flatten())

    x = torch.randn(7, dtype=torch.float64)
    ref = torch.autograd.functional.jacobian(f, x)
    torch.testing.assert_close(S.jacobian(f, x), ref)  # rows by VJP (5 <= 7)

    def g(z):
        return torch.tanh(a.T @ z)

    y = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(S.jacobian(g, y), torch.autograd.functional.jacobian(g, y))  # columns by JVP
    with pytest.raises(ValueError, match="max_elems"):
        S.jacobian(f, x, max_elems=10)


def test_power_iteration_and_lanczos_match_exact_svd(stage_op):
    op, s = stage_op
    assert S.power_iteration(op, iters=3)["sigma_max"] <= float(s[0]) * (1 + 1e-12)  # a Rayleigh lower bound
    lz = S.lanczos_svals(op, k=40)
    assert float(lz["svals"][0]) == pytest.approx(float(s[0]), rel=1e-9)
    assert not lz["exact"]
    assert float(lz["svals"][-1]) >= float(s[-1]) * (1 - 1e-9)  # Ritz sigma_min bounds sigma_min from above
    full = S.lanczos_svals(op, k=10**6)
    assert full["exact"] and full["steps"] == len(s)
    torch.testing.assert_close(full["svals"], s, atol=1e-9, rtol=1e-7)


def test_power_iteration_matches_exact_svd_of_a_nonlinear_map():
    gen = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64, generator=gen))
    a = u[:, :20] @ torch.diag(torch.linspace(3.0, 0.1, 20, dtype=torch.float64)) @ v.T
    x = 0.3 * torch.randn(20, dtype=torch.float64, generator=gen)

    def f(z):
        return torch.tanh(a @ z)

    s = torch.linalg.svdvals(torch.autograd.functional.jacobian(f, x))
    pi = S.power_iteration(f, x, iters=500, tol=1e-12, restarts=2)
    assert pi["converged"] and pi["sigma_max"] == pytest.approx(float(s[0]), rel=1e-8)


def test_hutchinson_and_condition_number(stage_op):
    op, s = stage_op
    h = S.hutchinson_mean_sq(op, probes=256)
    true = float((s**2).mean())
    assert abs(h["mean_sq"] - true) < 5 * h["stderr"] + 1e-12
    cn = S.condition_number(op)
    assert cn["method"] == "exact" and cn["kappa"] == pytest.approx(float(s[0] / s[-1]))
    lz = S.condition_number(op, exact_limit=10, k=20)
    assert lz["method"] == "lanczos" and lz["kappa"] <= cn["kappa"] * (1 + 1e-9)


def test_log_norm_stats_of_scaled_orthogonal_map():
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))

    def f(z):
        return 2.0 * (q @ z.flatten())

    r = S.log_norm_stats(f, torch.randn(3, 12, dtype=torch.float64), probes=5)
    assert r["n"] == 15
    assert r["mean"] == pytest.approx(math.log(4.0))
    assert r["var"] == pytest.approx(0.0, abs=1e-20)


def test_spectrum_stats_known_values():
    st = S.spectrum_stats(torch.tensor([4.0, 1.0]))
    assert st["kappa"] == 4.0 and st["mean_sq"] == 8.5
    assert st["spread"] == pytest.approx(128.5 / 8.5**2 - 1)
    assert st["std_log_sigma"] == pytest.approx(math.log(4) / math.sqrt(2))
    z = S.spectrum_stats(torch.tensor([1.0, 0.0]))
    assert z["kappa"] == math.inf and z["zeros"] == 1
    with pytest.raises(ValueError):
        S.spectrum_stats(torch.tensor([]))


# -- blocks and hooks ---------------------------------------------------------------------------------------
def test_find_blocks_records_and_square_runs():
    m = tiny_net()
    names = [n for n, _ in S.find_blocks(m)]
    assert names == ["stages.0.0", "stages.0.1", "stages.1.0", "stages.1.1"]
    recs, y = S.record_blocks(m, inputs())
    assert y.shape == (4, 10)
    assert [r.square for r in recs] == [True, True, False, True]
    assert [[r.name for r in run] for run in S.square_runs(recs)] == [["stages.0.0", "stages.0.1"],
                                                                      ["stages.1.1"]]
    with pytest.raises(ValueError, match="no MBConv-family blocks"):
        S.record_blocks(nn.Sequential(nn.Linear(3, 3)), torch.randn(1, 3))


def test_gradient_profile_matches_autograd_and_leaves_model_untouched():
    m = tiny_net()
    m.train()
    x, y = inputs(), torch.arange(4) % 10
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rows = S.gradient_profile(m, x, y, mode="batchnorm")
    assert m.training and all(p.grad is None for p in m.parameters())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics restored
    # reference: the same loss with BN in batch-statistics mode, no dropout
    ref = tiny_net()
    ref.eval()
    for mod in ref.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.train()
    loss = nn.functional.cross_entropy(ref(x), y)
    params = list(ref.stages[0][1].parameters())
    g = torch.autograd.grad(loss, params)
    assert rows[1]["param_grad"] == pytest.approx(math.sqrt(sum(float(t.pow(2).sum()) for t in g)))
    assert rows[1]["loss"] == pytest.approx(float(loss.detach()))
    assert all(r["act_grad"] > 0 for r in rows)
    free = S.gradient_profile(m, x)  # label-free probe
    assert len(free) == 4 and all(r["param_grad"] > 0 for r in free)


def test_signal_propagation_branch_variance():
    m = tiny_net()
    rows = S.signal_propagation(m, inputs(), mode="eval")
    assert [r["has_skip"] for r in rows] == [True, True, False, True]
    assert math.isnan(rows[2]["branch_var"]) and rows[0]["branch_var"] > 0
    recs, _ = S.record_blocks(m, inputs())
    h = recs[0].output
    assert rows[0]["chan_var"] == pytest.approx(float(h.var(dim=(0, 2, 3)).mean()))
    assert rows[0]["chan_mean_sq"] == pytest.approx(float(h.mean(dim=(0, 2, 3)).pow(2).mean()))


def test_logits_spectrum_exact_equals_lanczos_and_bn_folding_is_exact():
    m = tiny_net()
    x = inputs(1)
    ex = S.logits_spectrum(m, x)
    assert ex["method"] == "exact" and ex["n"] == 10
    lz = S.logits_spectrum(m, x, exact_max=0, k=50)
    assert lz["exact"]
    torch.testing.assert_close(lz["svals"], ex["svals"], atol=1e-12, rtol=1e-8)
    folded = S.network_condition(m, x, fold_bn=True, double=True)
    plain = S.network_condition(m, x, fold_bn=False, double=True)
    assert folded["logits"]["kappa"] == pytest.approx(ex["kappa"], rel=1e-8)
    assert [r["kappa"] for r in folded["runs"]] == pytest.approx([r["kappa"] for r in plain["runs"]], rel=1e-8)
    assert [r["blocks"] for r in folded["runs"]] == [2, 1]
    with pytest.raises(ValueError, match="one sample"):
        S.logits_spectrum(m, inputs(2))


def test_block_table_and_format():
    m = tiny_net(dims=1)
    x = inputs(3, size=12, dims=1)
    rows = S.block_table(m, x, torch.tensor([0, 1, 2]), double=True, exact_limit=1)  # forces Lanczos
    assert [r["name"] for r in rows] == ["stages.0.0", "stages.0.1", "stages.1.0", "stages.1.1"]
    exact = S.block_table(m, x, torch.tensor([0, 1, 2]), double=True)
    for a, b in zip(rows, exact):
        assert a["sigma_max"] == pytest.approx(b["sigma_max"], rel=1e-6)
    assert math.isnan(exact[2]["kappa"]) and exact[0]["kappa"] >= 1
    text = S.format_block_table(exact, [("name", "block", ""), ("sigma_max", "smax", ".3g"), ("kappa", "kappa", ".3g")])
    assert text.splitlines()[0].split() == ["block", "smax", "kappa"] and len(text.splitlines()) == 5


def test_effective_receptive_field_of_one_conv():
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    r = S.effective_receptive_field(conv, torch.randn(2, 1, 21, 21), mass=1.0)
    assert r["radius"] == 2.5  # taps at distance <= 2 from the centre pixel, + half a pixel
    assert r["radius_frac"] == pytest.approx(2.5 / 10.5)
    assert float(r["map"].sum()) == pytest.approx(1.0)


def test_strip_batchnorm_and_zero_gamma():
    m = tiny_net()
    z = S.zero_init_residual_gamma(tiny_net())
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(z.stages[0][0](x), x)  # residual block = identity at init
    S.strip_batchnorm(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert m(inputs()).shape == (4, 10)


def test_cli_stability_and_scale_search_errors(capsys):
    from mbconv.cli import main

    rc = main(["stability", "--model", "ir_r1_k3_s1_e2_c8_se0.25;ir_r1_k3_s2_e2_c8", "--num-classes", "4",
               "--resolution", "8", "--batch", "2", "--iters", "4", "--probes", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "condition number (logits Jacobian, sigma_1 / sigma_K):" in out and "stages.1.0" in out
    assert main(["stability", "--model", "nonexistent_net"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["stability", "--model", "efficientnet_b0", "--checkpoint", "x"]) == 2  # mutually exclusive
    assert main(["scale-search", "--data", "no_such_dataset"]) == 2


def test_tools_run_on_a_timm_model_and_agree_with_ours():
    timm = pytest.importorskip("timm")
    from mbconv.compat import from_timm

    torch.manual_seed(0)
    tm = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
    ours = from_timm(tm).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert len(S.find_blocks(tm)) == len(S.find_blocks(ours)) == 16
    g_t = S.gradient_profile(tm, x, torch.tensor([1, 2]))
    g_o = S.gradient_profile(ours, x, torch.tensor([1, 2]))
    assert [r["param_grad"] for r in g_t] == pytest.approx([r["param_grad"] for r in g_o], rel=1e-3)
    c_t = S.network_condition(tm, x[:1])  # timm: BN stays a module (folding only knows our layers)
    c_o = S.network_condition(ours, x[:1])
    assert c_t["logits"]["kappa"] == pytest.approx(c_o["logits"]["kappa"], rel=1e-3)
    assert [r["blocks"] for r in c_t["runs"]] == [r["blocks"] for r in c_o["runs"]] == [1, 1, 2, 2, 3]
    skips = [[r["has_skip"] for r in S.signal_propagation(m, x)] for m in (tm, ours)]
    assert skips[0] == skips[1] and sum(skips[0]) == 9
