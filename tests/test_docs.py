"""docs/claims.md and BENCHMARKS.md are assembled from fragments: the committed files must match them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_composed_docs_are_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "compose.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
