"""The `mbconv` command: one sub-command per capability, plus `tour`.

Bad input (unknown model, bad number, bad block string, missing file) prints one line naming it and exits 2,
never a traceback. Set MBCONV_DEBUG=1 to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from .cli_args import (
    add_model_arguments,
    finite_float,
    float_range,
    fraction,
    int_choice,
    integer,
    model_overrides,
    nonnegative_float,
    positive_float,
    positive_int,
    text,
)
from .commands import convert, deploy, gates, prune, quant, roofline, signals, stability
from .cost import compare_layer, spec_cost
from .model_source import ModelOverrides, check_size, spec_from_name
from .spec import NetSpec, feature_levels

# Each module adds its sub-commands with `register(add)`, in this order (the order of `mbconv --help`).
COMMAND_MODULES = (gates, prune, quant, stability, deploy, signals, roofline, convert)


class CliError(Exception):
    """An error caused by the user's input: shown as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise CliError(f"{self.prog}: {message}")


def _fmt_int(n: int) -> str:
    return f"{n:,d}"


def _fmt_g(n: float) -> str:
    return f"{n / 1e9:.3f} G"


def _spec_from_args(args: argparse.Namespace) -> NetSpec:
    return spec_from_name(args.model, model_overrides(args))


# -- list / info ---------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from .zoo import get_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise CliError(f"no model matches {args.pattern!r}")
    print(f"{'model':28s} {'dims':>4s} {'res':>5s} {'params':>14s} {'MACs':>10s}")
    for n in names:
        s = get_spec(n)
        c = spec_cost(s)
        print(f"{n:28s} {s.dims:>4d} {s.resolution:>5d} {_fmt_int(c.params):>14s} {_fmt_g(c.macs):>10s}")
    return 0


def stage_table(spec: NetSpec) -> list[dict]:
    """Rows of the stage table: one per block definition."""
    from .spec import plan_blocks

    plans = plan_blocks(spec)
    rows = []
    for si, stage in enumerate(spec.stages):
        for di, b in enumerate(stage.blocks):
            first = next(p for p in plans if p.stage == si and p.block_def == di)
            rows.append(dict(stage=si, block={"ir": "MBConv", "ds": "DSConv", "er": "FusedMBConv",
                                              "cn": "ConvBNAct"}[b.block], t=b.expand, k=b.kernel,
                             stride=b.stride, in_chs=first.in_chs, mid_chs=first.mid_chs, out_chs=b.out_chs,
                             repeats=b.repeats, se=first.se_chs, act=first.act, string=b.to_string()))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    if args.json:
        print(spec.to_json())
        return 0
    c = spec_cost(spec)
    print(f"{spec.name}: dims={spec.dims} resolution={spec.resolution} act={spec.act} padding={spec.padding} "
          f"se_position={spec.se_position} se_base={spec.se_base}")
    print(f"stem: {spec.in_chans}->{spec.stem_chs} k{spec.stem_kernel} s{spec.stem_stride}   head: "
          f"{spec.head_type} {spec.head_chs}   classes: {spec.num_classes}   blocks: {spec.num_blocks}")
    hdr = f"{'stage':>5s} {'block':12s} {'t':>5s} {'k':>2s} {'s':>2s} {'in':>5s} {'mid':>5s} {'out':>5s} " \
          f"{'rep':>4s} {'SE':>4s} {'act':10s} string"
    print(hdr)
    for r in stage_table(spec):
        print(f"{r['stage']:>5d} {r['block']:12s} {r['t']:>5g} {r['k']:>2d} {r['stride']:>2d} {r['in_chs']:>5d} "
              f"{r['mid_chs']:>5d} {r['out_chs']:>5d} {r['repeats']:>4d} {r['se']:>4d} {r['act']:10s} "
              f"{r['string']}")
    print(f"params {_fmt_int(c.params)}   MACs {_fmt_g(c.macs)} at {spec.resolution}px")
    print("multi-scale features (forward_multiscale): " + ", ".join(
        f"stage {f['stage']}: {f['channels']} ch at 1/{f['reduction']}" for f in feature_levels(spec)))
    return 0



# -- cost ----------------------------------------------------------------------------------------------------
def cmd_cost(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    c = spec_cost(spec, args.resolution)
    if args.json:
        print(c.to_json(per_layer=args.per_layer))
        return 0
    print(f"{spec.name} at {'x'.join(map(str, c.resolution))}: params {_fmt_int(c.params)}  "
          f"MACs {_fmt_int(c.macs)} ({c.macs / 1e9:.3f} G)  activations {_fmt_int(c.act_elems)} elems "
          f"(largest map {c.peak_act_bytes() / 2**20:.2f} MiB fp32)")
    print(f"{'component':12s} {'params':>14s} {'%':>6s} {'MACs':>16s} {'%':>6s}")
    for k, v in c.by_component().items():
        print(f"{k:12s} {_fmt_int(v['params']):>14s} {100 * v['params'] / c.params:6.1f} "
              f"{_fmt_int(v['macs']):>16s} {100 * v['macs'] / max(c.macs, 1):6.1f}")
    if args.per_layer:
        print(f"\n{'layer':28s} {'comp':10s} {'in':>5s} {'out':>5s} {'k':>2s} {'s':>2s} {'g':>5s} "
              f"{'size':>12s} {'params':>11s} {'MACs':>14s}")
        for l in c.layers:
            size = "x".join(map(str, l.out_size)) or "-"
            print(f"{l.name:28s} {l.component:10s} {l.in_chs:>5d} {l.out_chs:>5d} {l.kernel:>2d} {l.stride:>2d} "
                  f"{l.groups:>5d} {size:>12s} {_fmt_int(l.params):>11s} {_fmt_int(l.macs):>14s}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    rows = compare_layer(args.cin, args.cout, args.kernel, args.dims, args.resolution, args.t)
    print(f"one layer, {args.dims}-D, k={args.kernel}, {args.cin}->{args.cout} ch, {args.resolution}^{args.dims} "
          f"px, t={args.t:g}")
    for k in ("standard", "separable", "mbconv"):
        r = rows[k]
        print(f"  {k:10s} params {_fmt_int(r['params']):>12s}  MACs {_fmt_int(r['macs']):>16s}  "
              f"x{r['ratio_vs_standard']:.2f} fewer than standard")
    print(f"  closed form k^D*Cout/(k^D+Cout) = {rows['formula']['ratio_std_sep']:.3f}")
    return 0


# -- scale ---------------------------------------------------------------------------------------------------
def cmd_scale(args: argparse.Namespace) -> int:
    from .scaling import compound_multipliers, compound_scale, scale_spec
    from .zoo import get_spec

    base = get_spec(args.base)
    if args.latency_ms is not None:  # MnasNet-style: phi chosen by measured latency (mbconv.roofline)
        if args.search or args.phi is not None or any(v is not None for v in (args.width, args.depth, args.resolution)):
            raise CliError("--latency-ms chooses phi itself: drop --phi/--search/--width/--depth/--resolution")
        return roofline.latency_scale(base, args)
    if args.search:
        from .scaling_search import search_coefficients

        result = search_coefficients(base, data=args.data, quick=args.quick)
        print(json.dumps(result, indent=1, default=str) if args.json else result.get("table", result))
        return 0
    explicit = any(v is not None for v in (args.width, args.depth, args.resolution))
    if args.phi is not None and explicit:
        raise CliError("give either --phi (with optional --alpha/--beta/--gamma) or --width/--depth/--resolution")
    if args.phi is not None:
        w, d, r = compound_multipliers(args.phi, args.alpha, args.beta, args.gamma)
        if max(w, d, r) > MAX_MULTIPLIER:
            raise CliError(f"--phi {args.phi:g} with --alpha {args.alpha:g} --beta {args.beta:g} --gamma "
                           f"{args.gamma:g} scales by x{max(w, d, r):.3g}: the limit is {MAX_MULTIPLIER:g}")
        spec = compound_scale(base, args.phi, args.alpha, args.beta, args.gamma)
    elif explicit:
        spec = scale_spec(base, args.width or 1.0, args.depth or 1.0, args.resolution)
    else:
        raise CliError("nothing to scale: give --phi or --width/--depth/--resolution")
    b, c = spec_cost(base), spec_cost(spec)
    if args.json:
        print(json.dumps({"spec": spec.to_dict(), "params": c.params, "macs": c.macs}, indent=1))
        return 0
    print(f"{base.name} -> width x{spec.width_mult:.4g}, depth x{spec.depth_mult:.4g}, resolution "
          f"{spec.resolution}")
    print(f"  stem {spec.stem_chs}, head {spec.head_chs}, blocks {spec.num_blocks}")
    for i, st in enumerate(spec.stages):
        print(f"  stage {i}: " + ", ".join(bl.to_string() for bl in st.blocks))
    print(f"  params {_fmt_int(c.params)} (x{c.params / b.params:.2f})   MACs {_fmt_g(c.macs)} "
          f"(x{c.macs / b.macs:.2f} of the base)")
    return 0


# -- train / eval / predict -----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .workflow import RunConfig, train_run

    over = {}
    if args.se_position:
        over["se_position"] = args.se_position
    if args.drop_path is not None:
        over["drop_path_rate"] = args.drop_path
    if args.weights is None or args.model is not None:  # a bad model fails here, not after the data are loaded
        check_size(spec_from_name(args.model or "efficientnet_b0", ModelOverrides(se_position=args.se_position)))
    if args.freeze:  # the syntax fails here too (the stage numbers are checked against the model later)
        from .finetune import parse_freeze

        parse_freeze(args.freeze, num_stages=1000)
    cfg = RunConfig(model=args.model, data=args.data, out=args.out, resolution=args.resolution,
                    width_mult=args.width_mult, depth_mult=args.depth_mult, overrides=over, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                    weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                    label_smoothing=args.label_smoothing, ema_decay=args.ema, augment=not args.no_augment,
                    seed=args.seed, resume=args.resume, deterministic=args.deterministic, weights=args.weights,
                    freeze=args.freeze, channels=args.channels, norm=args.norm,
                    extra_train={"memory_lean": args.memory_lean,
                                 "large_tensor_heap": not args.no_large_tensor_heap,
                                 "native_kernels": not args.no_native_kernels, "compile": args.compile})
    row = train_run(cfg)
    acc = row.get("test_acc")
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(f"done: epoch {row.get('epoch')} test_acc {acc if acc is None else f'{100 * acc:.2f} %'} -> "
              f"{args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .model_source import model_from_source, run_dataset
    from .train import evaluate
    from .workflow import describe_selection

    src = model_from_source(checkpoint=args.checkpoint)
    ds = run_dataset(src.run or {}, args.data, "test")
    r = {"checkpoint": src.description, "data": args.data or src.run["data"]["name"],
         "selection": describe_selection(src.checkpoint), **evaluate(src.model, ds)}
    if args.json:
        print(json.dumps(r))
    else:  # the test split is reported; how the checkpoint was chosen (validation split) says the rest
        print(f"{r['checkpoint']} on {r['data']} test: accuracy {100 * r['acc']:.2f} % "
              f"loss {r['loss']:.4f} ({r['count']} samples); checkpoint {r['selection']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .model_source import model_from_source
    from .workflow import predict, preprocess, read_input

    src = model_from_source(checkpoint=args.checkpoint)
    data = (src.run or {}).get("data")
    if not data or "classes" not in data:
        raise ValueError(f"{src.description} records no data (classes, normalisation): cannot preprocess inputs")
    x = torch.cat([read_input(p, data) for p in args.inputs])
    for path, top in zip(args.inputs, predict(src.model, preprocess(x, data), data["classes"], args.top_k)):
        print(f"{path}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top))
    return 0


def cmd_tour(args: argparse.Namespace) -> int:
    from .tour import run_tour

    run_tour(args.out, quick=args.quick, chapters=args.chapters, results=args.results)
    return 0


# -- parser --------------------------------------------------------------------------------------------------
MAX_MULTIPLIER = 1000.0  # width/depth factors beyond this build networks too large to describe in reasonable time
multiplier = float_range(0.0, MAX_MULTIPLIER, lo_open=True)
phi_range = float_range(-30.0, 30.0)  # 1.2^30 = 237x depth: larger |phi| only describes absurd networks


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mbconv", description="Efficient inverted-residual networks: build, cost, train, "
                                            "prune, quantize, deploy.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("list", cmd_list, "list the model zoo with params and MACs")
    sp.add_argument("pattern", nargs="?", default="*")
    sp = add("info", cmd_info, "stage table of a model")
    add_model_arguments(sp, checkpoint=False)
    sp.add_argument("--json", action="store_true", help="print the spec as JSON")
    sp = add("cost", cmd_cost, "exact params / MACs / activations, by component and per layer")
    add_model_arguments(sp, checkpoint=False)
    sp.add_argument("--resolution", type=positive_int)
    sp.add_argument("--per-layer", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp = add("compare", cmd_compare, "standard vs depthwise-separable vs MBConv for one layer")
    sp.add_argument("--cin", type=positive_int, default=64)
    sp.add_argument("--cout", type=positive_int, default=64)
    sp.add_argument("--kernel", type=positive_int, default=3)
    sp.add_argument("--dims", type=int_choice(1, 2, 3), default=2)
    sp.add_argument("--resolution", type=positive_int, default=56)
    sp.add_argument("--t", type=positive_float, default=6.0)
    sp = add("scale", cmd_scale, "compound-scale a base model (phi, alpha/beta/gamma) or by an explicit triple")
    sp.add_argument("--base", type=text, default="efficientnet_b0")
    sp.add_argument("--phi", type=phi_range)
    sp.add_argument("--alpha", type=positive_float, default=1.2)
    sp.add_argument("--beta", type=positive_float, default=1.1)
    sp.add_argument("--gamma", type=positive_float, default=1.15)
    sp.add_argument("--search", action="store_true",
                    help="grid-search alpha/beta/gamma with alpha*beta^2*gamma^2 ~ 2 on a proxy task")
    sp.add_argument("--data", type=text, default="mnist5k", help="proxy dataset for --search")
    sp.add_argument("--quick", action="store_true", help="smallest --search grid")
    sp.add_argument("--width", type=multiplier)
    sp.add_argument("--depth", type=multiplier)
    sp.add_argument("--resolution", type=positive_int)
    sp.add_argument("--latency-ms", type=finite_float, help="largest compound-scaled model meeting this latency here")
    sp.add_argument("--batch", type=positive_int, default=1, help="batch for --latency-ms")
    sp.add_argument("--threads", type=positive_int, default=1, help="threads for --latency-ms")
    sp.add_argument("--json", action="store_true")
    sp = add("train", cmd_train, "train a model on a bundled dataset (or an image folder) with checkpoints")
    sp.add_argument("--model", type=text, help="zoo name or block strings (default: efficientnet_b0, or with "
                                                 "--weights the weights' own model)")
    sp.add_argument("--data", type=text, default="mnist5k", help="mnist5k | digits8 | mnist1d | textures | PATH")
    sp.add_argument("--weights", type=text, help="start from pretrained weights: a run or checkpoint directory, a "
                                                 "weight file (anything mbconv convert reads) or an installed "
                                                 "package that ships one; the classifier is replaced when the "
                                                 "class count differs")
    sp.add_argument("--freeze", type=text, help="with --weights, parts kept fixed (and in eval mode): "
                                                "comma-separated stem, stages, stages.N, stages.A-B, head, backbone")
    sp.add_argument("--channels", type=int_choice(1, 3),
                    help="convert the data's channels: 3 replicates a gray dataset to RGB, 1 takes an RGB one's luma")
    sp.add_argument("--norm", choices=("auto", "data", "weights"), default="auto",
                    help="input mean/std: the weights' (their evaluation config), the train split's, or auto "
                         "(the weights' when known)")
    sp.add_argument("--out", type=text, default="results/run")
    sp.add_argument("--epochs", type=positive_int, default=10)
    sp.add_argument("--batch-size", type=positive_int, default=64)
    sp.add_argument("--lr", type=positive_float, default=3e-3)
    sp.add_argument("--optimizer", choices=("sgd", "adamw", "rmsprop"), default="adamw")
    sp.add_argument("--weight-decay", type=nonnegative_float, default=0.05)
    sp.add_argument("--warmup-epochs", type=nonnegative_float, default=1.0)
    sp.add_argument("--label-smoothing", type=fraction, default=0.1)
    sp.add_argument("--ema", type=fraction, default=0.0, help="EMA decay of the weights (0 = off)")
    sp.add_argument("--resolution", type=positive_int)
    sp.add_argument("--width-mult", type=multiplier, default=1.0)
    sp.add_argument("--depth-mult", type=multiplier, default=1.0)
    sp.add_argument("--se-position", choices=("after_dw", "before_dw"))
    sp.add_argument("--drop-path", type=fraction)
    sp.add_argument("--no-augment", action="store_true")
    sp.add_argument("--seed", type=integer, default=0)
    sp.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
    sp.add_argument("--deterministic", action="store_true")
    sp.add_argument("--memory-lean", choices=("auto", "on", "off"), default="auto",
                    help="recompute BN outputs and SE products in backward instead of storing them: on large maps "
                         "only (auto: no cost on small ones), on every layer, or off")
    sp.add_argument("--no-large-tensor-heap", action="store_true",
                    help="keep glibc's default of a fresh mmap per tensor over 32 MiB (by default freed large "
                         "tensors are reused from the heap during training: faster on large maps, higher peak RSS)")
    sp.add_argument("--no-native-kernels", action="store_true",
                    help="train with PyTorch's BN, activation and depthwise ops instead of the native kernels "
                         "(built on first use with the system C compiler; without one PyTorch's ops are used anyway)")
    sp.add_argument("--compile", action="store_true",
                    help="torch.compile the training step (the native depthwise kernels inside the graph): faster "
                         "steps on small-map 2-D nets after a compile of one to two minutes; pays on long runs (1-D "
                         "nets train faster without it)")
    sp = add("eval", cmd_eval, "test accuracy of a trained run or checkpoint")
    sp.add_argument("--checkpoint", type=text, required=True, help="run directory or checkpoint directory")
    sp.add_argument("--data", type=text, help="another dataset with the same classes")
    sp.add_argument("--json", action="store_true")
    sp = add("predict", cmd_predict, "top-k classes for image files or .npy arrays")
    sp.add_argument("--checkpoint", type=text, required=True)
    sp.add_argument("--top-k", type=positive_int, default=3)
    sp.add_argument("inputs", type=text, nargs="+")
    sp = add("tour", cmd_tour, "the whole story on bundled data, with a report (results/tour/report.html)")
    sp.add_argument("--out", type=text, default="results/tour")
    sp.add_argument("--quick", action="store_true", help="smallest settings (used by the tests)")
    sp.add_argument("--chapters", type=text, default=None, help="comma-separated subset of chapters")
    sp.add_argument("--results", type=text, default=None,
                    help="folder of committed experiment results whose verdicts the tour shows (e.g. "
                         "experiments/results); skipped without it")
    for module in COMMAND_MODULES:
        module.register(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mbconv` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # argparse (3.11) turns the value of `--flag=--` into [] and skips its type check: refuse it here
        dashes = next((a for a in argv if a.startswith("-") and a.endswith("=--")), None)
        if dashes:
            raise CliError(f"argument {dashes[:-3]}: expected a value, got '--'")
        args = parser.parse_args(argv)
        return int(args.fn(args) or 0)
    except (CliError, ValueError, OSError, KeyError) as e:  # OSError: unreadable paths (missing, a folder, ...)
        if os.environ.get("MBCONV_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"mbconv: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbconv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
