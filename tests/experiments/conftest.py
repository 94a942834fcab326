"""The experiment scripts run as `python experiments/<script>.py`, which puts experiments/ on sys.path: their
shared module is imported as `common`. The tests import the scripts the same way."""

import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
if str(EXPERIMENTS) not in sys.path:
    sys.path.insert(0, str(EXPERIMENTS))
