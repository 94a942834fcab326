"""Fine-tuning from pretrained weights: read them (any source `mbconv convert` accepts), move them into a model
for a new dataset (the classifier is replaced when the class count differs), and freeze parts of the network.

Freeze syntax (`parse_freeze`): comma-separated parts of `MBConvNet`, in any order:

========================= =================================================================================
part                      modules
========================= =================================================================================
``stem``                  the stem conv + BN
``stages``                every stage
``stages.N``              stage N (0-based, as `mbconv info` numbers them)
``stages.A-B``            stages A to B, both included
``head``                  the 1x1 head conv (+ BN) before pooling
``backbone``              stem, every stage and the head: everything but the classifier (a linear probe)
========================= =================================================================================

A frozen part's parameters get ``requires_grad=False`` (the optimizer then holds only the others), and the part
runs in eval mode during training too: its BatchNorm layers normalise with, and keep, their pretrained running
statistics, and its drop path is off. Otherwise a frozen BN would still normalise with each batch's statistics and
overwrite its running statistics with the new data's, so the "frozen" features would change from step to step
and differ between training and evaluation (timm's `freeze` and torchvision's detection backbones swap such BNs
for FrozenBatchNorm2d for the same reason; here a forward pre-hook keeps the modules in eval mode, so the state
dict keeps its keys and every command still loads the run).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .net import MBConvNet

__all__ = ["FREEZE_PARTS", "Pretrained", "file_sha256", "freeze", "parse_freeze", "read_pretrained",
           "transfer_weights"]

FREEZE_PARTS = "stem, stages, stages.N, stages.A-B, head, backbone (= stem,stages,head: all but the classifier)"


def parse_freeze(text: str | None, num_stages: int, has_head: bool = True) -> list[str]:
    """The module names (`stem`, `stages.0`, ..., `head`) a freeze spec names, in forward order; [] for None or
    "". ValueError, one line naming the bad part, for anything else."""
    if not text or not text.strip():
        return []
    names: set[str] = set()
    for raw in text.split(","):
        part = raw.strip()
        m = re.fullmatch(r"stages(?:\.(\d+)(?:-(\d+))?)?", part)
        if part in ("stem", "head", "backbone"):
            if part in ("head", "backbone") and has_head:
                names.add("head")
            elif part == "head":
                raise ValueError("bad --freeze part 'head': this model has no head conv")
            if part in ("stem", "backbone"):
                names.add("stem")
            if part == "backbone":
                names.update(f"stages.{i}" for i in range(num_stages))
        elif m:
            lo = 0 if m.group(1) is None else int(m.group(1))
            hi = num_stages - 1 if m.group(1) is None else int(m.group(2) or lo)
            if lo > hi:
                raise ValueError(f"bad --freeze part {part!r}: the range's first stage is after its last")
            if hi >= num_stages:
                raise ValueError(f"bad --freeze part {part!r}: the model has stages 0-{num_stages - 1}")
            names.update(f"stages.{i}" for i in range(lo, hi + 1))
        else:
            raise ValueError(f"bad --freeze part {part!r}: expected comma-separated {FREEZE_PARTS}")
    order = ["stem", *(f"stages.{i}" for i in range(num_stages)), "head"]
    return [n for n in order if n in names]


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.train(False)  # a frozen part: BN uses (and keeps) its running statistics, no drop path


def freeze(model: MBConvNet, names: list[str]) -> int:
    """Freeze the named parts of `model` in place (see the module docstring); returns the number of frozen
    parameters. Call before the optimizer is built: it must not hold the frozen parameters."""
    if isinstance(names, str):  # "stem" would freeze the parts "s", "t", ...: the spec goes through parse_freeze
        raise ValueError(f"freeze takes a list of module names (parse_freeze({names!r}, ...)), not a string")
    frozen = 0
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"cannot freeze {name!r}: {type(model).__name__} has no such part") from None
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
        module.register_forward_pre_hook(_keep_eval)
        module.train(False)
    return frozen


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Pretrained:
    """Pretrained weights loaded into their own model (with their own classifier), the normalisation they were
    trained with (None when unknown), and where they came from (`origin`: JSON-able, with the file's sha256)."""

    model: MBConvNet
    mean: list[float] | None
    std: list[float] | None
    origin: dict[str, Any] = field(default_factory=dict)


def read_pretrained(path: str | Path, model: str | None = None, given: str | None = None) -> Pretrained:
    """Weights from a file (.pth/.pt/.bin/.safetensors/.h5 of any scheme `mbconv.compat.load_weights` reads) into
    the zoo model they are (recognised from their structure, or `model`), with their evaluation config's
    mean/std when one is known. ValueError naming the keys when they fit no model."""
    from .compat import convert_weights

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:  # convert's run directory is not needed: its model and config are
        r = convert_weights(path, Path(tmp) / "run", model=model)
    cfg = r.config
    origin = {"given": given or str(path), "file": str(path.resolve()), "sha256": file_sha256(path),
              "scheme": r.scheme, "model": r.twin.name if r.twin else None, "spec": r.model.spec.name,
              "pretrained_cfg": cfg.key if cfg else None}
    return Pretrained(r.model, list(cfg.mean) if cfg else None, list(cfg.std) if cfg else None, origin)


@torch.no_grad()
def transfer_weights(target: MBConvNet, source: MBConvNet) -> str:
    """Copy `source`'s weights into `target` (same architecture but perhaps the class count). The classifier is
    copied when the class counts are equal, else `target` keeps its own fresh one. Returns one line saying
    which; ValueError naming the differences when anything else does not fit."""
    src, dst = source.state_dict(), target.state_dict()
    n_src, n_dst = source.spec.num_classes, target.spec.num_classes
    replace = n_src != n_dst
    skip = {k for k in src if k.startswith("classifier.")} if replace else set()
    missing = [k for k in dst if k not in src and k not in skip]
    unexpected = [k for k in src if k not in dst]
    shapes = [f"{k}: weights {tuple(v.shape)} vs model {tuple(dst[k].shape)}" for k, v in src.items()
              if k in dst and k not in skip and v.shape != dst[k].shape]
    if missing or unexpected or shapes:
        what = "; ".join(f"{kind} {items[:3]}" + (f" (+{len(items) - 3})" if len(items) > 3 else "")
                         for kind, items in (("missing", missing), ("unexpected", unexpected),
                                             ("shape mismatch", shapes)) if items)
        raise ValueError(f"the weights of {source.spec.name!r} do not fit {target.spec.name!r}: {what}")
    target.load_state_dict({k: v for k, v in src.items() if k not in skip}, strict=not replace)
    if replace:
        return f"classifier replaced: the weights have {n_src} classes, the data {n_dst} (fresh classifier)"
    return f"classifier kept: the weights and the data have {n_dst} classes"
