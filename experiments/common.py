"""What the experiment scripts share: the training recipe, the sizing flags, paired statistics over seeds and the
reader of a run's metrics.jsonl.

A plain module, not a package: `python experiments/<script>.py` puts experiments/ on sys.path, so the scripts
`from common import ...`; tests/experiments/conftest.py does the same for the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mbconv.train import TrainConfig, Trainer
from mbconv.workflow import RunConfig


# -- the training recipe ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Recipe:
    """The experiments' training recipe: AdamW, lr 3e-3, weight decay 0.05, a 1-epoch linear warm-up then cosine
    decay, label smoothing 0.1, batch 64. Pinned here rather than taken from the library's defaults, so a change of
    `RunConfig`/`TrainConfig` defaults cannot change what the committed experiments ran."""

    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    batch_size: int = 64

    def fields(self) -> dict[str, Any]:
        """The recipe as keyword arguments (the names of `TrainConfig` and `RunConfig` fields)."""
        return dataclasses.asdict(self)

    def train_config(self, epochs: int, seed: int, out_dir: str | Path, **options: Any) -> TrainConfig:
        """A `TrainConfig` with this recipe; `options` are further `TrainConfig` fields (resume, progress, ...) and
        may override a recipe field (e.g. a shorter warm-up)."""
        return TrainConfig(**{**self.fields(), **options}, epochs=epochs, seed=seed, out_dir=str(out_dir))

    def run_config(self, **fields: Any) -> RunConfig:
        """A `workflow.RunConfig` with this recipe; `fields` are its other fields and may override a recipe one."""
        return RunConfig(**{**self.fields(), **fields})


RECIPE = Recipe()


# -- sizing and command-line values -------------------------------------------------------------------------------
def mode_config(ap: argparse.ArgumentParser, args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any],
                extended: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The experiments' one sizing rule: --quick (a few minutes), the default (about an hour), --extended (longer).
    Returns (mode name, a copy of its configuration) from the parsed --quick / --extended flags."""
    if args.quick and args.extended:
        ap.error("--quick and --extended exclude each other")
    mode = "quick" if args.quick else "extended" if args.extended else "full"
    return mode, dict({"quick": quick, "full": full, "extended": extended}[mode])


def seed_list(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2' -> [0, 2]; '0-1,3' -> [0, 1, 3]. ValueError names a malformed part."""
    out: list[int] = []
    for part in text.split(","):
        try:
            if "-" in part:
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
        except ValueError:
            raise ValueError(f"seeds {text!r}: {part!r} is not a seed or a range like 0-4") from None
    return out


# -- statistics over seeds ----------------------------------------------------------------------------------------
def t_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % t confidence interval (nan for one value)."""
    if not values:
        raise ValueError("t_ci: no values")
    n = len(values)
    m = statistics.mean(values)
    if n < 2:
        return m, math.nan
    from scipy import stats

    return m, float(stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n))


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of `a` and `b` (one value per seed, same order): statistics of the differences a - b.

    Returns ``{"n", "mean", "sd", "ci95", "t", "p_ttest", "p_wilcoxon"}``: the number of pairs, the mean and sample
    standard deviation of the differences, the half-width of the 95 % t-interval of their mean, the paired t
    statistic and its two-sided p, and the two-sided Wilcoxon signed-rank p. What is undefined is nan: sd and ci95
    for one pair; t and p_ttest also when every difference is the same; p_wilcoxon below 5 pairs (where its
    two-sided p cannot go below 0.125) or when every difference is zero.
    """
    if len(a) != len(b):
        raise ValueError(f"paired: a and b differ in length ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("paired: no pairs")
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean, half = t_ci(d)
    sd = statistics.stdev(d) if n > 1 else math.nan
    t = p = math.nan
    if n > 1 and sd > 0:
        r = stats.ttest_1samp(d, 0.0)  # = ttest_rel(a, b)
        t, p = float(r.statistic), float(r.pvalue)
    w = float(stats.wilcoxon(d).pvalue) if n >= 5 and any(d) else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci95": half, "t": t, "p_ttest": p, "p_wilcoxon": w}


def paired_by_key(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, Any]:
    """`paired` over the keys (seeds) both mappings have, in sorted key order; ValueError when they share none."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"paired_by_key: no common keys (a has {sorted(a)}, b has {sorted(b)})")
    return paired([a[k] for k in common], [b[k] for k in common])


# -- reporting ----------------------------------------------------------------------------------------------------
def mean_ci_text(mean: float, half: float, digits: int = 2) -> str:
    """'98.50 +- 0.21' (mean +- 95 % CI half-width); just '98.50' when the half-width is nan (one seed)."""
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" +- {half:.{digits}f}")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table (cells converted with str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# -- run directories ----------------------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch rows the trainer logged to `run_dir`/metrics.jsonl, in order (blank lines skipped)."""
    path = Path(run_dir) / Trainer.METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
