"""How big: width/depth/resolution scaling of a spec (EfficientNet compound scaling and explicit triples).

Rules follow the TF reference (tensorflow/tpu) exactly: channels are rounded to a multiple of 8 and never below
90 % of the target (`round_channels`); repeats are scaled per stage with `ceil` and distributed over the
stage's block definitions last-first (timm's rule, identical to TF for one definition per stage); resolution is
carried in the spec, not applied by the model.
"""

from __future__ import annotations

import dataclasses
import math

from .spec import BlockSpec, NetSpec, StageSpec, make_divisible

__all__ = ["make_divisible", "round_channels", "round_repeats", "scale_stage_repeats", "scale_spec",
           "compound_multipliers", "compound_scale", "DEFAULT_ALPHA", "DEFAULT_BETA", "DEFAULT_GAMMA"]

DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution (Tan & Le 2019)


def round_channels(chs: int, multiplier: float = 1.0, divisor: int = 8, round_limit: float = 0.9) -> int:
    """TF `round_filters`: chs * multiplier rounded to a multiple of `divisor`, >= round_limit of the target."""
    if multiplier <= 0:
        raise ValueError(f"invalid width multiplier={multiplier!r}: must be > 0")
    return make_divisible(chs * multiplier, divisor, round_limit=round_limit)


def round_repeats(repeats: int, multiplier: float = 1.0, rounding: str = "ceil") -> int:
    """TF `round_repeats`: ceil(repeats * multiplier) (or nearest, at least 1, with rounding='round')."""
    if multiplier <= 0:
        raise ValueError(f"invalid depth multiplier={multiplier!r}: must be > 0")
    if rounding == "ceil":
        return int(math.ceil(repeats * multiplier))
    if rounding == "round":
        return max(1, round(repeats * multiplier))
    raise ValueError(f"invalid depth_rounding={rounding!r}: expected 'ceil' or 'round'")


def scale_stage_repeats(repeats: list[int], multiplier: float, rounding: str = "ceil") -> list[int]:
    """Scale a stage's total repeats, then hand them back to its block definitions last-first, so the first
    definition (often the only downsampling one) is the least likely to grow."""
    total = sum(repeats)
    total_scaled = round_repeats(total, multiplier, rounding)
    out = []
    for r in reversed(repeats):
        rs = max(1, round(r / total * total_scaled))
        out.append(rs)
        total -= r
        total_scaled -= rs
    return out[::-1]


def scale_spec(spec: NetSpec, width: float = 1.0, depth: float = 1.0, resolution: int | None = None,
               drop_rate: float | None = None) -> NetSpec:
    """Scale a (base) spec by an explicit (width, depth, resolution) triple using the spec's own policy.

    `width` multiplies channels (stem unless `fix_stem`; head per `head_scaling`), `depth` multiplies repeats
    per stage (first and last stage fixed when `fix_first_last_depth`), `resolution` replaces the input size.
    """
    if not (width > 0 and depth > 0 and math.isfinite(width) and math.isfinite(depth)):
        raise ValueError(f"invalid multipliers width={width!r}, depth={depth!r}: must be finite and > 0")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"invalid resolution={resolution!r}: must be a positive integer")

    def rc(c: int) -> int:
        return round_channels(c, width, spec.channel_divisor, spec.round_limit)

    stem = spec.stem_chs if spec.fix_stem else rc(spec.stem_chs)
    if spec.head_type == "none" or spec.head_scaling == "fixed":
        head = spec.head_chs
    elif spec.head_scaling == "max":
        head = max(spec.head_chs, rc(spec.head_chs))
    else:
        head = rc(spec.head_chs)

    stages = []
    chs = stem
    n = len(spec.stages)
    for si, stage in enumerate(spec.stages):
        fixed = spec.fix_first_last_depth and si in (0, n - 1)
        reps = scale_stage_repeats([b.repeats for b in stage.blocks], 1.0 if fixed else depth,
                                   spec.depth_rounding)
        blocks = []
        for b, r in zip(stage.blocks, reps):
            out = rc(b.out_chs)
            mid = None if b.mid_chs is None else rc(b.mid_chs)
            blocks.append(dataclasses.replace(b, repeats=r, out_chs=out, mid_chs=mid,
                                              in_chs=None if b.in_chs is None else chs))
            chs = out
        stages.append(StageSpec(tuple(blocks)))
    return dataclasses.replace(
        spec, stages=tuple(stages), stem_chs=stem, head_chs=head,
        resolution=spec.resolution if resolution is None else resolution,
        drop_rate=spec.drop_rate if drop_rate is None else drop_rate,
        width_mult=spec.width_mult * width, depth_mult=spec.depth_mult * depth,
    )


def compound_multipliers(phi: float, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                         gamma: float = DEFAULT_GAMMA) -> tuple[float, float, float]:
    """(width, depth, resolution) multipliers beta^phi, alpha^phi, gamma^phi.

    FLOPs grow as (alpha * beta^2 * gamma^2)^phi; the paper picks alpha beta^2 gamma^2 ~ 2.
    """
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"invalid {name}={v!r}: must be a finite number > 0")
    if not math.isfinite(phi):
        raise ValueError(f"invalid phi={phi!r}: must be a finite number")
    try:
        out = beta**phi, alpha**phi, gamma**phi
    except OverflowError:
        out = (math.inf,)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"phi={phi!r} with alpha={alpha!r}, beta={beta!r}, gamma={gamma!r} overflows")
    return out


def compound_scale(spec: NetSpec, phi: float, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                   gamma: float = DEFAULT_GAMMA) -> NetSpec:
    """EfficientNet compound scaling of a base spec by coefficient phi (any real, negative shrinks)."""
    w, d, r = compound_multipliers(phi, alpha, beta, gamma)
    res = max(1, int(round(spec.resolution * r)))
    out = scale_spec(spec, w, d, res)
    return dataclasses.replace(out, name=f"{spec.name}_phi{phi:g}")


def block_spec_in_chs(spec: NetSpec) -> list[list[BlockSpec]]:
    """Blocks with `in_chs` filled in from the threaded channels (for the TF string form)."""
    out, chs = [], spec.stem_chs
    for s in spec.stages:
        row = []
        for b in s.blocks:
            row.append(dataclasses.replace(b, in_chs=chs))
            chs = b.out_chs
        out.append(row)
    return out
