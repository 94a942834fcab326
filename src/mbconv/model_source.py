"""The model a command works on: built from a zoo NAME (or block strings) or loaded from a trained run directory.

One builder for every sub-command, with one set of overrides (`ModelOverrides`). Overrides change the
architecture, so they apply to a NAME only: a trained run's architecture is fixed by its weights, and asking to
change it is an error rather than silently ignored. `run_dataset` gives a run's own data, preprocessed as in
training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .net import MBConvNet
from .spec import NetSpec

__all__ = ["ModelOverrides", "ModelSource", "spec_from_name", "check_size", "check_run", "model_from_source",
           "run_dataset", "MAX_PARAMS"]

SE_POSITIONS = ("after_dw", "before_dw")
MAX_PARAMS = 2_000_000_000  # 8 GB of fp32 weights: a larger spec is a typo (c99999...), not a model to build


@dataclass(frozen=True)
class ModelOverrides:
    """Changes to a named spec before it is built; None keeps the spec's own value.

    `num_classes`, `in_chans`: classifier outputs and input channels; `dims`: 1, 2 or 3 spatial dimensions;
    `se_position`: 'after_dw' (EfficientNet) or 'before_dw'; `width_mult`: channel multiplier (> 0) applied with
    the spec's own rounding rules.
    """

    num_classes: int | None = None
    in_chans: int | None = None
    dims: int | None = None
    se_position: str | None = None
    width_mult: float | None = None

    def __post_init__(self) -> None:
        for key in ("num_classes", "in_chans"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"invalid {key}={v!r}: must be an integer >= 1")
        if self.dims is not None and self.dims not in (1, 2, 3):
            raise ValueError(f"invalid dims={self.dims!r}: expected 1, 2 or 3")
        if self.se_position is not None and self.se_position not in SE_POSITIONS:
            raise ValueError(f"invalid se_position={self.se_position!r}: expected one of {SE_POSITIONS}")
        w = self.width_mult
        if w is not None and not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise ValueError(f"invalid width_mult={w!r}: must be a finite number > 0")

    def given(self) -> dict[str, Any]:
        """The overrides that are set, as `zoo.get_spec` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass
class ModelSource:
    """A model in eval mode with where it came from.

    `resolution`: the input size to use (the one asked for, else the run's training resolution, else the spec's);
    `description`: the spec name or the checkpoint path, for messages; `run`: the run's metadata (its "net" and
    "data" records) and `checkpoint`: the checkpoint directory, both None for a model built from a NAME.
    """

    model: MBConvNet
    resolution: int
    description: str
    run: dict[str, Any] | None = None
    checkpoint: Path | None = None

    @property
    def spec(self) -> NetSpec:
        """The model's network spec."""
        return self.model.spec


def spec_from_name(name: str, overrides: ModelOverrides | None = None) -> NetSpec:
    """The spec of a zoo name (1-D/3-D families included) or of block strings, with the overrides applied."""
    from .zoo import get_spec

    return get_spec(name, **(overrides or ModelOverrides()).given())


def check_size(spec: NetSpec) -> NetSpec:
    """`spec` unchanged if its weights fit in `MAX_PARAMS`; otherwise a ValueError naming it (before torch tries
    to allocate them)."""
    from .cost import spec_cost

    n = spec_cost(spec).params
    if n > MAX_PARAMS:
        raise ValueError(f"model {spec.name!r} has {n:.3g} parameters, more than the {MAX_PARAMS:.0e} mbconv builds")
    return spec


def check_run(model: MBConvNet, run: dict[str, Any], where: str) -> None:
    """ValueError when a run's data record does not describe its network's input and output (a corrupt or
    hand-edited meta.json)."""
    d = run.get("data")
    if d is None:
        return
    if not isinstance(d, dict):
        raise ValueError(f"{where}: the data record in meta.json is {type(d).__name__}, not a mapping")
    for key in ("dims", "in_chans"):
        if key in d and d[key] != getattr(model.spec, key):
            raise ValueError(f"{where}: its data record has {key}={d[key]!r} but the network takes "
                             f"{key}={getattr(model.spec, key)}")
    classes = d.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != model.spec.num_classes):
        raise ValueError(f"{where}: its data record names {len(classes) if isinstance(classes, list) else classes!r}"
                         f" classes but the network has {model.spec.num_classes} outputs")
    res = d.get("resolution")
    if res is not None and (not isinstance(res, int) or res < 1):
        raise ValueError(f"{where}: its data record has resolution={res!r}; expected an integer >= 1")


def model_from_source(name: str | None = None, checkpoint: str | Path | None = None,
                      overrides: ModelOverrides | None = None, resolution: int | None = None,
                      seed: int | None = None) -> ModelSource:
    """Build the model of a zoo NAME (fresh weights; seeded with `seed` when given) or load a trained run
    (`checkpoint`: a run or checkpoint directory); exactly one of the two. ValueError / FileNotFoundError name
    the bad input."""
    if bool(name) == bool(checkpoint):
        raise ValueError("give a model NAME or --checkpoint DIR (exactly one)")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"invalid resolution={resolution!r}: must be an integer >= 1")
    overrides = overrides or ModelOverrides()
    if checkpoint:
        given = overrides.given()
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"{flags} change(s) the architecture of a model NAME; a trained run ({checkpoint}) "
                             "keeps its own")
        from .workflow import load_run

        model, run, ck = load_run(checkpoint)
        check_run(model, run, str(ck))
        res = resolution or (run.get("data") or {}).get("resolution") or model.spec.resolution
        return ModelSource(model.eval(), int(res), str(ck), run, Path(ck))
    spec = check_size(spec_from_name(str(name), overrides))
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    return ModelSource(MBConvNet(spec).eval(), resolution or spec.resolution, spec.name)


def run_dataset(run: dict[str, Any], name: str | None = None, split: str = "test", augment: bool = False,
                seed: int = 0, resolution: int | None = None) -> Any:
    """A trained run's own dataset (or the dataset `name`) at the run's resolution (or `resolution`),
    preprocessed as in training; ValueError if the run names none or the data cannot feed the model."""
    from .data import load_dataset

    d = run.get("data") or {}
    name = name or d.get("name")
    if not name:
        raise ValueError("the checkpoint names no dataset: pass --data")
    from .workflow import dataset_options

    ds = load_dataset(name, split, resolution=resolution or d.get("resolution"), augment=augment, seed=seed,
                      **dataset_options(d))  # a channel conversion or fixed normalisation the run trained with
    info = ds.info
    for key in ("dims", "in_chans"):
        if key in d and getattr(info, key) != d[key]:
            raise ValueError(f"dataset {name!r} has {key}={getattr(info, key)} but the model was trained with "
                             f"{key}={d[key]}")
    return ds
