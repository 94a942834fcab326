"""experiments/tour_accuracy_seeds.py: the pre-registered criterion over seven paired seeds, the extraction of the
before arm's code, and the committed result against its own runs (seconds, no training)."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import tour_accuracy_seeds as s

ROOT = Path(__file__).resolve().parents[2]


def test_decide_uses_seven_seeds_and_their_bound() -> None:
    before = {str(i): 0.982 for i in range(7)}
    same = s.decide({str(i): 0.980 for i in range(7)}, before)  # -0.2 pt: inside about 0.45 pt
    assert same["unchanged"] and same["two_se"] == pytest.approx(2 * math.sqrt(2 * 0.982 * 0.018 / 1000 / 7))
    assert same["now_mean_at_least_98"] and same["before_mean_at_least_98"]
    worse = s.decide({str(i): 0.976 for i in range(7)}, before)  # -0.6 pt: outside
    assert not worse["unchanged"] and not worse["now_mean_at_least_98"]
    with pytest.raises(ValueError, match="seeds differ"):
        s.decide({"0": 0.98}, before)


def test_extract_gives_the_commit_tree(tmp_path: Path) -> None:
    try:
        subprocess.run(["git", "cat-file", "-e", s.BEFORE_COMMIT], cwd=ROOT, check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("not a git clone with the before commit")
    dest = s.extract(s.BEFORE_COMMIT, tmp_path / "code")
    assert (dest / "src" / "mbconv" / "__init__.py").exists() and (dest / "experiments" / "tour_recipe.py").exists()
    assert not (dest / "src" / "mbconv" / "layers" / "native_depthwise.py").exists()  # before the sixth session


def test_committed_result_follows_from_its_runs() -> None:
    path = ROOT / "experiments" / "results" / "tour_recipe" / "seeds_s8_full.json"
    if not path.exists():
        pytest.skip("the full run has not been committed yet")
    res = json.loads(path.read_text())
    assert res["seeds"] == [3, 4, 5, 6] and res["epochs"] == 30
    for arm in ("before", "now"):
        assert {k: v for k, v in res["test_acc"][arm].items() if int(k) >= 3} == \
            {k: r["test_acc"] for k, r in res["runs"][arm].items()}
    again = s.decide(res["test_acc"]["now"], res["test_acc"]["before"])
    assert again["unchanged"] == res["decision"]["unchanged"] and sorted(res["test_acc"]["now"], key=int) == \
        [str(i) for i in range(7)]
    assert math.isclose(again["paired_difference"]["mean"], res["decision"]["paired_difference"]["mean"])
