"""Load another library's weights into an `MBConvNet`: one entry point for every scheme, with errors that name the
keys, and the structural match that tells which of the other library's models a state dict holds.

`load_weights(model, source)` reads the source (model object, state dict, .pth/.pt/.bin with weights_only=True,
.safetensors), recognises its scheme from the keys, renames the keys by the model's structure (the scheme's key
map from the block plan and layouts) and loads them. Everything wrong is reported in one ValueError: missing and
unexpected keys (a few by name, in both vocabularies, then a count) and shape mismatches. When the weights are a
known model of that library (a twin), the model's conventions must be the twin's too (padding, BN eps,
activations), because the keys cannot show them: loading TF-padded weights into a symmetric-padding model would
run, and be quietly wrong.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from ..spec import NetSpec
from .keymap import KeyMap, Scheme, Twin
from .schemes import SCHEMES, detect_scheme, get_scheme, same_structure, twin_spec
from .sources import WeightSource, read_state_dict

if TYPE_CHECKING:
    from ..net import MBConvNet

__all__ = ["io_sizes", "load_state", "load_timm_weights", "load_weights", "match_twins", "resolve_scheme",
           "verify_conventions"]

SHOWN = 5  # names listed per kind of problem before "... and N more"


def resolve_scheme(sd: dict[str, torch.Tensor], scheme: str | None, origin: str) -> tuple[Scheme, str]:
    """The (scheme, variant) of a state dict: detected from its keys, or the named scheme (whose keys must fit)."""
    if scheme is None:
        found = detect_scheme(sd)
        if found is None:
            first = ", ".join(repr(k) for k in list(sd)[:3])
            raise ValueError(f"cannot tell which library the weights in {origin} come from: keys ({first}, ...) "
                             f"fit none of {sorted(SCHEMES)}")
        return found
    s = get_scheme(scheme)
    variant = s.detect(set(sd))
    if variant is None:
        first = ", ".join(repr(k) for k in list(sd)[:3])
        raise ValueError(f"the weights in {origin} are not {s.name} weights: keys ({first}, ...)")
    return s, variant


def _listing(kind: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:SHOWN])
    more = f"\n    ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{kind} ({len(items)}):\n    {shown}{more}"


def _twin_of(scheme: Scheme, spec: NetSpec) -> Twin | None:
    matches = [t for t in scheme.twins if same_structure(twin_spec(t), spec)]
    return matches[0] if len(matches) == 1 else None


def verify_conventions(scheme: Scheme, spec: NetSpec, origin: str) -> None:
    """ValueError when `spec` has the weights' structure but not their conventions (padding, BN eps, ...)."""
    twin = _twin_of(scheme, spec)
    if twin is None:
        return
    want = twin_spec(twin)
    diff = [f for f in scheme.conventions if getattr(spec, f) != getattr(want, f)]
    if diff:
        theirs = ", ".join(f"{f}={getattr(want, f)!r}" for f in diff)
        ours = ", ".join(f"{f}={getattr(spec, f)!r}" for f in diff)
        over = ", ".join(f"{k}={v!r}" for k, v in twin.overrides.items())
        raise ValueError(f"{origin} holds {scheme.name} {twin.name} weights, computed with {theirs}, but "
                         f"{spec.name!r} has {ours}: build the model as {twin.zoo}" + (f" with {over}" if over else "")
                         + " (mbconv.compat.twin_spec), or pass check_conventions=False to load anyway")


def load_weights(model: MBConvNet, source: WeightSource, strict: bool = True, scheme: str | None = None,
                 check_conventions: bool = True) -> MBConvNet:
    """Load weights from another implementation (or ours) into `model`, in place, and return it.

    `source`: a model object (timm, torchvision, efficientnet_pytorch, mbconv), a state dict, or a file path
    (.pth/.pt/.bin read with `weights_only=True`, a dict wrapped in 'state_dict'/'model' is unwrapped;
    .safetensors). `scheme`: 'timm', 'torchvision', 'efficientnet_pytorch' or 'mbconv'; detected from the keys
    when None. `strict=False` tolerates missing/unexpected keys, never shape mismatches. `check_conventions`:
    refuse weights of a known model of the other library whose padding/BN eps/activations differ from the
    model's (see `mbconv.compat.twin_spec` for the spec that matches). Any problem raises one ValueError and
    leaves the model as it was.
    """
    sd, origin = read_state_dict(source)
    sch, variant = resolve_scheme(sd, scheme, origin)
    return load_state(model, sch.torch_form(sd), origin, sch, variant, strict, check_conventions)


def load_state(model: MBConvNet, sd: dict[str, torch.Tensor], origin: str, sch: Scheme, variant: str,
               strict: bool = True, check_conventions: bool = True) -> MBConvNet:
    """`load_weights` for a state dict already read (`origin` names it in messages) of a known scheme, in torch's
    form (`Scheme.torch_form`)."""
    spec: NetSpec = model.spec
    km = sch.key_map(spec, variant)
    converted = km.to_ours(sd)
    source_name = dict(zip(converted, sd))  # `remap` keeps order, one to one
    target = model.state_dict()
    where = "" if sch.name == "mbconv" else f" ({sch.name}: {{}})"

    missing = [k + where.format(km.their_key(k)) for k in target if k not in converted]
    unexpected = [k if source_name[k] == k else f"{source_name[k]} (ours: {k})" for k in converted if k not in target]
    mismatched = [f"{k}: ours {tuple(target[k].shape)} vs source {tuple(v.shape)}" + where.format(source_name[k])
                  for k, v in converted.items() if k in target and v.shape != target[k].shape]
    if not strict:
        missing, unexpected = [], []
    problems = [_listing(kind, items) for kind, items in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]
    if problems:
        # Counts first: a wrong architecture gives hundreds of names, and the summary says so at a glance.
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape mismatches"
        head = f"cannot load {sch.name} weights from {origin} into {spec.name!r} ({counts}):"
        raise ValueError(head + "\n  " + "\n  ".join(problems))
    if check_conventions:
        verify_conventions(sch, spec, origin)
    model.load_state_dict({k: v for k, v in converted.items() if k in target}, strict=strict)
    return model


def load_timm_weights(model: MBConvNet, source: WeightSource, strict: bool = True) -> MBConvNet:
    """`load_weights` for timm weights (the scheme is not guessed: the keys must be timm's)."""
    return load_weights(model, source, strict=strict, scheme="timm")


@functools.lru_cache(maxsize=64)
def _shapes(spec: NetSpec) -> dict[str, tuple[int, ...]]:
    from ..net import MBConvNet

    with torch.device("meta"):  # no memory, no init: a B7 takes ~0.1 s
        sd = MBConvNet(spec, init="torch").state_dict()
    return {k: tuple(v.shape) for k, v in sd.items()}


def io_sizes(sd: dict[str, torch.Tensor], km: KeyMap) -> dict[str, int]:
    """num_classes and in_chans of the weights (from the classifier and stem conv shapes), where present."""
    out = {}
    names = {m: km.modules.get(m, m) for m in ("classifier", "stem.conv")}  # the mbconv scheme maps nothing
    cls, stem = sd.get(f"{names['classifier']}.weight"), sd.get(f"{names['stem.conv']}.weight")
    if cls is not None and cls.ndim == 2:
        out["num_classes"] = int(cls.shape[0])
    if stem is not None and stem.ndim >= 3:
        out["in_chans"] = int(stem.shape[1])
    return out


def match_twins(sd: dict[str, torch.Tensor], scheme: Scheme, variant: str) -> list[tuple[Twin, NetSpec]]:
    """The scheme's twins whose keys and shapes equal the state dict's (in torch's form, `Scheme.torch_form`)
    exactly, each with its spec (num_classes and in_chans taken from the weights)."""
    modules = {k.rpartition(".")[0] for k in sd}
    out = []
    for twin in scheme.twins:
        spec = twin_spec(twin)
        try:
            km = scheme.key_map(spec, variant)
        except ValueError:  # a layout this variant cannot hold
            continue
        if set(km.modules.values()) != modules:  # cheap: depth and block types
            continue
        spec = spec.with_(**io_sizes(sd, km))
        converted = km.to_ours(sd)
        want = _shapes(spec)
        if converted.keys() == want.keys() and all(tuple(v.shape) == want[k] for k, v in converted.items()):
            out.append((twin, spec))
    return out
