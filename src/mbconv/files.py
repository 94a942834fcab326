"""Atomic file writes: text and JSON go to a temp file in the same folder, are fsynced, then renamed into place,
so a reader (or a run resumed after a kill) never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "output_file", "write_json"]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text via a temp file in the same folder, fsync, then rename (no half-written files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """`path` as a Path whose folder exists and is writable, checked before any work is done: ValueError in one
    line naming the path when it is a folder, its folder cannot be made, or the folder is not writable."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ValueError(f"invalid {what} path {path!r}: expected a file name")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} path {path} is a folder: give a file name inside it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder of {what} {path}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"cannot write {what} {path}: folder {path.parent} is not writable")
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=1))
