"""The provenance record every result file carries: what it holds, how it is written, and that the result files
written since issue 17 carry it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mbconv.provenance import PROVENANCE_KEYS, RunRecord, git_commit, write_result

ROOT = Path(__file__).resolve().parents[1]


def test_record_holds_the_command_commit_versions_and_wall_time(tmp_path) -> None:
    rec = RunRecord(seeds=[5, 6], epochs=20, init="tf", argv=["experiments/x.py", "--seeds", "5-6", "a b"])
    d = rec.as_dict()
    assert set(PROVENANCE_KEYS) <= set(d)
    assert d["argv"] == ["experiments/x.py", "--seeds", "5-6", "a b"]
    assert d["command"] == "experiments/x.py --seeds 5-6 'a b'"  # shell-quoted: pasteable
    assert (d["seeds"], d["epochs"], d["init"]) == ([5, 6], 20, "tf")
    assert d["torch"] == torch.__version__ and d["threads"] == torch.get_num_threads()
    assert d["device"].startswith("cpu") and d["wall_seconds"] >= 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert d["git_commit"] == head and isinstance(d["git_dirty"], bool)
    assert rec.as_dict(seeds=[7])["seeds"] == [7]  # a chunk can state its own part
    path = write_result(tmp_path / "r" / "result.json", {"acc": 0.9, "provenance": "stale"}, rec)
    stored = json.loads(path.read_text())
    assert stored["acc"] == 0.9 and stored["provenance"]["command"] == d["command"]
    with pytest.raises(ValueError, match="list"):
        write_result(tmp_path / "bad.json", [1, 2], rec)


def test_unstated_fields_stay_none_and_sys_argv_is_the_default(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["prog", "--x"])
    d = RunRecord().as_dict()
    assert d["argv"] == ["prog", "--x"] and d["seeds"] is None and d["epochs"] is None and d["init"] is None
    assert git_commit(tmp_path) == ("unknown", None)  # not a checkout: said, not guessed
