"""experiments/finetune_lite0.py: the committed summaries and learning-rate choices are what the script computes
from the per-run curves committed beside them (seconds, no training)."""

import json
from pathlib import Path

import finetune_lite0 as f
import pytest

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results" / "finetune_lite0"


def test_first_epoch_reaching() -> None:
    assert f.first_epoch_reaching([0.5, 0.97, 0.99], 0.95) == 2  # epochs count from 1
    assert f.first_epoch_reaching([0.5, 0.97], 0.98) is None


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_committed_results_follow_from_their_runs(mode: str, committed_result) -> None:
    r = committed_result(RESULTS / f"results_{mode}.json")
    assert r["provenance"]["argv"] and r["config"]["weights"]["sha256"]
    if mode == "full":
        assert set(r["arms"]) == set(f.ARMS)
    for arm in r["arms"]:
        choice = r["lr_choice"][arm]
        by_lr = {float(k): v for k, v in choice["val_acc_by_lr"].items()}
        assert choice["chosen"] == max(by_lr, key=lambda lr: (by_lr[lr], -lr))  # validation only
        runs = [x for x in r["runs"] if x["arm"] == arm and x["lr"] == choice["chosen"]]
        assert r["arms"][arm] == json.loads(json.dumps(f.summarise(runs)))
        for x in runs:  # the reported test accuracy is the one at the epoch the validation split chose
            assert x["best_val_acc"] == max(x["val_acc"]) == x["val_acc"][x["best_epoch"] - 1]
    pre = [x for x in r["runs"] if x["arm"] in f.PRETRAINED_ARMS]
    assert all("replaced" in x["finetune"]["classifier"] for x in pre)
    for x in pre:  # the frozen arm froze what it says, the others nothing
        assert x["finetune"]["freeze"] == (["stem", "stages.0", "stages.1"] if x["arm"] == "frozen" else [])
        assert (x["finetune"]["frozen_params"] > 0) == (x["arm"] == "frozen")
    for arm in r.get("arm_provenance", {}):  # an arm added later has its own record, the others the main one
        assert arm in r["arms"] and r["arm_provenance"][arm]["argv"]
    if "epoch_seconds" in r:
        assert r["epoch_seconds"] == json.loads(json.dumps(f.epoch_seconds(r["runs"])))
    for key, d in f.differences(r["arms"]).items():
        assert r[key] == pytest.approx(d, abs=1e-12)


def test_arm_list() -> None:
    assert f.arm_list(None) == list(f.ARMS)
    assert f.arm_list("frozen,pretrained") == ["pretrained", "frozen"]  # ARMS order
    with pytest.raises(SystemExit, match="unknown arm 'froze'"):
        f.arm_list("froze")


def test_step_timing_times_both_networks_interleaved() -> None:
    t = f.step_timing(16, rounds=2, steps=1, batch=2)
    assert {len(v) for v in t["seconds_per_step"].values()} == {2}
    assert t["frozen_over_trained"] == t["median_seconds_per_step"]["frozen"] / t["median_seconds_per_step"][
        "pretrained"] > 0
    committed = RESULTS / "step_timing_full.json"
    if committed.exists():
        c = json.loads(committed.read_text())
        assert c["provenance"]["argv"] and c["frozen"] == f.FREEZE["frozen"]
        assert c["frozen_over_trained"] == pytest.approx(
            c["median_seconds_per_step"]["frozen"] / c["median_seconds_per_step"]["pretrained"])
