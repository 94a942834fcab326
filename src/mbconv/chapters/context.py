"""What every tour chapter receives: the output folder, the mode, the report being written and shared state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report import Report

__all__ = ["TourContext"]


@dataclass
class TourContext:
    """State of one tour run, passed to each chapter function `(ctx) -> None`.

    `out`: folder for figures, JSON results and report.html; `quick`: smallest settings (tests); `report`: the
    report chapters add to; `state`: results later chapters reuse (e.g. "tour_run", the trained tour model);
    `results`: a folder of committed experiment results (e.g. experiments/results) whose verdicts some chapters
    show, None to skip those sections.
    """

    out: Path
    quick: bool
    report: Report
    state: dict[str, Any] = field(default_factory=dict)
    results: Path | None = None

    def log(self, msg: str) -> None:
        """One progress line on stdout, with the time."""
        print(f"[tour {time.strftime('%H:%M:%S')}] {msg}", flush=True)
