"""`mbconv stability` (per-block gradients, block Jacobians, condition number) and `mbconv scale-search`."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from ..cli_args import (
    add_model_arguments,
    integer,
    model_from_args,
    nonnegative_int,
    positive_float,
    positive_int,
    text,
)
from ..model_source import run_dataset

COLUMNS = (("index", "#", "d"), ("name", "block", ""), ("type", "type", ""), ("in_shape", "in", ""),
           ("out_shape", "out", ""), ("has_skip", "skip", ""), ("param_grad", "|dL/dW|", ".3g"),
           ("act_grad", "|dL/dh|", ".3g"), ("act_rms", "act rms", ".3g"), ("sigma_max", "sigma_max", ".4g"),
           ("mean_sq", "mean s^2", ".4g"), ("kappa", "kappa", ".4g"), ("method", "J method", ""))


def _inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """(model, x, y, description): a trained --checkpoint on its own test data, or a --model at init (seeded)
    on random N(0, 1) inputs and labels."""
    import torch

    src = model_from_args(args, seed=None if args.checkpoint else args.seed)
    model, res = src.model, src.resolution
    if args.checkpoint:
        ds = run_dataset(src.run or {}, None, "test", resolution=res)
        n = min(args.batch, len(ds))
        x = torch.stack([ds[i][0] for i in range(n)])
        y = torch.as_tensor([int(ds[i][1]) for i in range(n)])
        return model, x, y, f"{src.description}: {n} test samples of {src.run['data']['name']} at {res} px"
    spec = model.spec
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, spec.in_chans, *([res] * spec.dims), generator=gen)
    y = torch.randint(0, spec.num_classes, (args.batch,), generator=gen)
    return model, x, y, f"{spec.name} (init, seed {args.seed}): {args.batch} random N(0,1) inputs at {res} px"


def _jsonable(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def cmd_stability(args: argparse.Namespace) -> int:
    import torch

    from .. import stability as S

    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y, what = _inputs(args)
    rows = S.block_table(model, x, y, k=args.iters, probes=args.probes, seed=args.seed)
    cond = S.network_condition(model, x[:1], k=args.iters, seed=args.seed)
    lg = cond["logits"]
    if args.json:
        print(json.dumps(_jsonable({"inputs": what, "blocks": rows, "condition": cond}), indent=1))
        return 0
    print(f"{what}")
    print("gradients: cross-entropy on the batch, BatchNorm with batch statistics; Jacobians: eval mode, BN folded, "
          "sample 0")
    print(S.format_block_table(rows, COLUMNS))
    bound = "" if lg["exact"] else " (Lanczos: sigma_K is an upper bound, so kappa is a lower bound)"
    print(f"logits Jacobian: {lg['n']} singular values [{lg['method']}], sigma_1 = {lg['sigma_max']:.4g}, "
          f"sigma_K = {lg['sigma_min']:.4g}{bound}")
    for r in cond["runs"]:
        note = "" if r["method"] == "exact" else f" [{r['method']}, lower bound]"
        print(f"square run {r['first']}..{r['last']} ({r['blocks']} block(s), {r['dim']} dims): "
              f"kappa {r['kappa']:.4g}, sigma {r['sigma_max']:.4g} .. {r['sigma_min']:.4g}{note}")
    print(f"condition number (logits Jacobian, sigma_1 / sigma_K): {lg['kappa']:.6g}")
    return 0


def cmd_scale_search(args: argparse.Namespace) -> int:
    import torch

    from ..scaling_search import search_coefficients

    if args.threads:
        torch.set_num_threads(args.threads)
    res = search_coefficients(args.base, data=args.data, quick=args.quick, epochs=args.epochs, seeds=args.seeds,
                              max_steps=args.max_steps, proxy_width=args.proxy_width, resolution=args.resolution,
                              tol=args.tol, out=args.out)
    print(json.dumps(_jsonable(res), indent=1, default=str) if args.json else res["table"])
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `stability` and `scale-search` to the `mbconv` command."""
    sp = add("stability", cmd_stability, "per-block gradient norms and Jacobians, and the condition number of a "
                                         "zoo model (at init) or a trained run")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=text, help="zoo name or block strings (random inputs, fresh init)")
    src.add_argument("--checkpoint", type=text, help="run or checkpoint directory (its own test data)")
    add_model_arguments(sp, name="none", checkpoint=False, resolution=True)
    sp.add_argument("--batch", type=positive_int, default=8, help="samples for the gradient profile")
    sp.add_argument("--iters", type=positive_int, default=20, help="Lanczos steps where J is too big to build")
    sp.add_argument("--probes", type=positive_int, default=8, help="Hutchinson probes per block")
    sp.add_argument("--seed", type=integer, default=0)
    sp.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    sp.add_argument("--json", action="store_true")

    sp = add("scale-search", cmd_scale_search, "EfficientNet step 1: grid-search alpha/beta/gamma under "
                                               "alpha*beta^2*gamma^2 ~ 2 on a proxy task (trains every candidate)")
    sp.add_argument("--base", type=text, default="efficientnet_b0")
    sp.add_argument("--data", type=text, default="mnist5k")
    sp.add_argument("--quick", action="store_true", help="6-candidate grid, 2 epochs, 1 seed")
    sp.add_argument("--epochs", type=positive_int)
    sp.add_argument("--seeds", type=positive_int)
    sp.add_argument("--max-steps", type=nonnegative_int, default=0, help="stop each run after this many steps (0: off)")
    sp.add_argument("--proxy-width", type=positive_float, default=0.25)
    sp.add_argument("--resolution", type=positive_int, help="proxy input size (default: the data's)")
    sp.add_argument("--tol", type=positive_float, default=0.08, help="allowed relative error of the exact MAC ratio")
    sp.add_argument("--out", type=text, help="run cache (default results/scale_search/...)")
    sp.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    sp.add_argument("--json", action="store_true")
