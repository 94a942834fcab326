"""The vocabulary of weight import: a key map between our module paths and another library's, the scheme that
builds it from a spec, and the other library's models that equal a zoo model (twins).

A key map works at module level ('stages.1.0.depthwise.bn' -> 'blocks.1.0.bn2'): parameter and buffer names below
a module (weight, bias, running_mean, running_var, num_batches_tracked) are the same on both sides because every
library here uses plain torch Conv/BatchNorm/Linear layers. The one shape difference is a 1x1 conv on our side
that is a Linear layer on theirs (torchvision's MobileNetV3 head): its weight is (out, in, 1, 1) here and
(out, in) there, listed in `KeyMap.linear`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..spec import NetSpec

__all__ = ["KeyMap", "Scheme", "Twin", "remap"]


def remap(state_dict: Mapping[str, Any], modules: Mapping[str, str]) -> dict[str, Any]:
    """Rename keys by their module path; keys under no mapped module keep their name (so a loader can report them
    as unexpected rather than silently dropping them). Two keys landing on one name is a ValueError."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        new = f"{modules[module]}.{leaf}" if module in modules else key
        if new in out:
            raise ValueError(f"key {key!r} maps to {new!r}, which another key already produced")
        out[new] = value
    return out


@dataclass(frozen=True)
class KeyMap:
    """Module paths {ours: theirs} for one spec in one naming scheme; `linear`: our 1x1 convs that are Linear
    layers in the other library."""

    modules: dict[str, str]
    linear: frozenset[str] = frozenset()

    def theirs_to_ours(self) -> dict[str, str]:
        return {t: o for o, t in self.modules.items()}

    def to_ours(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Their state dict under our names (tensors shared, Linear weights viewed as 1x1 convs)."""
        out = remap(state_dict, self.theirs_to_ours())
        for module in self.linear:
            key = f"{module}.weight"
            if key in out and out[key].ndim == 2:
                out[key] = out[key][:, :, None, None]
        return out

    def to_theirs(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict under their names (the inverse of `to_ours`)."""
        sd = dict(state_dict)
        for module in self.linear:
            key = f"{module}.weight"
            if key in sd and sd[key].ndim == 4:
                sd[key] = sd[key].flatten(1)
        return remap(sd, self.modules)

    def their_key(self, our_key: str) -> str:
        """The other library's name of one of our keys (the key itself when no module maps it)."""
        module, _, leaf = our_key.rpartition(".")
        return f"{self.modules[module]}.{leaf}" if module in self.modules else our_key


@dataclass(frozen=True)
class Twin:
    """A model of another library that computes exactly what a zoo model does with `overrides` applied.

    `name`: the other library's model name; `zoo`: our zoo name; `overrides`: NetSpec fields that differ from the
    zoo entry (BN eps/momentum, dropout, stochastic depth); `pretrained`: the key of its evaluation config
    (`mbconv.compat.pretrained`); `note`: the zoo entry and what differs from it, for messages and docs.
    """

    name: str
    zoo: str
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Scheme:
    """A weight-naming scheme: how to recognise its state dicts and how it names the modules of a spec.

    `detect(keys)` returns a variant string ('' when the scheme has one layout) or None when the keys are not
    this scheme's; `key_map(spec, variant)` builds the map; `twins` lists the other library's models by name;
    `prepare` turns a detected state dict into torch's layout and leaf names first (Keras: kernels transposed,
    gamma/beta/moving_* renamed), None when it already is.
    """

    name: str
    detect: Callable[[Collection[str]], str | None]
    key_map: Callable[[NetSpec, str], KeyMap]
    twins: tuple[Twin, ...] = ()
    # Spec fields the weights fix that the keys cannot show (checked against a twin when one matches).
    conventions: tuple[str, ...] = ("padding", "norm_eps", "act", "se_act", "se_gate", "se_position")
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    def torch_form(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict with torch's tensor layouts and leaf names (see `prepare`)."""
        return self.prepare(state_dict) if self.prepare else state_dict
