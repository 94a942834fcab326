"""The experiments' one sizing rule: --quick (a few minutes), the default (about an hour), --extended (longer)."""

from __future__ import annotations

import argparse
from typing import Any


def mode_config(ap: argparse.ArgumentParser, args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any],
                extended: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(mode name, a copy of its configuration) from the parsed --quick / --extended flags."""
    if args.quick and args.extended:
        ap.error("--quick and --extended exclude each other")
    mode = "quick" if args.quick else "extended" if args.extended else "full"
    return mode, dict({"quick": quick, "full": full, "extended": extended}[mode])
