"""`mbconv tour`: the whole story on bundled data, chapter by chapter, ending in `report.html`.

Each chapter is a function `(ctx: TourContext) -> None` in `mbconv.chapters` that adds one chapter to the report
and writes its JSON results into the output folder. `CHAPTERS` lists them in story order; a chapter's optional
dependencies (matplotlib, ONNX Runtime) are imported when it runs, so a missing extra fails that chapter with
its own message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .chapters import cost, gates, hardware, quant, real, signals, stability, train
from .chapters.context import TourContext
from .report import Report

__all__ = ["CHAPTERS", "TourContext", "run_tour"]

CHAPTERS: dict[str, Callable[[TourContext], None]] = {
    "cost": cost.chapter_cost,
    "train": train.chapter_train,
    "gates": gates.chapter_gates,
    "quant": quant.chapter_quant,
    "stability": stability.chapter_stability,
    "signals": signals.chapter_signals,
    "hardware": hardware.chapter_hardware,
    "real": real.chapter_real,  # a real ImageNet network (needs the Lite0 weights package, in mbconv[test])
}


def run_tour(out: str | Path = "results/tour", quick: bool = False, chapters: str | None = None,
             results: str | Path | None = None) -> Path:
    """Run the chosen chapters (comma-separated names; all by default) and write `report.html` into `out`.

    `results`: a folder of committed experiment results (the repository's experiments/results) whose verdicts
    the stability and quant chapters show; without it those sections say they were skipped.
    """
    names = list(CHAPTERS) if not chapters else [c.strip() for c in chapters.split(",") if c.strip()]
    unknown = [c for c in names if c not in CHAPTERS]
    if unknown:
        raise ValueError(f"unknown tour chapter(s) {unknown}; known: {list(CHAPTERS)}")
    if not names:
        raise ValueError(f"no tour chapter in {chapters!r}; known: {list(CHAPTERS)}")
    if results is not None and not Path(results).is_dir():
        raise FileNotFoundError(f"no such results folder: {results}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = TourContext(out, quick, Report("mbconv tour: efficient inverted-residual networks on real data"),
                      results=None if results is None else Path(results))
    t0 = time.time()
    for name in names:
        CHAPTERS[name](ctx)
        ctx.report.write(out / "report.html")  # after every chapter: a crash keeps what was done
    ctx.log(f"done in {time.time() - t0:.0f} s: {out / 'report.html'}")
    return out / "report.html"
