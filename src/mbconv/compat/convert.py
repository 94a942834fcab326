"""Another implementation's weights as an mbconv run directory, so every command that takes `--checkpoint RUN`
works on a pretrained network.

The run holds one checkpoint, `last/` (model.safetensors + meta.json, written by `mbconv.checkpoint`), whose meta
records what a trained run's does, `{"net": spec, "data": {...}}`, plus where the weights came from
(`"source"`). For a pretrained network "data" describes the inputs it expects: the evaluation config
(`data["pretrained"]`: resize, centre crop, interpolation, mean/std), `resolution` = the crop size, `mean`/`std`,
and the class names (ImageNet's for 1000 classes, when torchvision is installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..net import MBConvNet
from ..spec import NetSpec
from ..zoo import get_spec
from .imagenet import imagenet_classes
from .keymap import Scheme, Twin
from .loading import io_sizes, load_state, match_twins, resolve_scheme
from .pretrained import PretrainedConfig, get_pretrained_config
from .sources import WeightSource, read_state_dict

__all__ = ["ConvertedRun", "convert_weights", "pretrained_data_meta"]


@dataclass
class ConvertedRun:
    """What `convert_weights` wrote: the loaded model, the scheme and twin it was recognised as, the evaluation
    config stored with it (None when none is known), and the checkpoint directory."""

    model: MBConvNet
    scheme: str
    twin: Twin | None
    config: PretrainedConfig | None
    checkpoint: Path
    notes: list[str] = field(default_factory=list)


def pretrained_data_meta(spec: NetSpec, cfg: PretrainedConfig | None) -> dict[str, Any]:
    """The "data" record of a converted run: the inputs the network expects (see the module docstring)."""
    classes = imagenet_classes() if spec.num_classes == 1000 else None
    return {"name": "imagenet" if spec.num_classes == 1000 else "pretrained",
            "resolution": cfg.input_size if cfg else spec.resolution,
            "mean": list(cfg.mean) if cfg else None, "std": list(cfg.std) if cfg else None,
            "classes": classes or [str(i) for i in range(spec.num_classes)],
            "dims": spec.dims, "in_chans": spec.in_chans,
            **({"pretrained": cfg.to_dict()} if cfg else {})}


def _choose_spec(sd: dict, sch: Scheme, variant: str, model: str | None, origin: str) -> tuple[NetSpec, Twin | None]:
    matches = match_twins(sd, sch, variant)
    if model is None:
        if len(matches) == 1:
            return matches[0][1], matches[0][0]
        found = f"it fits {[t.name for t, _ in matches]}" if matches else "it is no model with a zoo twin"
        raise ValueError(f"cannot tell which model the {sch.name} weights in {origin} are ({found}): give the zoo "
                         "name (--model NAME)")
    for twin, spec in matches:
        if twin.zoo == model:  # the zoo model, with the conventions these weights were trained with
            return spec, twin
    spec = get_spec(model)
    return spec.with_(**io_sizes(sd, sch.key_map(spec, variant))), None


def convert_weights(source: WeightSource, out: str | Path, model: str | None = None, scheme: str | None = None,
                    pretrained: str | None = None) -> ConvertedRun:
    """Load `source` (see `mbconv.compat.load_weights`) into a zoo model and save it as a run directory `out`.

    `model`: the zoo name (default: recognised from the weights' structure; required for timm and mbconv weights,
    whose structure does not tell e.g. efficientnet_b0 from tf_efficientnet_b0). A model that a twin of the
    weights' library names gets that twin's conventions (e.g. torchvision's BN eps). `pretrained`: the key of the
    evaluation config (default: the twin's, else timm's for the zoo name, else none). num_classes and in_chans
    come from the weights. ValueError on any mismatch, naming it.
    """
    sd, origin = read_state_dict(source)
    sch, variant = resolve_scheme(sd, scheme, origin)
    sd = sch.torch_form(sd)
    spec, twin = _choose_spec(sd, sch, variant, model, origin)
    net = load_state(MBConvNet(spec), sd, origin, sch, variant).eval()
    notes = []
    if pretrained is not None:
        cfg: PretrainedConfig | None = get_pretrained_config(pretrained)
    elif twin is not None and twin.pretrained:
        cfg = get_pretrained_config(twin.pretrained)
    else:
        try:
            cfg = get_pretrained_config(spec.name)
        except ValueError:
            cfg = None
            notes.append(f"no evaluation config known for {spec.name!r}: inputs are resized to "
                         f"{spec.resolution} px and not normalised (pass pretrained=KEY to choose one)")
    if spec.num_classes == 1000 and imagenet_classes() is None:
        notes.append("torchvision is not installed: classes are numbered, not named")
    meta = {"net": spec.to_dict(), "data": pretrained_data_meta(spec, cfg),
            "source": {"scheme": sch.name, "origin": origin, "model": twin.name if twin else None,
                       "overrides": dict(twin.overrides) if twin else {}}}
    from ..checkpoint import save_checkpoint

    ck = save_checkpoint(Path(out) / "last", net, extra={"epoch": 0, "step": 0}, spec=meta, rng=False)
    return ConvertedRun(net, sch.name, twin, cfg, ck, notes)
