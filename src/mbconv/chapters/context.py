"""What every tour chapter receives: the output folder, the mode, the report being written and shared state."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..report import Report

__all__ = ["TourContext", "torch_threads"]



@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, restoring the caller's count after. Chapters of small nets and
    small batches use one: faster, reproducible, and it does not fight other jobs for a shared machine's cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
