"""The experiment scripts run as `python experiments/<script>.py`, which puts experiments/ on sys.path: their
shared module is imported as `common`. The tests import the scripts the same way."""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))


def load_committed(path: Path) -> dict[str, Any]:
    """The committed result file at `path`, parsed; the calling test is skipped when it is not there."""
    if not path.exists():
        pytest.skip(f"{path.name} not committed")
    return json.loads(path.read_text())


@pytest.fixture
def committed_result() -> Callable[[Path], dict[str, Any]]:
    """`load_committed`, for the tests that check committed result files against their runs."""
    return load_committed
