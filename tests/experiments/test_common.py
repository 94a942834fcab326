"""experiments/common.py: the paired statistics (against hand values and scipy), the metrics.jsonl reader, the
training recipe and the seed/sizing flags."""

import argparse
import json
import math

import pytest
from common import (
    RECIPE,
    Recipe,
    markdown_table,
    mean_ci_text,
    mode_config,
    paired,
    paired_by_key,
    read_metrics,
    seed_list,
    t_ci,
)

from mbconv.train import TrainConfig
from mbconv.workflow import RunConfig

stats = pytest.importorskip("scipy.stats")


# -- paired statistics --------------------------------------------------------------------------------------------
def test_paired_matches_hand_values() -> None:
    # d = 1..5: mean 3, sd sqrt(2.5), t = 3 / (sd / sqrt 5) = sqrt 18; every difference positive, so the exact
    # two-sided Wilcoxon p is 2 / 2^5
    r = paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5)
    assert set(r) == {"n", "mean", "sd", "ci95", "t", "p_ttest", "p_wilcoxon"}
    assert r["n"] == 5 and r["mean"] == 3.0
    assert r["sd"] == pytest.approx(math.sqrt(2.5))
    assert r["t"] == pytest.approx(math.sqrt(18))
    assert r["ci95"] == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5))  # t_{0.975, 4} = 2.7764451
    assert r["p_wilcoxon"] == pytest.approx(1 / 16)


def test_paired_matches_scipy() -> None:
    a = [98.9, 99.3, 99.1, 99.4, 98.7, 99.0, 99.2]
    b = [98.8, 99.0, 99.3, 99.1, 98.2, 98.9, 98.6]
    r = paired(a, b)
    d = [x - y for x, y in zip(a, b)]
    rel = stats.ttest_rel(a, b)
    assert r["t"] == pytest.approx(rel.statistic, rel=1e-12)
    assert r["p_ttest"] == pytest.approx(rel.pvalue, rel=1e-12)
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    assert r["mean"] == pytest.approx(m, rel=1e-12) and r["sd"] == pytest.approx(sd, rel=1e-12)
    assert r["ci95"] == pytest.approx(stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d)), rel=1e-12)
    assert paired(b, a)["mean"] == pytest.approx(-m) and paired(b, a)["p_ttest"] == pytest.approx(r["p_ttest"])


def test_paired_marks_undefined_values_nan() -> None:
    one = paired([2.0], [1.5])
    assert one["n"] == 1 and one["mean"] == 0.5
    assert all(math.isnan(one[k]) for k in ("sd", "ci95", "t", "p_ttest", "p_wilcoxon"))
    same = paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # every difference 0.5: no t-test
    assert same["sd"] == 0.0 and same["ci95"] == 0.0 and math.isnan(same["t"]) and math.isnan(same["p_ttest"])
    four = paired([1.0, 2.0, 4.0, 3.0], [0.0, 0.5, 1.0, 2.5])
    assert not math.isnan(four["p_ttest"]) and math.isnan(four["p_wilcoxon"])  # Wilcoxon from 5 pairs on
    zeros = paired([1.0] * 6, [1.0] * 6)
    assert zeros["mean"] == 0.0 and math.isnan(zeros["p_wilcoxon"]) and math.isnan(zeros["p_ttest"])


def test_paired_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired([], [])
    with pytest.raises(ValueError, match="no values"):
        t_ci([])


def test_paired_by_key_pairs_the_common_seeds_in_order() -> None:
    a = {3: 10.0, 0: 1.0, 1: 4.0, 7: 100.0}
    b = {1: 2.0, 0: 0.0, 3: 5.0, 5: -1.0}
    assert paired_by_key(a, b) == paired([1.0, 4.0, 10.0], [0.0, 2.0, 5.0])
    with pytest.raises(ValueError, match="no common keys"):
        paired_by_key({0: 1.0}, {1: 1.0})


def test_t_ci() -> None:
    assert t_ci([4.0])[0] == 4.0 and math.isnan(t_ci([4.0])[1])
    m, h = t_ci([1.0, 3.0])  # sd sqrt 2, t_{0.975, 1} = 12.7062
    assert m == 2.0 and h == pytest.approx(12.706205 * math.sqrt(2) / math.sqrt(2), rel=1e-6)


# -- reporting ----------------------------------------------------------------------------------------------------
def test_mean_ci_text_and_markdown_table() -> None:
    assert mean_ci_text(98.456, 0.2049) == "98.46 +- 0.20" and mean_ci_text(97.8, math.nan) == "97.80"
    assert mean_ci_text(1.0, 0.25, digits=1) == "1.0 +- 0.2"
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]]) == ["| a | b |", "|---|---|", "| 1 | x |",
                                                                   "| 2.5 | y |"]


# -- run directories ----------------------------------------------------------------------------------------------
def test_read_metrics_reads_rows_in_order(tmp_path) -> None:
    rows = [{"epoch": 0, "test_acc": 0.5, "step": 10}, {"epoch": 1, "test_acc": 0.75, "step": 20}]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert read_metrics(tmp_path) == rows
    assert read_metrics(str(tmp_path))[-1]["test_acc"] == 0.75
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing")


# -- the recipe ---------------------------------------------------------------------------------------------------
def test_recipe_is_what_the_experiments_ran_with() -> None:
    assert RECIPE.fields() == {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "warmup_epochs": 1.0,
                               "label_smoothing": 0.1, "batch_size": 64}


def test_recipe_builds_train_and_run_configs(tmp_path) -> None:
    tc = RECIPE.train_config(8, 3, tmp_path, resume=True, progress="none", save_best=False)
    assert tc == TrainConfig(epochs=8, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=0.05,
                             warmup_epochs=1.0, label_smoothing=0.1, seed=3, out_dir=str(tmp_path), resume=True,
                             progress="none", save_best=False)
    assert RECIPE.train_config(2, 0, tmp_path, warmup_epochs=0.5).warmup_epochs == 0.5  # an override wins
    rc = RECIPE.run_config(data="mnist1d", epochs=4, batch_size=128, seed=1)
    assert rc == RunConfig(data="mnist1d", epochs=4, batch_size=128, seed=1, lr=3e-3, optimizer="adamw",
                           weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.1)
    assert Recipe(lr=1e-3).run_config().lr == 1e-3


# -- flags --------------------------------------------------------------------------------------------------------
def test_seed_list() -> None:
    assert seed_list("0-4") == [0, 1, 2, 3, 4]
    assert seed_list("0,2") == [0, 2] and seed_list("3") == [3] and seed_list("0-1,5") == [0, 1, 5]
    for bad in ("a", "1-2-3", "0-x"):
        with pytest.raises(ValueError, match="is not a seed"):
            seed_list(bad)


def test_mode_config() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--extended", action="store_true")
    q, f, e = {"seeds": 1}, {"seeds": 3}, {"seeds": 5}
    mode, cfg = mode_config(ap, ap.parse_args(["--quick"]), q, f, e)
    assert (mode, cfg) == ("quick", q) and cfg is not q  # a copy: a script may change it
    assert mode_config(ap, ap.parse_args([]), q, f, e) == ("full", f)
    assert mode_config(ap, ap.parse_args(["--extended"]), q, f, e) == ("extended", e)
    with pytest.raises(SystemExit):
        mode_config(ap, ap.parse_args(["--quick", "--extended"]), q, f, e)
