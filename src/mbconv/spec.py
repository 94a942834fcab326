"""What a network is: frozen dataclasses for a block, a stage and a network, and compact block strings.

One spec type describes every network in mbconv (EfficientNet B0-L2, Lite, V2, MobileNetV2/V3, and any
1-D/2-D/3-D custom net). Specs are plain data: building (`mbconv.net`), scaling (`mbconv.scaling`) and cost
(`mbconv.cost`) all read them; nothing here imports torch.

Block string grammar (a superset of the TF EfficientNet and timm strings)::

    block   := [type "_"] token ("_" token)*
    type    := "ds" | "ir" | "er" | "cn"      depthwise-separable | MBConv | Fused-MBConv | conv-norm-act
                                            (default "ir"; the TF strings have no type)
    token   := "r" INT        repeats                       (required)
             | "k" INT        kernel size, odd              (required)
             | "s" DIGITS     stride; TF pairs "s11"/"s22" are accepted when all digits agree (required)
             | "e" NUM        expansion ratio t >= 1        (default 1)
             | "i" INT        input channels (TF strings carry them; the builder threads them anyway)
             | "o" INT | "c" INT   output channels          (required)
             | "m" INT        explicit expanded (mid) channels, e.g. after pruning
             | "se" NUM       squeeze-excite ratio in (0, 1] (absent: no SE)
             | "n" ACT        activation override: re relu, r6 relu6, sw swish, hs hard_swish, ge gelu, id identity
             | "noskip"       no residual even when shapes allow (ds/ir/er)
             | "skip"         residual when shapes allow (cn, which has none by default)

Example: ``r1_k3_s11_e1_i32_o16_se0.25`` (TF) and ``ir_r2_k5_s2_e6_c40_se0.25`` (timm style).
``BlockSpec.to_string()`` emits the canonical mbconv form; ``to_string(style="tf")`` emits the TF form when the
input channels are known. Both round-trip exactly through ``BlockSpec.from_string``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .layers.layout import SE_POSITIONS, Step, block_layout, se_channels

BLOCK_TYPES = ("ds", "ir", "er", "cn")
ACTIVATIONS = ("relu", "relu6", "swish", "hard_swish", "gelu", "identity", "sigmoid", "hard_sigmoid")
ACT_CODES = {"re": "relu", "r6": "relu6", "sw": "swish", "hs": "hard_swish", "ge": "gelu", "id": "identity",
             "sg": "sigmoid", "hsg": "hard_sigmoid"}
_ACT_TO_CODE = {v: k for k, v in ACT_CODES.items()}
SE_BASES = ("in", "mid")
SE_GATES = ("sigmoid", "hard_sigmoid")
PADDINGS = ("symmetric", "same")
HEAD_TYPES = ("conv", "pool_conv", "none")
HEAD_SCALINGS = ("scale", "fixed", "max")
DEPTH_ROUNDINGS = ("ceil", "round")


class SpecError(ValueError):
    """A spec field has a bad value; the message names the field and the value."""


def _bad(field_name: str, value: Any, why: str) -> SpecError:
    """One error format for every validation failure: the field, the value, and what was expected."""
    return SpecError(f"invalid {field_name}={value!r}: {why}")


def _fmt_num(x: float) -> str:
    """Shortest exact text for a ratio: 6.0 -> '6', 0.25 -> '0.25', 3.67 -> '3.67'."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class BlockSpec:
    """One block definition, repeated `repeats` times (only the first repeat has the stride and channel change).

    Fields follow the paper's vocabulary: expansion ratio t (`expand`), kernel k, stride s, output channels,
    squeeze-excite ratio (0 means no SE). `in_chs` is optional: the builder threads channels from block to
    block; TF strings state it and it round-trips. `mid_chs` fixes the expanded width (pruned nets).
    `skip=None` means the type's default (residual for ds/ir/er when shapes allow, none for cn).
    """

    block: str = "ir"
    repeats: int = 1
    kernel: int = 3
    stride: int = 1
    expand: float = 1.0
    out_chs: int = 16
    in_chs: int | None = None
    mid_chs: int | None = None
    se_ratio: float = 0.0
    act: str | None = None
    skip: bool | None = None

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise _bad("block", self.block, f"expected one of {BLOCK_TYPES}")
        _check_int("repeats", self.repeats, 1)
        _check_int("kernel", self.kernel, 1)
        if self.kernel % 2 == 0:
            raise _bad("kernel", self.kernel, "must be odd (even kernels have no centred 'same' padding)")
        _check_int("stride", self.stride, 1)
        if (not isinstance(self.expand, (int, float)) or isinstance(self.expand, bool)
                or not math.isfinite(self.expand) or not self.expand >= 1):
            raise _bad("expand", self.expand, "expansion ratio must be a number >= 1")
        if self.block in ("ds", "cn") and self.expand != 1:
            raise _bad("expand", self.expand, f"block type {self.block!r} has no expansion; use 1")
        _check_int("out_chs", self.out_chs, 1)
        if self.in_chs is not None:
            _check_int("in_chs", self.in_chs, 1)
        if self.mid_chs is not None:
            _check_int("mid_chs", self.mid_chs, 1)
        if (not isinstance(self.se_ratio, (int, float)) or isinstance(self.se_ratio, bool)
                or not (0 <= self.se_ratio <= 1)):
            raise _bad("se_ratio", self.se_ratio, "must be in (0, 1], or 0 for no squeeze-excite")
        if self.se_ratio and self.block == "cn":
            raise _bad("se_ratio", self.se_ratio, "block type 'cn' has no squeeze-excite")
        if self.act is not None and self.act not in ACTIVATIONS:
            raise _bad("act", self.act, f"expected one of {ACTIVATIONS}")
        if self.skip is None:
            object.__setattr__(self, "skip", self.block != "cn")
        object.__setattr__(self, "expand", float(self.expand))
        object.__setattr__(self, "se_ratio", float(self.se_ratio))

    @property
    def has_se(self) -> bool:
        return self.se_ratio > 0

    @classmethod
    def from_string(cls, text: str) -> BlockSpec:
        """Parse a compact block string (grammar in the module docstring); errors name the bad token."""
        if not isinstance(text, str) or not text.strip():
            raise _bad("block_string", text, "empty block string")
        parts = text.strip().split("_")
        kw: dict[str, Any] = {}
        if parts[0] in BLOCK_TYPES:
            kw["block"] = parts.pop(0)
        for tok in parts:
            m = re.fullmatch(r"(se|noskip|skip|[rkseiocmn])(.*)", tok)
            if not m:
                raise _bad("block_string", text, f"unknown token {tok!r}")
            key, val = m.groups()
            try:
                if key == "noskip" and not val:
                    kw["skip"] = False
                elif key == "skip" and not val:
                    kw["skip"] = True
                elif key == "r":
                    kw["repeats"] = int(val)
                elif key == "k":
                    kw["kernel"] = int(val)
                elif key == "s":
                    if not val.isdigit() or len(set(val)) != 1:
                        raise _bad("stride", val, f"in {text!r}: expected digits that agree, e.g. s2 or s22")
                    kw["stride"] = int(val[0])
                elif key == "e":
                    kw["expand"] = float(val)
                elif key == "i":
                    kw["in_chs"] = int(val)
                elif key in ("o", "c"):
                    kw["out_chs"] = int(val)
                elif key == "m":
                    kw["mid_chs"] = int(val)
                elif key == "se":
                    kw["se_ratio"] = float(val)
                elif key == "n":
                    if val not in ACT_CODES:
                        raise _bad("act", val, f"in {text!r}: expected one of {sorted(ACT_CODES)}")
                    kw["act"] = ACT_CODES[val]
                else:
                    raise _bad("block_string", text, f"unknown token {tok!r}")
            except SpecError:
                raise
            except ValueError:
                raise _bad("block_string", text, f"token {tok!r} has a bad number") from None
        for req, name in (("repeats", "r"), ("kernel", "k"), ("stride", "s"), ("out_chs", "o/c")):
            if req not in kw:
                raise _bad("block_string", text, f"missing required token {name!r}")
        return cls(**kw)

    def to_string(self, style: str = "mbconv") -> str:
        """Emit the compact string. style='mbconv' (typed, timm-like) or 'tf' (TF EfficientNet form)."""
        if style == "tf":
            if self.in_chs is None or self.block != "ir":
                raise _bad("style", style, "the TF form needs an 'ir' block with in_chs set")
            s = f"r{self.repeats}_k{self.kernel}_s{self.stride}{self.stride}_e{_fmt_num(self.expand)}"
            s += f"_i{self.in_chs}_o{self.out_chs}"
            if self.mid_chs is not None:
                s += f"_m{self.mid_chs}"
            if self.has_se:
                s += f"_se{_fmt_num(self.se_ratio)}"
        elif style == "mbconv":
            s = f"{self.block}_r{self.repeats}_k{self.kernel}_s{self.stride}"
            if self.block in ("ir", "er"):
                s += f"_e{_fmt_num(self.expand)}"
            if self.in_chs is not None:
                s += f"_i{self.in_chs}"
            s += f"_c{self.out_chs}"
            if self.mid_chs is not None:
                s += f"_m{self.mid_chs}"
            if self.has_se:
                s += f"_se{_fmt_num(self.se_ratio)}"
        else:
            raise _bad("style", style, "expected 'mbconv' or 'tf'")
        if self.act is not None:
            s += f"_n{_ACT_TO_CODE[self.act]}"
        default_skip = self.block != "cn"
        if self.skip != default_skip:
            s += "_skip" if self.skip else "_noskip"
        return s


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round `v` to the nearest multiple of `divisor`, never below `min_value` (default: divisor) and never
    below `round_limit` of `v` (TF `round_filters`, timm `make_divisible`)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def _check_int(name: str, value: Any, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise _bad(name, value, f"must be an integer >= {lo}")


@dataclass(frozen=True)
class StageSpec:
    """A stage: block definitions that run at one resolution (its first block may downsample)."""

    blocks: tuple[BlockSpec, ...]

    def __post_init__(self) -> None:
        blocks = tuple(BlockSpec.from_string(b) if isinstance(b, str) else b for b in self.blocks)
        if not blocks:
            raise _bad("blocks", self.blocks, "a stage needs at least one block")
        object.__setattr__(self, "blocks", blocks)

    @property
    def repeats(self) -> int:
        return sum(b.repeats for b in self.blocks)

    @property
    def out_chs(self) -> int:
        return self.blocks[-1].out_chs

    @property
    def stride(self) -> int:
        s = 1
        for b in self.blocks:
            s *= b.stride
        return s


@dataclass(frozen=True)
class NetSpec:
    """A whole network: stem, stages, head, classifier, and the conventions that make it exact.

    Conventions that differ between TF, timm and torchvision are explicit fields (docs/architecture.md):
    `se_base` ('in': squeeze width from block input channels, TF EfficientNet; 'mid': from expanded channels,
    MobileNetV3), `se_divisor` (1: floor as TF; 8: round to multiple of 8 as MobileNetV3), `padding`
    ('symmetric' (k-1)//2 or TF 'same'), BN eps/momentum in PyTorch convention (momentum 0.01 == TF 0.99).
    The scaling policy (how `mbconv.scaling` grows this spec) lives here too, so every family scales by its
    own published rule.
    """

    stages: tuple[StageSpec, ...]
    name: str = "custom"
    dims: int = 2
    in_chans: int = 3
    num_classes: int = 1000
    stem_chs: int = 32
    stem_kernel: int = 3
    stem_stride: int = 2
    head_chs: int = 1280
    head_type: str = "conv"
    act: str = "swish"
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1
    se_base: str = "in"
    se_divisor: int = 1
    se_act: str | None = None
    se_gate: str = "sigmoid"
    se_position: str = "after_dw"
    drop_rate: float = 0.2
    drop_path_rate: float = 0.0
    padding: str = "symmetric"
    resolution: int = 224
    # scaling policy
    channel_divisor: int = 8
    round_limit: float = 0.9
    fix_stem: bool = False
    head_scaling: str = "scale"
    fix_first_last_depth: bool = False
    depth_rounding: str = "ceil"
    width_mult: float = 1.0
    depth_mult: float = 1.0
    extra: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        stages = tuple(
            s if isinstance(s, StageSpec) else StageSpec(tuple(s) if not isinstance(s, str) else (s,))
            for s in self.stages
        )
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise _bad("stages", self.stages, "a network needs at least one stage")
        if not isinstance(self.dims, int) or isinstance(self.dims, bool) or self.dims not in (1, 2, 3):
            raise _bad("dims", self.dims, "expected 1, 2 or 3")
        for name in ("in_chans", "num_classes", "stem_chs", "stem_kernel", "stem_stride", "resolution",
                     "channel_divisor", "se_divisor"):
            _check_int(name, getattr(self, name), 1)
        _check_int("head_chs", self.head_chs, 0)
        if self.stem_kernel % 2 == 0:
            raise _bad("stem_kernel", self.stem_kernel, "must be odd")
        for name, allowed in (("act", ACTIVATIONS), ("se_base", SE_BASES), ("se_gate", SE_GATES),
                              ("se_position", SE_POSITIONS), ("padding", PADDINGS), ("head_type", HEAD_TYPES),
                              ("head_scaling", HEAD_SCALINGS), ("depth_rounding", DEPTH_ROUNDINGS)):
            if getattr(self, name) not in allowed:
                raise _bad(name, getattr(self, name), f"expected one of {allowed}")
        if self.se_act is not None and self.se_act not in ACTIVATIONS:
            raise _bad("se_act", self.se_act, f"expected one of {ACTIVATIONS}")
        if self.head_type == "none" and self.head_chs:
            raise _bad("head_chs", self.head_chs, "must be 0 when head_type='none'")
        if self.head_type != "none" and not self.head_chs:
            raise _bad("head_chs", self.head_chs, f"must be > 0 for head_type={self.head_type!r}")
        for name in ("drop_rate", "drop_path_rate"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not (0 <= v < 1):
                raise _bad(name, v, "must be in [0, 1)")
        if not (self.norm_eps > 0):
            raise _bad("norm_eps", self.norm_eps, "must be > 0")
        if not (0 <= self.norm_momentum <= 1):
            raise _bad("norm_momentum", self.norm_momentum, "must be in [0, 1] (PyTorch convention)")
        if not (0 <= self.round_limit <= 1):
            raise _bad("round_limit", self.round_limit, "must be in [0, 1]")
        self._check_channels()

    def _check_channels(self) -> None:
        """Stated in_chs must agree with the channels threaded from the previous block."""
        chs = self.stem_chs
        for si, stage in enumerate(self.stages):
            for bi, b in enumerate(stage.blocks):
                if b.in_chs is not None and b.in_chs != chs:
                    raise _bad(f"stages[{si}].blocks[{bi}].in_chs", b.in_chs,
                               f"the previous layer gives {chs} channels")
                chs = b.out_chs

    # -- derived views -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.stages)

    @property
    def features_chs(self) -> int:
        """Channels entering the classifier."""
        return self.head_chs if self.head_type != "none" else self.stages[-1].out_chs

    def block_strings(self, style: str = "mbconv") -> list[list[str]]:
        return [[b.to_string(style) for b in s.blocks] for s in self.stages]

    def with_(self, **changes: Any) -> NetSpec:
        """A copy with fields replaced (validated again)."""
        return replace(self, **changes)

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; stages as lists of block strings (exact round trip with `from_dict`)."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "stages":
                v = self.block_strings()
            elif f.name == "extra":
                v = [list(p) for p in v]
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetSpec:
        """Inverse of `to_dict`; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise _bad("spec keys", unknown, f"unknown; known keys are {sorted(known)}")
        kw = dict(d)
        if "stages" not in kw:
            raise _bad("stages", None, "missing")
        kw["stages"] = tuple(StageSpec(tuple(BlockSpec.from_string(b) for b in s)) for s in kw["stages"])
        if "extra" in kw:
            kw["extra"] = tuple(tuple(p) for p in kw["extra"])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> NetSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise _bad("spec json", text[:60], f"not valid JSON ({e.msg})") from None
        return cls.from_dict(d)


def parse_arch(arch: str | list[list[str]] | list[str]) -> tuple[StageSpec, ...]:
    """Stages from block strings: a list of lists (one inner list per stage), a flat list (one stage each),
    or one string with stages separated by ';' and blocks within a stage by ','."""
    if isinstance(arch, str):
        text = arch
        arch = [[b for b in stage.split(",") if b.strip()] for stage in text.split(";") if stage.strip()]
        if not all(arch):  # a stage of separators only (",,"): say which string, not "a stage needs a block"
            raise ValueError(f"invalid block string {text!r}: a stage between ';' has no blocks")
    stages = []
    for s in arch:
        s = [s] if isinstance(s, str) else list(s)
        stages.append(StageSpec(tuple(BlockSpec.from_string(b.strip()) for b in s)))
    return tuple(stages)


def spec_replace_blocks(spec: NetSpec, fn: Any) -> NetSpec:
    """Apply `fn(stage_index, block_index, BlockSpec) -> BlockSpec` to every block definition."""
    stages = tuple(
        StageSpec(tuple(fn(si, bi, b) for bi, b in enumerate(s.blocks))) for si, s in enumerate(spec.stages)
    )
    return dataclasses.replace(spec, stages=stages)


@dataclass(frozen=True)
class BlockPlan:
    """One concrete block instance: what the builder builds and what the cost model counts.

    Both `mbconv.net` and `mbconv.cost` read this plan, so the module and the analytic cost cannot disagree.
    """

    index: int  # global block index (drop-path schedule)
    stage: int
    block_def: int  # index of the BlockSpec inside its stage
    repeat: int
    block: str
    in_chs: int
    mid_chs: int
    out_chs: int
    kernel: int
    stride: int
    se_chs: int  # squeeze width (0: no SE)
    se_on: int  # channels the SE gates
    act: str
    has_skip: bool
    drop_path: float

    has_expand: bool  # ir/er with t > 1 (or an explicit mid width); t = 1 has no expansion conv (TF)


def plan_blocks(spec: NetSpec) -> list[BlockPlan]:
    """Expand repeats and thread channels: the list of concrete blocks of `spec`, in forward order."""
    plans: list[BlockPlan] = []
    chs = spec.stem_chs
    total = spec.num_blocks
    idx = 0
    for si, stage in enumerate(spec.stages):
        for di, b in enumerate(stage.blocks):
            for r in range(b.repeats):
                stride = b.stride if r == 0 else 1
                in_chs = chs
                # Fused-MBConv always has its k x k expansion conv (timm's EdgeResidual); an MBConv with t = 1
                # has none (TF's MBConv1); ds and cn never do.
                has_expand = b.block == "er" or (b.block == "ir" and (b.expand != 1 or b.mid_chs is not None))
                if not has_expand:
                    mid = in_chs
                elif b.mid_chs is not None:
                    mid = b.mid_chs
                elif b.expand == 1:
                    mid = in_chs
                else:
                    mid = make_divisible(in_chs * b.expand, spec.channel_divisor)
                se_chs = se_on = 0
                if b.has_se:
                    se_on = se_channels(b.block, in_chs, mid, spec.se_position)
                    base = in_chs if spec.se_base == "in" else se_on
                    if spec.se_divisor == 1:
                        se_chs = max(1, int(base * b.se_ratio))
                    else:
                        se_chs = make_divisible(base * b.se_ratio, spec.se_divisor)
                plans.append(BlockPlan(
                    index=idx, stage=si, block_def=di, repeat=r, block=b.block, in_chs=in_chs, mid_chs=mid,
                    out_chs=b.out_chs, kernel=b.kernel, stride=stride, se_chs=se_chs, se_on=se_on,
                    act=b.act or spec.act, has_skip=bool(b.skip) and stride == 1 and in_chs == b.out_chs,
                    drop_path=spec.drop_path_rate * idx / total, has_expand=has_expand,
                ))
                chs = b.out_chs
                idx += 1
    return plans


def plan_layout(p: BlockPlan, spec: NetSpec) -> tuple[Step, ...]:
    """The named steps of planned block `p` in forward order (`mbconv.layers.layout`): what the builder builds,
    the cost model counts and the analysis tools walk."""
    return block_layout(p.block, p.in_chs, p.out_chs, p.mid_chs, p.kernel, p.stride, p.act, p.has_expand,
                        p.se_chs, spec.se_act, spec.se_gate, spec.se_position)


def feature_levels(spec: NetSpec) -> list[dict[str, int]]:
    """The last stage at each reduction level (the multi-scale feature maps): stage index, channels, total
    stride. Stages that do not downsample share their level with the stage before them."""
    info: list[dict[str, int]] = []
    red = spec.stem_stride
    for i, stage in enumerate(spec.stages):
        red *= stage.stride
        entry = dict(stage=i, channels=stage.out_chs, reduction=red)
        if info and info[-1]["reduction"] == red:
            info[-1] = entry
        else:
            info.append(entry)
    return info
