"""experiments/tour_recipe.py: the arms are the tour's recipe (with and without EMA), the pre-registered rule decides
on validation only, and the committed results follow from their per-run records (seconds, no training)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import tour_recipe as t

from mbconv.chapters.train import tour_run_config

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results" / "tour_recipe"


def test_arms_are_the_tour_recipe_with_and_without_ema(tmp_path) -> None:
    tour = tour_run_config(SimpleNamespace(quick=False, out=tmp_path))
    base, ema = (t.arm_config(arm, 2, 30, tmp_path) for arm in ("baseline", "ema"))
    assert (base.ema_decay, ema.ema_decay) == (0.0, t.EMA_DECAY)
    for cfg in (base, ema):
        assert (cfg.model, cfg.data, cfg.resolution, cfg.width_mult, cfg.overrides) == (
            tour.model, tour.data, tour.resolution, tour.width_mult, tour.overrides)
        assert (cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.label_smoothing, cfg.batch_size, cfg.epochs) == (
            tour.lr, tour.weight_decay, tour.warmup_epochs, tour.label_smoothing, tour.batch_size, 30)
        assert cfg.seed == 2 and cfg.resume and cfg.extra_train["tune_threads"] is False
    assert base.out != ema.out
    # the chosen decay averages about 4 epochs of the tour's 56 steps per epoch
    assert 3.5 < 1 / (1 - t.EMA_DECAY) / (3600 // 64) < 4.5


def fake_run(arm: str, seed: int, val: float, test: float, weights: str = "raw") -> dict:
    return {"arm": arm, "seed": seed, "val_acc": val, "test_acc": test, "train_seconds": 100.0 + seed,
            "last_test_acc": test, "chosen_epoch": 20 + seed, "weights": weights}


def test_rule_decides_on_validation_and_a_tie_keeps_the_baseline() -> None:
    base = [fake_run("baseline", s, 0.98, 0.97) for s in range(3)]
    tie = t.summarise(base + [fake_run("ema", s, 0.98, 0.99, "ema") for s in range(3)])
    assert not t.decide(tie, binding=True)["adopt_ema"]  # higher test accuracy does not matter
    better = t.summarise(base + [fake_run("ema", s, 0.98 + (s == 1) * 0.0025, 0.90) for s in range(3)])
    d = t.decide(better, binding=True)
    assert d["adopt_ema"] and d["ema_mean_val_acc"] == pytest.approx(0.98 + 0.0025 / 3)
    assert d["ema_minus_baseline"]["test_acc"]["mean"] == pytest.approx(-0.07)  # reported, not used
    assert better["ema"]["ema_chosen"] == 0 and tie["ema"]["ema_chosen"] == 3
    assert list(better["ema"]["seeds"]) == ["0", "1", "2"] and better["baseline"]["mean_chosen_epoch"] == 21


def test_unknown_arm_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["tour_recipe.py", "--arms", "emma"])
    with pytest.raises(SystemExit, match="unknown arm 'emma'"):
        t.main()


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_committed_results_follow_from_their_runs(mode: str, committed_result) -> None:
    r = committed_result(RESULTS / f"results_{mode}.json")
    assert r["provenance"]["argv"] and r["provenance"]["threads"] == 1
    runs = [run for arm in r["arms"].values() for run in arm["seeds"].values()]
    assert r["arms"] == json.loads(json.dumps(t.summarise(runs)))
    d = t.decide(r["arms"], binding=mode == "full")
    assert r["decision"]["adopt_ema"] == d["adopt_ema"] and r["decision"]["binding"] == (mode == "full")
    for run in runs:  # each run's checkpoint is the one validation chose, its record the command that trained it
        assert run["provenance"]["argv"] and run["provenance"]["threads"] == 1
        curve = run["ema_val_curve"] if run["weights"] == "ema" else run["val_curve"]
        assert run["val_acc"] == curve[run["chosen_epoch"] - 1]
        assert run["val_acc"] == max(max(run["val_curve"]), max(v or 0.0 for v in run["ema_val_curve"]))
        assert run["val_acc_reevaluated"] == pytest.approx(run["val_acc"], abs=0.0026)  # one image of 400 at most
        assert (run["weights"] == "ema") <= (run["arm"] == "ema")
