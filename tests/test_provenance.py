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


RESULTS = ROOT / "experiments" / "results"


def test_committed_results_state_init_device_and_command() -> None:
    """What the issue-17 audit found missing is stated where the docs or history state it, else 'unknown'."""
    for name in ("results_full", "results_full_e40_p10", "results_quick"):
        r = json.loads((RESULTS / "mnist1d_benchmark" / f"{name}.json").read_text())
        assert r["init"]["source"]
        for part in ("models", "pareto"):
            for model in r[part].values():
                assert model["init"].split(":")[0] in ("derived", "run_seed")
    full = json.loads((RESULTS / "mnist1d_benchmark" / "results_full.json").read_text())
    assert full["init"]["models"].startswith("derived") and full["init"]["pareto"].startswith("run_seed")
    for name in ("rows_full", "rows_quick"):
        rows = json.loads((RESULTS / "se_placement_quant" / f"{name}.json").read_text())
        assert all(row.get("device") and row.get("torch") for row in rows)
    for rel in ("bench/speed.json", "bench/stability.json", "se_gates_pruning/bench/bench.json"):
        assert json.loads((RESULTS / rel).read_text())["command"]


def test_result_files_written_since_the_record_carry_all_of_it() -> None:
    for path in RESULTS.rglob("*.json"):
        data = json.loads(path.read_text())
        prov = data.get("provenance") if isinstance(data, dict) else None
        if prov is None:
            continue
        assert set(PROVENANCE_KEYS) <= set(prov), path
        assert prov["argv"] and prov["git_commit"] and prov["device"], path
