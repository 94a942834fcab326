"""Argument types shared by the `mbconv` sub-commands.

Each is an argparse `type=` function: it returns the parsed value or raises `argparse.ArgumentTypeError` with a
short message quoting the bad text; argparse prefixes the flag (``argument --phi: not a finite number: 'nan'``), so
every bad value is named in a one-line error before any work starts. Floats are always finite: ``nan``, ``inf``
and overflowing literals such as ``1e400`` are rejected.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .model_source import ModelOverrides, ModelSource, model_from_source

__all__ = ["text", "integer", "positive_int", "nonnegative_int", "finite_float", "positive_float", "nonnegative_float",
           "probability", "fraction", "float_range", "int_list", "add_model_arguments", "model_overrides",
           "model_from_args"]


def text(s: str) -> str:
    """A non-empty string (a path, a name): an empty value is a slip, not a request for the default."""
    if not s.strip():
        raise argparse.ArgumentTypeError(f"must not be empty: {s!r}")
    return s


def integer(s: str) -> int:
    """Any integer (e.g. a seed)."""
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None


def positive_int(s: str) -> int:
    """An integer >= 1 (counts, sizes, epochs)."""
    v = integer(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {s!r}")
    return v


def int_choice(*allowed: int) -> Callable[[str], int]:
    """An integer from `allowed`, written plainly (argparse's own `choices` would report '05' as 'invalid choice: 5',
    not naming the value as given)."""

    def parse(s: str) -> int:
        if s.strip() not in {str(a) for a in allowed}:
            raise argparse.ArgumentTypeError(f"invalid value {s!r}: expected one of {', '.join(map(str, allowed))}")
        return int(s)

    return parse


def nonnegative_int(s: str) -> int:
    """An integer >= 0 (counts where 0 means off)."""
    v = integer(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {s!r}")
    return v


def finite_float(s: str) -> float:
    """A finite real number: not nan, not inf, not a literal that overflows to inf (1e400)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {s!r}")
    return v


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    """A type for finite numbers in an interval, e.g. ``float_range(0, 1, hi_open=True)`` for [0, 1)."""
    left = "-inf" if lo is None else f"{lo:g}"
    right = "inf" if hi is None else f"{hi:g}"
    interval = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"

    def parse(s: str) -> float:
        v = finite_float(s)
        if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"must be in {interval}: {s!r}")
        return v

    parse.__name__ = f"float in {interval}"
    return parse


positive_float = float_range(0.0, lo_open=True)
positive_float.__doc__ = "A finite number > 0 (learning rates, multipliers)."
nonnegative_float = float_range(0.0)
nonnegative_float.__doc__ = "A finite number >= 0 (weight decay, tolerances)."
probability = float_range(0.0, 1.0)
probability.__doc__ = "A number in [0, 1]."
fraction = float_range(0.0, 1.0, hi_open=True)
fraction.__doc__ = "A number in [0, 1) (rates that must leave something: drop path, label smoothing)."


def int_list(s: str) -> tuple[int, ...]:
    """Comma-separated integers >= 1, e.g. ``1,16``."""
    try:
        out = tuple(positive_int(v.strip()) for v in s.split(",") if v.strip())
    except argparse.ArgumentTypeError as e:  # name the whole list too: '0' alone does not say where in '8,0,'
        raise argparse.ArgumentTypeError(f"{e} in {s!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {s!r}")
    return out


def add_model_arguments(sp: argparse.ArgumentParser, name: str = "positional", checkpoint: bool = True,
                        resolution: bool = False) -> None:
    """The model flags of every command that builds a model (see `mbconv.model_source`): the NAME (zoo name or
    block strings; `name` = 'positional', 'optional' (may be replaced by --checkpoint) or 'none' (the command
    adds its own --model)), optionally --checkpoint and --resolution, and the architecture overrides
    --num-classes, --in-chans, --dims, --se-position, --width-mult."""
    help_name = "zoo name (see `mbconv list`) or block strings 'ir_r1_k3_s1_e6_c16;...'"
    if name == "positional":
        sp.add_argument("model", type=text, help=help_name)
    elif name == "optional":
        sp.add_argument("model", nargs="?", type=text, help=help_name)
    if checkpoint:
        sp.add_argument("--checkpoint", type=text, help="a trained run or checkpoint directory instead of a NAME")
    sp.add_argument("--num-classes", type=positive_int, help="classifier outputs (NAME only)")
    sp.add_argument("--in-chans", type=positive_int, help="input channels (NAME only)")
    sp.add_argument("--dims", type=int_choice(1, 2, 3), help="spatial dimensions (NAME only)")
    sp.add_argument("--se-position", choices=("after_dw", "before_dw"), help="where SE sits (NAME only)")
    sp.add_argument("--width-mult", type=positive_float, help="channel multiplier (NAME only)")
    if resolution:
        sp.add_argument("--resolution", type=positive_int, help="input size (default: the run's or the spec's)")


def model_overrides(args: argparse.Namespace) -> ModelOverrides:
    """The architecture overrides given on the command line (flags added by `add_model_arguments`)."""
    return ModelOverrides(**{f: getattr(args, f, None) for f in ("num_classes", "in_chans", "dims", "se_position",
                                                                  "width_mult")})


def model_from_args(args: argparse.Namespace, seed: int | None = None) -> ModelSource:
    """The model of a parsed NAME-or---checkpoint command line (`model`, `checkpoint`, `resolution` and the
    overrides), built by `mbconv.model_source.model_from_source`."""
    return model_from_source(getattr(args, "model", None), getattr(args, "checkpoint", None), model_overrides(args),
                             getattr(args, "resolution", None), seed=seed)
