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
def test_committed_results_follow_from_their_runs(mode: str) -> None:
    path = RESULTS / f"results_{mode}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not committed")
    r = json.loads(path.read_text())
    assert r["provenance"]["argv"] and r["config"]["weights"]["sha256"]
    for arm in f.ARMS:
        choice = r["lr_choice"][arm]
        by_lr = {float(k): v for k, v in choice["val_acc_by_lr"].items()}
        assert choice["chosen"] == max(by_lr, key=lambda lr: (by_lr[lr], -lr))  # validation only
        runs = [x for x in r["runs"] if x["arm"] == arm and x["lr"] == choice["chosen"]]
        assert r["arms"][arm] == json.loads(json.dumps(f.summarise(runs)))
        for x in runs:  # the reported test accuracy is the one at the epoch the validation split chose
            assert x["best_val_acc"] == max(x["val_acc"]) == x["val_acc"][x["best_epoch"] - 1]
    pre = [x for x in r["runs"] if x["arm"] == "pretrained"]
    assert all("replaced" in x["finetune"]["classifier"] for x in pre)
