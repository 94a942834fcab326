"""The record every result file carries: how it was made, so that it can be made again.

A :class:`RunRecord` is started when a script starts and written with the result (:func:`write_result`, or
``record.as_dict()`` under the ``"provenance"`` key of any JSON). It holds the exact command line (``sys.argv``), the
git commit of the working directory (and whether tracked files differed from it), the seeds, epochs and weight-init
scheme the caller states, the torch / ONNX Runtime / Python versions, the device, the thread counts, and the wall
time from start to the moment it is written. What a caller does not state is ``None``: a record never guesses.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .files import write_json

__all__ = ["PROVENANCE_KEYS", "RunRecord", "git_commit", "write_result"]

# The keys every record has (tests/test_provenance.py checks the committed result files against it).
PROVENANCE_KEYS = ("argv", "command", "executable", "git_commit", "git_dirty", "seeds", "epochs", "init", "torch",
                   "onnxruntime", "python", "platform", "device", "threads", "omp_num_threads", "started_at",
                   "wall_seconds")


def git_commit(cwd: str | Path | None = None) -> tuple[str, bool | None]:
    """(commit hash, whether tracked files differ from it) of the git checkout at `cwd`; ("unknown", None) when
    there is none or git is missing."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown", None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class RunRecord:
    """How a result was made; start one when the script starts, write it with the result.

    Args:
        seeds: the seeds the result covers (an int or a list). epochs: training epochs per run (int, or a mapping
            such as {"main": 20, "pareto": 10}). init: the weight-init scheme(s) of the trained nets. device: where
            it ran (default: "cpu (<model name>)", or the CUDA device name for "cuda"). None: not applicable.
        argv: the command line (default: ``sys.argv``, copied now).
    """

    def __init__(self, *, seeds: Any = None, epochs: Any = None, init: Any = None, device: str | None = None,
                 argv: Sequence[str] | None = None) -> None:
        self.argv = list(sys.argv if argv is None else argv)
        self.seeds, self.epochs, self.init = seeds, epochs, init
        self.device = device
        self.started = time.time()
        self.commit, self.dirty = git_commit()

    def device_name(self) -> str:
        """The device in words: the CPU model, or the CUDA device's name."""
        dev = self.device or "cpu"
        if dev.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                return f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
            return dev
        return f"{dev} ({cpu_name()})" if dev == "cpu" else dev

    def as_dict(self, **updates: Any) -> dict[str, Any]:
        """The record now (wall time up to this call); `updates` override or add fields (e.g. a chunk's seeds)."""
        import torch

        out = {
            "argv": self.argv,
            "command": shlex.join(self.argv),
            "executable": sys.executable,
            "git_commit": self.commit,
            "git_dirty": self.dirty,
            "seeds": self.seeds,
            "epochs": self.epochs,
            "init": self.init,
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "device": self.device_name(),
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "started_at": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self.started, 3),
        }
        out.update(updates)
        return out


def write_result(path: str | Path, result: dict[str, Any], record: RunRecord, **updates: Any) -> Path:
    """Write `result` as JSON (atomically) with ``result["provenance"] = record.as_dict(**updates)``; the result's
    own keys are kept, a stale "provenance" is replaced. Returns the path."""
    if not isinstance(result, dict):
        raise ValueError(f"a result must be a JSON object (dict), got {type(result).__name__}")
    return write_json(path, {**result, "provenance": record.as_dict(**updates)})
