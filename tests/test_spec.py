"""Specs: block-string grammar, exact round trips, validation messages, random specs that build and run."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbconv.net import MBConvNet
from mbconv.spec import (
    ACT_CODES,
    ACTIVATIONS,
    BLOCK_TYPES,
    BlockSpec,
    NetSpec,
    StageSpec,
    make_divisible,
    parse_arch,
    plan_blocks,
    spec_replace_blocks,
)
from mbconv.zoo import EFFICIENTNET_B0_BLOCKS, get_spec, list_models


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than several on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- parsing ------------------------------------------------------------------------------------------

TF_STRINGS = EFFICIENTNET_B0_BLOCKS + [
    "r1_k3_s11_e1_i32_o16_noskip",
    "r1_k3_s22_e6_i16_o24_se0.25_noskip",
    "r4_k5_s22_e6_i112_o192_m600_se0.25",
    "r2_k7_s11_e2.5_i40_o40_se0.5",
    "r1_k1_s11_e1_i8_o8_nre",
]


@pytest.mark.parametrize("text", TF_STRINGS)
def test_tf_string_round_trips_exactly(text):
    b = BlockSpec.from_string(text)
    assert b.to_string(style="tf") == text
    assert BlockSpec.from_string(b.to_string()) == b


def test_tf_string_fields():
    b = BlockSpec.from_string("r1_k3_s11_e1_i32_o16_se0.25")
    assert (b.block, b.repeats, b.kernel, b.stride, b.expand, b.in_chs, b.out_chs, b.se_ratio) == (
        "ir", 1, 3, 1, 1.0, 32, 16, 0.25)
    assert b.skip is True and b.mid_chs is None and b.act is None
    b = BlockSpec.from_string("r4_k5_s22_e6_i112_o192_se0.25")
    assert (b.repeats, b.kernel, b.stride, b.expand, b.in_chs, b.out_chs) == (4, 5, 2, 6.0, 112, 192)
    assert BlockSpec.from_string("r1_k3_s11_e1_i32_o16_noskip").skip is False


def test_tf_stride_pair_must_agree():
    with pytest.raises(ValueError, match=r"invalid stride='12'"):
        BlockSpec.from_string("r1_k3_s12_e1_i32_o16")


@pytest.mark.parametrize("text", [
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ds_r1_k3_s1_c16",
    "ds_r1_k3_s2_c16_se0.25_nre",
    "er_r4_k3_s2_e4_c48",
    "cn_r2_k3_s1_c24_skip",
    "cn_r1_k1_s1_c960",
    "ir_r1_k3_s2_e4.5_c24_nre",
    "ir_r1_k3_s1_e3.67_c24_nre",
    "ir_r3_k5_s1_e6_i40_c40_m200_se0.25_nhs_noskip",
    "er_r1_k3_s1_e1_c8_se1_nge",
    "ir_r1_k3_s1_e1_c8_nid",
    "ir_r1_k3_s1_e2_c8_nsw",
    "ir_r1_k3_s1_e2_c8_nr6",
])
def test_canonical_string_round_trips_exactly(text):
    b = BlockSpec.from_string(text)
    assert b.to_string() == text
    assert BlockSpec.from_string(b.to_string()) == b


def test_o_and_c_are_synonyms_and_type_defaults_to_ir():
    assert BlockSpec.from_string("r1_k3_s1_e6_o24") == BlockSpec.from_string("ir_r1_k3_s1_e6_c24")
    assert BlockSpec.from_string("r1_k3_s1_o24").expand == 1.0
    assert BlockSpec.from_string("cn_r1_k3_s1_c8").skip is False
    assert BlockSpec.from_string("ds_r1_k3_s1_c8").skip is True


def test_parse_arch_forms_agree():
    nested = parse_arch([["ir_r1_k3_s1_e6_c16", "ir_r2_k3_s1_e6_c16"], ["ds_r1_k3_s2_c8"]])
    text = parse_arch(" ir_r1_k3_s1_e6_c16 , ir_r2_k3_s1_e6_c16 ; ds_r1_k3_s2_c8 ;")
    assert nested == text
    assert [len(s.blocks) for s in nested] == [2, 1]
    assert nested[0].repeats == 3 and nested[1].stride == 2 and nested[0].out_chs == 16
    flat = parse_arch(["ir_r1_k3_s1_e6_c16", "ds_r1_k3_s2_c8"])
    assert len(flat) == 2 and all(len(s.blocks) == 1 for s in flat)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_valid_block_act_serialises(act):
    """A BlockSpec accepts every name in ACTIVATIONS, so its string (and hence NetSpec.to_dict) must exist."""
    b = BlockSpec(act=act)
    assert BlockSpec.from_string(b.to_string()) == b


def test_ds_block_has_no_tf_form():
    # the TF form has no block type, so a 'ds' block could not round-trip through it
    with pytest.raises(ValueError, match="invalid style='tf'"):
        BlockSpec.from_string("ds_r1_k3_s1_i8_c8_se0.25").to_string(style="tf")


def test_tf_form_needs_in_chs_and_ir_or_ds():
    with pytest.raises(ValueError, match="invalid style='tf'"):
        BlockSpec.from_string("ir_r1_k3_s1_e6_c16").to_string(style="tf")
    with pytest.raises(ValueError, match="invalid style='tf'"):
        BlockSpec.from_string("er_r1_k3_s1_e4_i8_c16").to_string(style="tf")
    with pytest.raises(ValueError, match="invalid style='xx'"):
        BlockSpec().to_string(style="xx")


# -- zoo round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_zoo_spec_round_trips(name):
    spec = get_spec(name)
    assert NetSpec.from_dict(spec.to_dict()) == spec
    assert NetSpec.from_json(spec.to_json()) == spec
    # to_json is real JSON: only plain types
    assert json.loads(spec.to_json())["stages"] == spec.block_strings()
    # through the block strings alone
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "stages"}
    assert NetSpec(stages=parse_arch(spec.block_strings()), **fields) == spec
    # TF form wherever it applies (every block an 'ir' with in_chs): it rebuilds the same stages
    blocks = [b for s in spec.stages for b in s.blocks]
    if all(b.block == "ir" and b.in_chs is not None for b in blocks):
        assert parse_arch(spec.block_strings(style="tf")) == spec.stages


def test_b0_block_strings_are_the_tf_ones():
    spec = get_spec("efficientnet_b0")
    assert [s[0] for s in spec.block_strings(style="tf")] == EFFICIENTNET_B0_BLOCKS


def test_from_dict_rejects_unknown_keys_and_bad_json():
    d = get_spec("efficientnet_b0").to_dict()
    d["colour"] = "red"
    with pytest.raises(ValueError, match="colour"):
        NetSpec.from_dict(d)
    with pytest.raises(ValueError, match="invalid spec json"):
        NetSpec.from_json("{not json")
    with pytest.raises(ValueError, match="invalid stages"):
        NetSpec.from_dict({"dims": 2})


# -- validation ----------------------------------------------------------------------------------------

def _msg(excinfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize("kw, field, value", [
    (dict(kernel=4), "kernel", "4"),
    (dict(kernel=0), "kernel", "0"),
    (dict(stride=0), "stride", "0"),
    (dict(stride=-2), "stride", "-2"),
    (dict(expand=0.5), "expand", "0.5"),
    (dict(block="ds", expand=2), "expand", "2"),
    (dict(out_chs=0), "out_chs", "0"),
    (dict(out_chs=-3), "out_chs", "-3"),
    (dict(in_chs=0), "in_chs", "0"),
    (dict(mid_chs=0), "mid_chs", "0"),
    (dict(repeats=0), "repeats", "0"),
    (dict(se_ratio=1.5), "se_ratio", "1.5"),
    (dict(se_ratio=-0.25), "se_ratio", "-0.25"),
    (dict(block="cn", se_ratio=0.25), "se_ratio", "0.25"),
    (dict(act="mish"), "act", "'mish'"),
    (dict(block="xx"), "block", "'xx'"),
])
def test_block_validation_names_field_and_value(kw, field, value):
    with pytest.raises(ValueError) as e:
        BlockSpec(**kw)
    assert _msg(e).startswith(f"invalid {field}={value}"), _msg(e)


@pytest.mark.parametrize("text, field, value", [
    ("ir_r1_k4_s1_e6_c16", "kernel", "4"),
    ("ir_r1_k3_s0_e6_c16", "stride", "0"),
    ("ir_r1_k3_s1_e0.5_c16", "expand", "0.5"),
    ("ir_r1_k3_s1_e6_c0", "out_chs", "0"),
    ("ir_r1_k3_s1_e6_c16_se1.5", "se_ratio", "1.5"),
    ("ir_r1_k3_s1_e6_c16_nfoo", "act", "'foo'"),
])
def test_block_string_validation_names_field_and_value(text, field, value):
    with pytest.raises(ValueError) as e:
        BlockSpec.from_string(text)
    assert _msg(e).startswith(f"invalid {field}={value}"), _msg(e)


@pytest.mark.parametrize("text, token", [
    ("ir_r1_k3_s1_e6_c16_x9", "x9"),
    ("ir_r1_k3_s1_e6_c16_foo", "foo"),
    ("ir_r1_k3_s1_e6_c16_noskipx", "noskipx"),
    ("ir_r1_k3_s1_e6_c16_", ""),
])
def test_unknown_token_is_named(text, token):
    with pytest.raises(ValueError) as e:
        BlockSpec.from_string(text)
    assert _msg(e).startswith("invalid block_string=") and f"unknown token {token!r}" in _msg(e), _msg(e)


@pytest.mark.parametrize("text, why", [
    ("ir_k3_s1_e6_c16", "'r'"),
    ("ir_r1_s1_e6_c16", "'k'"),
    ("ir_r1_k3_e6_c16", "'s'"),
    ("ir_r1_k3_s1_e6", "'o/c'"),
    ("", "empty"),
])
def test_malformed_block_strings(text, why):
    with pytest.raises(ValueError, match="invalid block_string=") as e:
        BlockSpec.from_string(text)
    assert why in _msg(e)


@pytest.mark.parametrize("text, token", [
    ("ir_r1_k3_s1_eX_c16", "eX"),
    ("ir_r1_k3_s1_e6_c16_se0.2.5", "se0.2.5"),
    ("ir_r1_kx_s1_c16", "kx"),
    ("ir_rx_k3_s1_c16", "rx"),
    ("ir_r1_k3_s1_c1x", "c1x"),
    ("ir_r1_k3_s1_e6_i3.5_c16", "i3.5"),
    ("ir_r1_k3_s1_e6_c16_m", "m"),
])
def test_bad_number_token_is_named(text, token):
    with pytest.raises(ValueError) as e:
        BlockSpec.from_string(text)
    assert _msg(e).startswith("invalid block_string=") and repr(token) in _msg(e), _msg(e)


@pytest.mark.parametrize("arch", [",;_", "ir_r1_k3_s1_e2_c8;,", ",,;ir_r1_k3_s1_e2_c8"])
def test_stage_of_separators_only_names_the_string(arch):
    """A stage with no block between the separators (found by the CLI fuzz test as ',;_') is refused naming the
    whole string, not with the dataclass's 'a stage needs at least one block'."""
    with pytest.raises(ValueError) as e:
        parse_arch(arch)
    assert repr(arch) in _msg(e) and "has no blocks" in _msg(e), _msg(e)


ONE_STAGE = ("ir_r1_k3_s1_e2_c8",)


@pytest.mark.parametrize("kw, field, value", [
    (dict(dims=0), "dims", "0"),
    (dict(dims=4), "dims", "4"),
    (dict(act="mish"), "act", "'mish'"),
    (dict(se_act="foo"), "se_act", "'foo'"),
    (dict(in_chans=0), "in_chans", "0"),
    (dict(num_classes=0), "num_classes", "0"),
    (dict(stem_chs=0), "stem_chs", "0"),
    (dict(stem_kernel=2), "stem_kernel", "2"),
    (dict(stem_stride=0), "stem_stride", "0"),
    (dict(head_chs=0), "head_chs", "0"),
    (dict(head_type="none"), "head_chs", "1280"),
    (dict(padding="valid"), "padding", "'valid'"),
    (dict(se_position="middle"), "se_position", "'middle'"),
    (dict(drop_rate=1.0), "drop_rate", "1.0"),
    (dict(drop_path_rate=-0.1), "drop_path_rate", "-0.1"),
    (dict(norm_eps=0.0), "norm_eps", "0.0"),
    (dict(norm_momentum=1.5), "norm_momentum", "1.5"),
    (dict(round_limit=2.0), "round_limit", "2.0"),
    (dict(stages=()), "stages", "()"),
])
def test_net_validation_names_field_and_value(kw, field, value):
    kw.setdefault("stages", ONE_STAGE)
    with pytest.raises(ValueError) as e:
        NetSpec(**kw)
    assert _msg(e).startswith(f"invalid {field}={value}"), _msg(e)


def test_in_chs_must_match_threaded_channels():
    # stated in_chs that agree are fine
    NetSpec(stages=["ir_r1_k3_s1_e1_i32_c16", "ir_r1_k3_s2_e6_i16_c24"], stem_chs=32)
    with pytest.raises(ValueError) as e:
        NetSpec(stages=[["ir_r1_k3_s1_e1_i32_c16", "ir_r1_k3_s1_e6_i24_c24"]], stem_chs=32)
    assert _msg(e).startswith("invalid stages[0].blocks[1].in_chs=24"), _msg(e)
    assert "16" in _msg(e)
    with pytest.raises(ValueError, match=r"invalid stages\[0\]\.blocks\[0\]\.in_chs=16"):
        NetSpec(stages=["ir_r1_k3_s1_e1_i16_c16"], stem_chs=32)
    # a changed stem width is checked again
    spec = get_spec("efficientnet_b0")
    with pytest.raises(ValueError, match=r"in_chs=32"):
        spec.with_(stem_chs=24)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_expand_rejected(value):
    with pytest.raises(ValueError, match=r"invalid expand="):
        BlockSpec(expand=value, out_chs=8)


def test_float_dims_rejected_or_working():
    try:
        spec = NetSpec(stages=["ir_r1_k3_s1_e2_c8_se0.25"], dims=2.0, head_chs=8, num_classes=3)
    except ValueError as e:
        assert "dims" in str(e)
        return
    MBConvNet(spec).eval()(torch.randn(2, 3, 8, 8))


# -- property tests ------------------------------------------------------------------------------------

ACT_NAMES = sorted(ACT_CODES.values())


@st.composite
def block_specs(draw, max_chs: int = 10, max_repeats: int = 2, in_chs: bool = True) -> BlockSpec:
    block = draw(st.sampled_from(BLOCK_TYPES))
    expand = 1.0 if block in ("ds", "cn") else draw(
        st.one_of(st.sampled_from([1.0, 2.0, 3.0, 2.5, 3.67]), st.floats(1.0, 6.0, allow_nan=False)))
    se = 0.0 if block == "cn" else draw(
        st.one_of(st.just(0.0), st.sampled_from([0.25, 0.5, 1.0]), st.floats(0.01, 1.0)))
    mid = draw(st.none() | st.integers(1, max_chs)) if block in ("ir", "er") else None
    return BlockSpec(
        block=block, repeats=draw(st.integers(1, max_repeats)), kernel=draw(st.sampled_from([1, 3, 5])),
        stride=draw(st.sampled_from([1, 2])), expand=expand, out_chs=draw(st.integers(1, max_chs)),
        in_chs=draw(st.none() | st.integers(1, 64)) if in_chs else None, mid_chs=mid, se_ratio=se,
        act=draw(st.none() | st.sampled_from(ACT_NAMES)), skip=draw(st.none() | st.booleans()),
    )


@SETTINGS
@given(block_specs())
def test_random_block_string_round_trip(b):
    assert BlockSpec.from_string(b.to_string()) == b
    if b.block == "ir" and b.in_chs is not None:
        assert BlockSpec.from_string(b.to_string(style="tf")) == b


@st.composite
def net_specs(draw) -> NetSpec:
    stages = [
        StageSpec(tuple(draw(st.lists(block_specs(in_chs=False), min_size=1, max_size=2))))
        for _ in range(draw(st.integers(1, 3)))
    ]
    head_type = draw(st.sampled_from(["conv", "pool_conv", "none"]))
    se_divisor = draw(st.sampled_from([1, 8]))
    return NetSpec(
        stages=tuple(stages), dims=draw(st.integers(1, 3)), in_chans=draw(st.integers(1, 4)),
        num_classes=draw(st.integers(1, 5)), stem_chs=draw(st.integers(1, 8)),
        stem_kernel=draw(st.sampled_from([1, 3])), stem_stride=draw(st.sampled_from([1, 2])),
        head_type=head_type, head_chs=0 if head_type == "none" else draw(st.integers(1, 12)),
        act=draw(st.sampled_from(ACT_NAMES)), se_base=draw(st.sampled_from(["in", "mid"])),
        se_divisor=se_divisor, se_gate=draw(st.sampled_from(["sigmoid", "hard_sigmoid"])),
        se_position=draw(st.sampled_from(["after_dw", "before_dw"])),
        padding=draw(st.sampled_from(["symmetric", "same"])),
        drop_path_rate=draw(st.sampled_from([0.0, 0.3])),
        channel_divisor=draw(st.sampled_from([1, 4, 8])),
    )


INPUT_SIZES = {1: (9,), 2: (7, 6), 3: (4, 5, 3)}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net_specs())
def test_random_valid_spec_builds_and_runs(spec):
    torch.manual_seed(0)
    net = MBConvNet(spec)
    assert len(net.blocks()) == spec.num_blocks == len(plan_blocks(spec))
    assert NetSpec.from_json(spec.to_json()) == spec
    size = INPUT_SIZES[spec.dims]
    x = torch.randn(2, spec.in_chans, *size)
    net.eval()
    with torch.no_grad():
        y = net(x)
        f = net.forward_features(x)
    assert y.shape == (2, spec.num_classes)
    assert torch.isfinite(y).all()
    # every stride-2 conv maps n -> ceil(n / 2), with either padding convention
    want_chs = spec.head_chs if spec.head_type == "conv" else spec.stages[-1].out_chs
    assert f.shape == (2, want_chs, *[_ceil_chain(n, spec) for n in size])
    # train mode: gradients reach the stem
    net.train()
    net(x).sum().backward()
    assert net.stem.conv.weight.grad is not None


def _ceil_chain(n: int, spec: NetSpec) -> int:
    n = -(-n // spec.stem_stride)
    for s in spec.stages:
        for b in s.blocks:
            n = -(-n // b.stride)
    return n


BLOCK_BAD = st.one_of(
    st.tuples(st.just("kernel"), st.integers(-4, 40).filter(lambda k: k < 1 or k % 2 == 0)),
    st.tuples(st.just("stride"), st.integers(-5, 0)),
    st.tuples(st.just("repeats"), st.integers(-5, 0)),
    st.tuples(st.just("out_chs"), st.integers(-100, 0)),
    st.tuples(st.just("in_chs"), st.integers(-100, 0)),
    st.tuples(st.just("mid_chs"), st.integers(-100, 0)),
    st.tuples(st.just("expand"), st.floats(max_value=1.0, exclude_max=True, allow_nan=False)),
    st.tuples(st.just("se_ratio"), st.one_of(st.floats(max_value=0.0, exclude_max=True, allow_nan=False),
                                             st.floats(min_value=1.0, exclude_min=True, allow_nan=False))),
    st.tuples(st.just("act"), st.text(min_size=1, max_size=6).filter(lambda s: s not in ACTIVATIONS)),
    st.tuples(st.just("block"), st.text(max_size=4).filter(lambda s: s not in BLOCK_TYPES)),
    st.tuples(st.sampled_from(["kernel", "stride", "out_chs", "repeats"]), st.sampled_from([2.0, "3", True])),
)


@SETTINGS
@given(BLOCK_BAD)
def test_random_invalid_block_field_raises_named_error(bad):
    name, value = bad
    with pytest.raises(ValueError) as e:
        BlockSpec(**{name: value})
    assert _msg(e).startswith(f"invalid {name}="), _msg(e)


_ENUMS = ["act", "se_base", "se_gate", "se_position", "padding", "head_type", "head_scaling",
          "depth_rounding", "se_act"]
_ENUM_VALUES = set(ACTIVATIONS) | {"in", "mid", "after_dw", "before_dw", "symmetric", "same", "conv",
                                   "pool_conv", "none", "scale", "fixed", "max", "ceil", "round"}

NET_BAD = st.one_of(
    st.tuples(st.just("dims"), st.integers(-3, 9).filter(lambda d: d not in (1, 2, 3))),
    st.tuples(st.sampled_from(["in_chans", "num_classes", "stem_chs", "stem_stride", "resolution",
                               "channel_divisor", "se_divisor"]), st.integers(-10, 0)),
    st.tuples(st.just("stem_kernel"), st.integers(-4, 12).filter(lambda k: k < 1 or k % 2 == 0)),
    st.tuples(st.just("head_chs"), st.integers(-10, 0)),
    st.tuples(st.sampled_from(_ENUMS), st.text(max_size=6).filter(lambda s: s not in _ENUM_VALUES)),
    st.tuples(st.sampled_from(["drop_rate", "drop_path_rate"]),
              st.one_of(st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0))),
    st.tuples(st.just("norm_eps"), st.one_of(st.floats(max_value=0.0), st.just(float("nan")))),
    st.tuples(st.sampled_from(["norm_momentum", "round_limit"]),
              st.one_of(st.floats(max_value=0.0, exclude_max=True),
                        st.floats(min_value=1.0, exclude_min=True), st.just(float("nan")))),
)


@SETTINGS
@given(NET_BAD)
def test_random_invalid_net_field_raises_named_error(bad):
    name, value = bad
    with pytest.raises(ValueError) as e:
        NetSpec(stages=ONE_STAGE, **{name: value})
    assert _msg(e).startswith(f"invalid {name}="), _msg(e)


# -- derived views --------------------------------------------------------------------------------------

def test_make_divisible_matches_tf_round_filters():
    def tf_round_filters(f, divisor=8):  # tensorflow/tpu efficientnet_model.round_filters, min_depth=None
        new = max(divisor, int(f + divisor / 2) // divisor * divisor)
        if new < 0.9 * f:
            new += divisor
        return int(new)

    for v in [1, 3, 4, 7.9, 10, 11, 12, 17.6, 19, 20, 35.2, 44.8, 57.6, 99.5, 131.2, 1376.0, 2816]:
        assert make_divisible(v) == tf_round_filters(v), v
    assert make_divisible(10, round_limit=0.0) == 8
    assert make_divisible(3, 8, min_value=4) == 4


def test_plan_blocks_b0():
    spec = get_spec("efficientnet_b0")
    plans = plan_blocks(spec)
    assert len(plans) == 16 == spec.num_blocks
    assert [p.index for p in plans] == list(range(16))
    first = plans[0]  # MBConv1: no expansion conv, SE from block input 32 * 0.25
    assert (first.in_chs, first.mid_chs, first.out_chs, first.se_chs) == (32, 32, 16, 8)
    assert not first.has_expand
    second = plans[1]  # MBConv6 16 -> 24, stride 2, SE from input 16 * 0.25 = 4
    assert (second.in_chs, second.mid_chs, second.se_chs, second.stride) == (16, 96, 4, 2)
    assert second.has_expand and not second.has_skip
    third = plans[2]  # repeat: stride 1, in == out -> residual
    assert (third.in_chs, third.mid_chs, third.se_chs, third.stride, third.has_skip) == (24, 144, 6, 1, True)
    for p in plans:
        assert p.has_skip == (p.stride == 1 and p.in_chs == p.out_chs)
        assert p.se_chs == max(1, int(p.in_chs * 0.25))
    noskip = spec_with_noskip(spec)
    assert not any(p.has_skip for p in plan_blocks(noskip))


def spec_with_noskip(spec: NetSpec) -> NetSpec:
    return spec_replace_blocks(spec, lambda si, bi, b: dataclasses.replace(b, skip=False))


def test_se_base_mid_rounds_to_divisor():
    spec = NetSpec(stages=["ir_r1_k3_s1_e6_c16_se0.25"], stem_chs=16, se_base="mid", se_divisor=8)
    (p,) = plan_blocks(spec)
    assert p.mid_chs == 96 and p.se_chs == make_divisible(96 * 0.25, 8) == 24
    spec = spec.with_(se_base="in", se_divisor=1)
    assert plan_blocks(spec)[0].se_chs == 4


def test_features_chs_and_strings_regex():
    spec = get_spec("efficientnet_b0")
    assert spec.features_chs == 1280
    assert spec.with_(head_type="none", head_chs=0).features_chs == 320
    for row in spec.block_strings():
        for s in row:
            assert re.fullmatch(r"ir_r\d+_k\d_s\d_e\d+_i\d+_c\d+_se0\.25", s), s
