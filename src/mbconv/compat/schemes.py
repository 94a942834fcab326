"""The weight-naming schemes mbconv reads, how a state dict's scheme is recognised, and the other libraries'
models that equal our zoo models (twins), with the spec that reproduces each one exactly.

Schemes: 'mbconv' (our own names), 'timm', 'torchvision', 'efficientnet_pytorch', 'keras'. A scheme is recognised from
its keys alone (`detect_scheme`); which model of that library the weights belong to is found by structure
(`mbconv.compat.loading.match_twins`), never from a file name.
"""

from __future__ import annotations

from collections.abc import Collection

from ..spec import NetSpec, plan_blocks
from ..zoo import get_spec
from .efficientnet_pytorch_scheme import EFFICIENTNET_PYTORCH
from .keras_scheme import KERAS
from .keymap import KeyMap, Scheme, Twin
from .timm_scheme import TIMM
from .torchvision_scheme import TORCHVISION

__all__ = ["SCHEMES", "detect_scheme", "find_twin", "get_scheme", "same_structure", "twin_spec"]


def _detect_mbconv(keys: Collection[str]) -> str | None:
    return "" if "stem.conv.weight" in keys and any(k.startswith("stages.") for k in keys) else None


MBCONV = Scheme("mbconv", _detect_mbconv, lambda spec, variant: KeyMap({}), conventions=())

SCHEMES: dict[str, Scheme] = {s.name: s for s in (MBCONV, TIMM, TORCHVISION, EFFICIENTNET_PYTORCH, KERAS)}


def get_scheme(name: str) -> Scheme:
    """A scheme by name; ValueError naming the known ones."""
    if name not in SCHEMES:
        raise ValueError(f"unknown weight scheme {name!r}: expected one of {sorted(SCHEMES)}")
    return SCHEMES[name]


def detect_scheme(keys: Collection[str]) -> tuple[Scheme, str] | None:
    """(scheme, variant) of a state dict's keys, or None when no scheme recognises them."""
    keys = set(keys)
    for scheme in SCHEMES.values():
        variant = scheme.detect(keys)
        if variant is not None:
            return scheme, variant
    return None


def find_twin(scheme: str | Scheme, name: str) -> Twin:
    """The twin named `name` (the other library's model name, e.g. 'mobilenet_v3_large') of a scheme."""
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    for t in s.twins:
        if t.name == name:
            return t
    raise ValueError(f"{s.name} has no model {name!r} with a zoo twin; known: {[t.name for t in s.twins]}")


def twin_spec(twin: Twin, **fields: object) -> NetSpec:
    """The spec that computes exactly what `twin` computes: its zoo entry with its overrides (and `fields`,
    e.g. num_classes, on top)."""
    return get_spec(twin.zoo, **{**twin.overrides, **fields})


def structure(spec: NetSpec) -> tuple:
    """What the weights of `spec` determine (layer types, widths, kernels, strides, SE widths, skips), without the
    conventions they cannot show (padding, BN eps, activations) or the input/output sizes."""
    return (spec.dims, spec.stem_chs, spec.stem_kernel, spec.stem_stride, spec.head_type, spec.head_chs,
            tuple((p.stage, p.block, p.in_chs, p.mid_chs, p.out_chs, p.kernel, p.stride, p.se_chs, p.has_skip,
                   p.has_expand) for p in plan_blocks(spec)))


def same_structure(a: NetSpec, b: NetSpec) -> bool:
    """True when `a` and `b` hold the same weights (they may still differ in conventions)."""
    return structure(a) == structure(b)
