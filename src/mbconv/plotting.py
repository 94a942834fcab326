"""matplotlib for figures: pyplot on the non-interactive Agg backend, and a savefig that closes the figure.

Every module that draws (analysis, experiments, the report) gets pyplot from here, so none has to reach up into
`mbconv.report` for it. matplotlib is imported lazily: it is an extra (``pip install 'mbconv[train]'``), not a
library dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plt", "savefig"]


def plt() -> Any:
    """matplotlib.pyplot with a non-interactive backend."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'mbconv[train]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def savefig(fig: Any, path: str | Path) -> Path:
    """Lay out `fig`, write it to `path` (PNG, 110 dpi; parent folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt().close(fig)
    return path
