"""Scaling: TF channel/repeat rounding, per-stage depth split, compound scaling, the derived B0-B7 table."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models._efficientnet_builder import _scale_stage_depth
from timm.models._efficientnet_builder import round_channels as timm_round_channels

from mbconv.scaling import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_GAMMA,
    block_spec_in_chs,
    compound_multipliers,
    compound_scale,
    round_channels,
    round_repeats,
    scale_spec,
    scale_stage_repeats,
)
from mbconv.spec import NetSpec, parse_arch
from mbconv.zoo import get_spec

# -- round_channels: TF round_filters, by hand --------------------------------------------------------------

@pytest.mark.parametrize("chs, mult, divisor, limit, want", [
    (32, 1.0, 8, 0.9, 32),
    (32, 1.1, 8, 0.9, 32),      # 35.2 -> int(39.2) // 8 * 8 = 32 >= 0.9 * 35.2
    (40, 1.1, 8, 0.9, 48),      # 44 -> 48
    (112, 1.1, 8, 0.9, 120),    # 123.2 -> int(127.2) // 8 * 8 = 120
    (16, 1.4, 8, 0.9, 24),      # 22.4 -> int(26.4) // 8 * 8 = 24
    (24, 1.4, 8, 0.9, 32),      # 33.6 -> 32 (>= 30.24)
    (1280, 4.3, 8, 0.9, 5504),  # 5504 exactly
    (320, 4.3, 8, 0.9, 1376),
    # the 90 % rule: nearest multiple lost more than 10 % -> one divisor more
    (10, 1.0, 8, 0.9, 16),      # 8 < 9
    (9, 1.0, 8, 0.9, 16),       # 8 < 8.1
    (19, 1.0, 8, 0.9, 24),      # 16 < 17.1
    (32, 0.35, 8, 0.9, 16),     # 11.2 -> 8 < 10.08 -> 16 (MobileNetV2 0.35 stem)
    (20, 1.0, 16, 0.9, 32),     # 16 < 18
    # no bump without the rule, and the divisor is the floor
    (10, 1.0, 8, 0.0, 8),
    (3, 1.0, 8, 0.9, 8),
    (12, 1.0, 8, 0.9, 16),      # 12 + 4 = 16 rounds up
    (11, 1.0, 8, 0.9, 16),      # int(15) // 8 * 8 = 8 < 9.9 -> 16
    (24, 1.0, 16, 0.9, 32),
])
def test_round_channels_by_hand(chs, mult, divisor, limit, want):
    assert round_channels(chs, mult, divisor, limit) == want


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.floats(0.05, 6.0), st.sampled_from([1, 4, 8, 16]),
       st.sampled_from([0.0, 0.9]))
def test_round_channels_equals_timm(chs, mult, divisor, limit):
    got = round_channels(chs, mult, divisor, limit)
    assert got == timm_round_channels(chs, mult, divisor, round_limit=limit)
    assert got % divisor == 0 and got >= divisor
    if limit:
        assert got >= limit * chs * mult


def test_round_channels_rejects_non_positive_multiplier():
    for m in (0, -1.0):
        with pytest.raises(ValueError, match="multiplier"):
            round_channels(32, m)


# -- repeats -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("repeats, mult, want", [
    (1, 1.1, 2), (3, 1.1, 4), (4, 1.8, 8), (2, 1.0, 2), (3, 3.1, 10), (1, 0.5, 1), (3, 0.5, 2), (4, 2.6, 11),
])
def test_round_repeats_ceil(repeats, mult, want):
    assert round_repeats(repeats, mult) == want == math.ceil(repeats * mult)


def test_round_repeats_round_mode_and_errors():
    assert round_repeats(3, 1.1, "round") == 3  # ceil would give 4
    assert round_repeats(1, 0.3, "round") == 1  # never below 1
    assert round_repeats(4, 1.6, "round") == 6
    with pytest.raises(ValueError, match="depth_rounding='floor'"):
        round_repeats(3, 1.0, "floor")
    with pytest.raises(ValueError, match="multiplier"):
        round_repeats(3, 0.0)


def test_scale_stage_repeats_by_hand():
    # total 4 -> ceil(4.8) = 5, handed back last-first: 2 (round 2.5), then 2 (round 1.5), then the rest 1
    assert scale_stage_repeats([1, 1, 2], 1.2) == [1, 2, 2]
    assert scale_stage_repeats([1, 1], 3.1) == [3, 4]
    assert scale_stage_repeats([3], 1.4) == [5]
    assert scale_stage_repeats([1, 1, 2], 1.0) == [1, 1, 2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.floats(0.1, 6.0),
       st.sampled_from(["ceil", "round"]))
def test_scale_stage_repeats_equals_timm(repeats, mult, rounding):
    ours = scale_stage_repeats(repeats, mult, rounding)
    counts = Counter(_scale_stage_depth(list(range(len(repeats))), repeats, mult, rounding))
    assert ours == [counts[i] for i in range(len(repeats))]
    assert all(r >= 1 for r in ours)
    if mult >= 1 and rounding == "ceil":
        assert sum(ours) == math.ceil(sum(repeats) * mult)


# -- the derived B0-B7 table (anchors.md §1.0) ---------------------------------------------------------------

B_TABLE = {  # stem, stage outs, repeats, #blocks, head
    "b0": (32, [16, 24, 40, 80, 112, 192, 320], [1, 2, 2, 3, 3, 4, 1], 16, 1280),
    "b1": (32, [16, 24, 40, 80, 112, 192, 320], [2, 3, 3, 4, 4, 5, 2], 23, 1280),
    "b2": (32, [16, 24, 48, 88, 120, 208, 352], [2, 3, 3, 4, 4, 5, 2], 23, 1408),
    "b3": (40, [24, 32, 48, 96, 136, 232, 384], [2, 3, 3, 5, 5, 6, 2], 26, 1536),
    "b4": (48, [24, 32, 56, 112, 160, 272, 448], [2, 4, 4, 6, 6, 8, 2], 32, 1792),
    "b5": (48, [24, 40, 64, 128, 176, 304, 512], [3, 5, 5, 7, 7, 9, 3], 39, 2048),
    "b6": (56, [32, 40, 72, 144, 200, 344, 576], [3, 6, 6, 8, 8, 11, 3], 45, 2304),
    "b7": (64, [32, 48, 80, 160, 224, 384, 640], [4, 7, 7, 10, 10, 13, 4], 55, 2560),
}
B_PARAMS = {"b0": (224, 0.2), "b1": (240, 0.2), "b2": (260, 0.3), "b3": (300, 0.3), "b4": (380, 0.4),
            "b5": (456, 0.4), "b6": (528, 0.5), "b7": (600, 0.5)}


def _summary(spec: NetSpec):
    outs = [s.out_chs for s in spec.stages]
    return (spec.stem_chs, outs, [s.repeats for s in spec.stages], spec.num_blocks, spec.head_chs)


@pytest.mark.parametrize("prefix", ["", "tf_"])
@pytest.mark.parametrize("variant", sorted(B_TABLE))
def test_b_series_table(variant, prefix):
    spec = get_spec(f"{prefix}efficientnet_{variant}")
    assert _summary(spec) == B_TABLE[variant]
    assert (spec.resolution, spec.drop_rate) == B_PARAMS[variant]
    # stated in_chs are threaded: each equals the previous stage's output
    ins = [s.blocks[0].in_chs for s in spec.stages]
    assert ins == [B_TABLE[variant][0]] + B_TABLE[variant][1][:-1]
    # every block keeps kernel/stride/expansion/SE of the B0 definition
    b0 = get_spec("efficientnet_b0")
    for s, s0 in zip(spec.stages, b0.stages):
        (b,), (b_0,) = s.blocks, s0.blocks
        for f in ("kernel", "stride", "expand", "se_ratio"):
            assert getattr(b, f) == getattr(b_0, f)


def test_b_series_is_scale_spec_of_b0():
    b0 = get_spec("efficientnet_b0")
    for v, (w, d) in {"b3": (1.2, 1.4), "b5": (1.6, 2.2)}.items():
        want = get_spec(f"efficientnet_{v}")
        got = scale_spec(b0, w, d, want.resolution, drop_rate=want.drop_rate)
        assert dataclasses.replace(got, name=want.name) == want
        assert want.width_mult == w and want.depth_mult == d


# -- compound scaling ----------------------------------------------------------------------------------

def test_compound_multipliers_math():
    assert compound_multipliers(0) == (1.0, 1.0, 1.0)
    w, d, r = compound_multipliers(1)
    assert (w, d, r) == (DEFAULT_BETA, DEFAULT_ALPHA, DEFAULT_GAMMA) == (1.1, 1.2, 1.15)
    assert d * w**2 * r**2 == pytest.approx(1.92027, rel=1e-5)  # the paper's alpha beta^2 gamma^2 ~ 2
    w2, d2, r2 = compound_multipliers(2.5)
    assert (w2, d2, r2) == pytest.approx((1.1**2.5, 1.2**2.5, 1.15**2.5))
    wn, dn, rn = compound_multipliers(-1)
    assert (wn, dn, rn) == pytest.approx((1 / 1.1, 1 / 1.2, 1 / 1.15))
    assert compound_multipliers(2, alpha=2.0, beta=3.0, gamma=5.0) == (9.0, 4.0, 25.0)
    for name in ("alpha", "beta", "gamma"):
        with pytest.raises(ValueError, match=f"invalid {name}="):
            compound_multipliers(1, **{name: 0.0})


def test_compound_scale_phi0_is_base():
    b0 = get_spec("efficientnet_b0")
    out = compound_scale(b0, 0)
    assert out.name == "efficientnet_b0_phi0"
    assert dataclasses.replace(out, name=b0.name) == b0


def test_compound_scale_phi1_is_b2_shape():
    """phi=1 gives width 1.1, depth 1.2: exactly B2's channels and repeats; resolution round(224 * 1.15)."""
    out = compound_scale(get_spec("efficientnet_b0"), 1)
    b2 = get_spec("efficientnet_b2")
    assert _summary(out) == _summary(b2)
    assert out.stages == b2.stages
    assert out.resolution == 258


def test_negative_phi_shrinks():
    b0 = get_spec("efficientnet_b0")
    for phi in (-1, -2):
        small = compound_scale(b0, phi)
        assert small.resolution < b0.resolution
        assert small.head_chs < b0.head_chs
        for s, s0 in zip(small.stages, b0.stages):
            assert s.out_chs <= s0.out_chs and s.repeats <= s0.repeats
    s2 = compound_scale(b0, -2)
    assert s2.num_blocks < b0.num_blocks
    assert s2.resolution == round(224 / 1.15**2)
    assert [s.out_chs for s in compound_scale(b0, -1).stages] == [16, 24, 40, 72, 104, 176, 288]


# -- policy fields -------------------------------------------------------------------------------------

def test_lite_keeps_first_last_depth_stem_and_head():
    lite4 = get_spec("efficientnet_lite4")
    assert [s.repeats for s in lite4.stages] == [1, 4, 4, 6, 6, 8, 1]
    assert [s.out_chs for s in lite4.stages] == [24, 32, 56, 112, 160, 272, 448]
    assert (lite4.stem_chs, lite4.head_chs) == (32, 1280)
    assert not any(b.has_se for s in lite4.stages for b in s.blocks)
    # the same base without the lite policy grows first/last stages, stem and head like b4
    free = scale_spec(get_spec("efficientnet_lite0").with_(fix_first_last_depth=False, fix_stem=False,
                                                            head_scaling="scale"), 1.4, 1.8)
    assert [s.repeats for s in free.stages] == [2, 4, 4, 6, 6, 8, 2]
    assert (free.stem_chs, free.head_chs) == (48, 1792)


def test_fix_first_last_depth_synthetic():
    base = NetSpec(stages=parse_arch([["ir_r2_k3_s1_e2_c8"], ["ir_r2_k3_s2_e2_c8"], ["ir_r3_k3_s1_e2_c8"]]),
                   fix_first_last_depth=True)
    assert [s.repeats for s in scale_spec(base, depth=2.0).stages] == [2, 4, 3]
    free = base.with_(fix_first_last_depth=False)
    assert [s.repeats for s in scale_spec(free, depth=2.0).stages] == [4, 4, 6]


def test_width_applies_to_stem_unless_fix_stem():
    b0 = get_spec("efficientnet_b0")
    assert scale_spec(b0, 2.0).stem_chs == 64
    assert scale_spec(b0.with_(fix_stem=True), 2.0).stem_chs == 32
    assert scale_spec(b0.with_(fix_stem=True), 2.0).stages[0].blocks[0].in_chs == 32
    assert scale_spec(b0, 2.0).stages[0].blocks[0].in_chs == 64


def test_head_scaling_policies():
    b0 = get_spec("efficientnet_b0")
    assert scale_spec(b0, 2.0).head_chs == 2560
    assert scale_spec(b0.with_(head_scaling="fixed"), 2.0).head_chs == 1280
    assert scale_spec(b0.with_(head_scaling="max"), 0.5).head_chs == 1280
    assert scale_spec(b0.with_(head_scaling="max"), 1.4).head_chs == 1792
    assert get_spec("mobilenetv2_050").head_chs == 1280
    assert get_spec("mobilenetv2_140").head_chs == 1792
    headless = b0.with_(head_type="none", head_chs=0)
    assert scale_spec(headless, 2.0).head_chs == 0


def test_scale_spec_scales_mid_and_records_multipliers():
    base = NetSpec(stages=parse_arch(["ir_r1_k3_s1_e6_c16_m40", "ir_r2_k3_s2_e6_c24"]), stem_chs=16)
    out = scale_spec(base, 2.0, 1.5, resolution=128)
    assert out.stages[0].blocks[0].mid_chs == 80
    assert [s.repeats for s in out.stages] == [2, 3]
    assert (out.width_mult, out.depth_mult, out.resolution) == (2.0, 1.5, 128)
    again = scale_spec(out, 1.5, 2.0)
    assert (again.width_mult, again.depth_mult) == (3.0, 3.0)


def test_depth_rounding_round_policy():
    b0 = get_spec("efficientnet_b0")
    assert [s.repeats for s in scale_spec(b0, depth=1.1).stages] == [2, 3, 3, 4, 4, 5, 2]
    assert [s.repeats for s in scale_spec(b0.with_(depth_rounding="round"), depth=1.1).stages] == \
        [1, 2, 2, 3, 3, 4, 1]


def test_scale_spec_rejects_bad_arguments():
    b0 = get_spec("efficientnet_b0")
    with pytest.raises(ValueError, match="width"):
        scale_spec(b0, 0.0)
    with pytest.raises(ValueError, match="depth"):
        scale_spec(b0, 1.0, -1.0)
    with pytest.raises(ValueError, match="resolution=0"):
        scale_spec(b0, 1.0, 1.0, 0)


def test_block_spec_in_chs_fills_threaded_channels():
    spec = get_spec("mobilenetv3_large_100")
    rows = block_spec_in_chs(spec)
    chs = spec.stem_chs
    for row in rows:
        for b in row:
            assert b.in_chs == chs
            chs = b.out_chs
