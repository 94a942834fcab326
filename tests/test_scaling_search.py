"""Scaling at equal cost: dWr exponents, single-axis scaling to a MAC target, and the coefficient search."""

from __future__ import annotations

import math

import pytest

from mbconv.cost import spec_cost
from mbconv.scaling_search import (
    STRATEGIES,
    coefficient_grid,
    dwr_multipliers,
    dwr_scale,
    equal_cost_family,
    scale_to_macs,
    search_coefficients,
    with_total_blocks,
)
from mbconv.spec import NetSpec, parse_arch
from mbconv.zoo import get_spec


def base_1d(divisor: int = 1) -> NetSpec:
    return NetSpec(stages=parse_arch("ir_r2_k5_s1_e4_c16_se0.25;ir_r2_k5_s1_e4_c16_se0.25"), name="d1", dims=1,
                   in_chans=1, num_classes=10, stem_chs=16, stem_kernel=5, stem_stride=1, head_type="none",
                   head_chs=0, resolution=40, channel_divisor=divisor, drop_rate=0.0)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 1 / 3, 0.8, 1.0])
def test_dwr_multipliers_keep_the_flop_factor(dims, alpha):
    w, d, r = dwr_multipliers(6.0, alpha, dims)
    assert d * w**2 * r**dims == pytest.approx(6.0)
    assert w == pytest.approx(6.0 ** (alpha / 2))


def test_dwr_exponents_of_the_paper_and_errors():
    w, d, r = dwr_multipliers(16.0, 0.8, 2)  # e_w = 0.4, e_d = 0.1, e_r = 0.05
    assert (w, d, r) == pytest.approx((16**0.4, 16**0.1, 16**0.05))
    assert dwr_multipliers(8.0, 1.0) == pytest.approx((8**0.5, 1.0, 1.0))  # alpha = 1: width only
    for bad in (dict(s=0.0), dict(s=2.0, alpha=1.5), dict(s=2.0, dims=4)):
        with pytest.raises(ValueError):
            dwr_multipliers(**bad)
    b0 = get_spec("efficientnet_b0")
    s4 = dwr_scale(b0, 4.0)
    assert s4.width_mult == pytest.approx(4**0.4) and s4.resolution == round(224 * 4**0.05)
    # nominal dWr overshoots: TF's ceil on repeats turns depth x1.15 into 23/16 blocks; scale_to_macs corrects it
    assert 4.5 < spec_cost(s4).macs / spec_cost(b0).macs < 6.0
    spec, info = scale_to_macs(b0, "dwr", 4.0)
    assert info["within_tol"] and abs(spec_cost(spec).macs / spec_cost(b0).macs / 4 - 1) <= 0.03


def test_with_total_blocks():
    b0 = get_spec("efficientnet_b0")  # repeats 1,2,2,3,3,4,1 = 16
    for n in (7, 16, 23, 40):
        s = with_total_blocks(b0, n)
        assert s.num_blocks == n
        assert [st.out_chs for st in s.stages] == [st.out_chs for st in b0.stages]
    assert [st.repeats for st in with_total_blocks(b0, 32).stages] == [2, 4, 4, 6, 6, 8, 2]
    with pytest.raises(ValueError, match="total"):
        with_total_blocks(b0, 3)


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_scale_to_macs_hits_the_target_on_one_axis(factor):
    base = base_1d()
    fam = equal_cost_family(base, factor, tol=0.03)
    assert set(fam) == set(STRATEGIES)
    for spec, info in fam.values():
        assert spec_cost(spec).macs == info["macs"]
        assert abs(info["macs"] / (factor * spec_cost(base).macs) - 1) <= 0.03
    d, w, r = fam["depth"][0], fam["width"][0], fam["resolution"][0]
    assert d.stem_chs == 16 and d.resolution == 40 and d.num_blocks > base.num_blocks
    assert w.num_blocks == 4 and w.resolution == 40 and w.stem_chs > 16
    assert r.num_blocks == 4 and r.stem_chs == 16 and r.resolution == pytest.approx(40 * factor, abs=2)
    c = fam["compound"][1]
    assert c["width_mult"] > 1 and c["depth_mult"] > 1 and c["resolution_mult"] > 1


def test_scale_to_macs_errors_and_coarse_rounding():
    with pytest.raises(ValueError, match="strategy"):
        scale_to_macs(base_1d(), "diagonal", 2.0)
    with pytest.raises(ValueError, match="factor"):
        scale_to_macs(base_1d(), "width", 0.0)
    with pytest.raises(ValueError, match="width"):  # 16 channels round to 16 or 24 with divisor 8: x1.0 or x2.2
        equal_cost_family(base_1d(divisor=8), 1.4, strategies=("width",))


def test_coefficient_grid_satisfies_the_constraint():
    grid = coefficient_grid((1.0, 1.2, 1.4, 2.0), (1.0, 1.1, 1.2, math.sqrt(2)), 2.0, dims=2)
    assert (1.2, 1.1, pytest.approx(math.sqrt(2 / (1.2 * 1.21)))) in [(a, b, g) for a, b, g in grid]
    for a, b, g in grid:
        assert g >= 1.0
        assert a * b * b * g * g == pytest.approx(2.0, rel=0.021)
    assert all(a * b * b <= 2.04 for a, b, _ in coefficient_grid((2.0, 3.0), (1.0, 1.5), 2.0))
    assert coefficient_grid((1.0,), (1.0,), 2.0, dims=1) == [(1.0, 1.0, 2.0)]


def test_search_coefficients_end_to_end_is_cached(tmp_path):
    tiny = NetSpec(stages=parse_arch("ir_r1_k3_s1_e2_c8;ir_r1_k3_s2_e2_c8"), name="tiny", stem_chs=8,
                   stem_stride=1, head_chs=16, drop_rate=0.0)
    kw = dict(data="digits8", alphas=(1.0, 2.0), betas=(1.0,), proxy_width=1.0, epochs=1, max_steps=2,
              out=tmp_path, tol=0.3, log=lambda s: None)
    res = search_coefficients(tiny, **kw)
    assert res["base"]["resolution"] == 8 and res["settings"]["seeds"] == 2
    rows = res["rows"]
    assert [(r["alpha"], r["beta"]) for r in rows] == [(1.0, 1.0), (2.0, 1.0)]
    for r in rows:
        assert r["status"] == "trained" and len(r["accs"]) == 2 and 0 <= r["test_acc"] <= 1
        assert len(r["val_accs"]) == 2 and 0 <= r["val_acc"] <= 1
        assert abs(r["ratio"] / 2 - 1) <= 0.3
    # resolution-only needs 11 px for x1.94; depth x2 is x1.71 at 8 px and x2.25 at 9 px (the closer one)
    assert (rows[0]["resolution"], rows[1]["resolution"], rows[1]["blocks"]) == (11, 9, 4)
    assert rows[1]["ratio"] == pytest.approx(2.25)
    assert sum(r["chosen"] for r in rows) == 1 and "chosen on validation accuracy: alpha=" in res["table"]
    chosen = next(r for r in rows if r["chosen"])  # the validation split chooses; test is only reported
    assert chosen["val_acc"] == max(r["val_acc"] for r in rows) and res["chosen"]["val_acc"] == chosen["val_acc"]
    assert res["settings"]["selection"]["split"] == "val"
    again = search_coefficients(tiny, **kw)  # resumed from the cached runs: same numbers
    assert [r["accs"] for r in again["rows"]] == [r["accs"] for r in rows]
    with pytest.raises(ValueError, match="tol"):
        search_coefficients(tiny, tol=0.0, **{k: v for k, v in kw.items() if k != "tol"})
