"""experiments/tour_accuracy_rerun.py: the pre-registered criterion (two standard errors of a paired difference of
3-seed means on a 1,000-image split) and its use on per-seed accuracies (seconds, no training)."""

import json
import math
from pathlib import Path

import pytest
import tour_accuracy_rerun as r

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results" / "tour_recipe"


def test_two_se_is_the_binomial_noise_of_two_three_seed_means() -> None:
    # sqrt(2 * 0.98 * 0.02 / 1000 / 3) = 0.003615; two of it
    assert r.two_se(0.98, 3) == pytest.approx(2 * 0.0036147, rel=1e-4)
    assert r.two_se(0.98, 12) == pytest.approx(r.two_se(0.98, 3) / 2)  # 4x the seeds: half the bound


def test_compare_decides_on_the_mean_paired_difference() -> None:
    before = {"0": 0.981, "1": 0.984, "2": 0.982}
    same = r.compare({"0": 0.978, "1": 0.983, "2": 0.983}, before)  # -0.1 pt mean: inside
    assert same["unchanged"] and same["paired_difference"]["mean"] == pytest.approx(-0.001)
    assert same["now_mean_at_least_98"]
    worse = r.compare({"0": 0.970, "1": 0.975, "2": 0.976}, before)  # -0.87 pt mean: outside 0.68
    assert not worse["unchanged"] and not worse["now_mean_at_least_98"]
    assert worse["two_se"] == pytest.approx(r.two_se(statistics_mean(before), 3))
    with pytest.raises(ValueError, match="seeds differ"):
        r.compare({"0": 0.98}, before)


def statistics_mean(d: dict) -> float:
    return sum(d.values()) / len(d)


def test_committed_result_follows_from_its_runs() -> None:
    path = RESULTS / "rerun_s7_full.json"
    if not path.exists():
        pytest.skip("the full rerun has not been committed yet")
    res = json.loads(path.read_text())
    now = {s: run["test_acc"] for s, run in res["runs"].items()}
    assert sorted(now, key=int) == ["0", "1", "2"] and res["epochs"] == 30
    before = json.loads((RESULTS / "results_full.json").read_text())["arms"]["baseline"]["seeds"]
    assert res["before"]["test_acc"] == {s: before[s]["test_acc"] for s in now}
    again = r.compare(now, res["before"]["test_acc"])
    assert again["unchanged"] == res["decision"]["unchanged"]
    assert math.isclose(again["paired_difference"]["mean"], res["decision"]["paired_difference"]["mean"])
