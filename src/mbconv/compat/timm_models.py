"""Our zoo model with the weights of a timm model (created by name, or given)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from .loading import load_timm_weights

if TYPE_CHECKING:
    from ..net import MBConvNet

__all__ = ["from_timm"]


def from_timm(name_or_model: str | nn.Module, pretrained: bool = True, **timm_kwargs: Any) -> MBConvNet:
    """Our zoo model with the weights of the same-named timm model.

    `name_or_model` is a timm model name (created with `timm.create_model(name, pretrained=pretrained,
    **timm_kwargs)`; a pretrained tag such as 'efficientnet_b0.ra_in1k' is allowed) or a timm model object.
    Our model gets the timm model's num_classes, in_chans and drop_rate, and its train/eval mode.
    """
    from ..zoo import create_model

    if isinstance(name_or_model, str):
        import timm

        tm = timm.create_model(name_or_model, pretrained=pretrained, **timm_kwargs)
        fallback = name_or_model.split(".")[0]
    elif isinstance(name_or_model, nn.Module):
        if timm_kwargs:
            raise ValueError(f"timm keyword arguments {sorted(timm_kwargs)} apply only when a name is given")
        tm, fallback = name_or_model, type(name_or_model).__name__
    else:
        raise TypeError(f"expected a timm model name or model, not {type(name_or_model).__name__}")
    cfg = getattr(tm, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") or fallback
    num_classes = getattr(tm, "num_classes", 1000)
    if not num_classes:
        raise ValueError(f"timm model {arch!r} has no classifier (num_classes=0); MBConvNet needs one")
    overrides: dict[str, Any] = dict(num_classes=num_classes, in_chans=getattr(tm, "in_chans", 3))
    if isinstance(getattr(tm, "drop_rate", None), float) and 0 <= tm.drop_rate < 1:
        overrides["drop_rate"] = tm.drop_rate
    try:
        model = create_model(arch, **overrides)
    except ValueError as e:
        raise ValueError(f"timm model {arch!r} has no mbconv zoo counterpart: {e}") from e
    load_timm_weights(model, tm)
    return model.train(tm.training)
