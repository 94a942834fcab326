"""The committed experiment results stay reproducible: their paired comparisons (common.paired's schema) and tables
are what the scripts compute from the per-seed data committed beside them. Seconds, no training."""

import json
import math
from pathlib import Path

import pytest
from common import paired, paired_by_key

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"
SCHEMA = {"n", "mean", "sd", "ci95", "t", "p_ttest", "p_wilcoxon"}

pytest.importorskip("scipy")


def load(rel: str) -> dict:
    return json.loads((RESULTS / rel).read_text())


def same(stored: dict, computed: dict) -> bool:
    return set(stored) >= SCHEMA and all(
        stored[k] == computed[k] or (math.isnan(stored[k]) and math.isnan(computed[k])) for k in SCHEMA)


def per_seed(model: dict) -> dict[int, float]:
    return dict(zip(model["seeds"], model["per_seed_final_acc"]))


@pytest.mark.parametrize("mode", ["full", "quick", "full_e40_p10", "full_rerun17"])
def test_mnist1d_benchmark(mode: str) -> None:
    import mnist1d_benchmark as g

    r = load(f"mnist1d_benchmark/results_{mode}.json")
    m = r["models"]
    assert same(r["mbconv_vs_cnn"], paired_by_key(per_seed(m["mbconv1d_se4"]), per_seed(m["cnn1d_plain"])))
    if "mbconv_vs_cnn_w0.5" in r:
        assert same(r["mbconv_vs_cnn_w0.5"],
                    paired_by_key(per_seed(m["mbconv1d_se4"]), per_seed(m["cnn1d_plain_w0.5"])))
    md = (g._markdown(m, f"{mode} mode, main comparison", r["epochs"]) + "\n"
          + g._markdown(r["pareto"], f"{mode} mode, Pareto front", r["pareto_epochs"]))
    assert md == (RESULTS / f"mnist1d_benchmark/table_{mode}.md").read_text()


@pytest.mark.parametrize("mode", ["full", "quick", "full_3seeds_oldinit"])
def test_volumes3d(mode: str) -> None:
    import volumes3d as g

    r = load(f"volumes3d/results_{mode}.json")
    m = r["models"]
    assert same(r["verdict"]["paired_small_vs_full_width"],
                paired_by_key(per_seed(m["mbconv3d_small"]), per_seed(m["cnn3d_plain"])))
    assert g._markdown(m, r["mode"], r["epochs"]) == (RESULTS / f"volumes3d/table_{mode}.md").read_text()


@pytest.mark.parametrize("mode", ["full", "quick"])
def test_se_gates_pruning(mode: str) -> None:
    for res in load(f"se_gates_pruning/{mode}/results.json")["results"].values():
        sv = res["se_vs_nose"]
        assert same(sv["diff"], paired(sv["acc_se"], sv["acc_nose"]))


@pytest.mark.parametrize("tag, data, depth", [("quick", "mnist1d", None), ("full", "mnist1d", 32),
                                              ("full", "mnist5k", 32)])
def test_se_placement_quant(tag: str, data: str, depth: int | None) -> None:
    """The summary's per-configuration paired differences, from the committed per-net rows (one depth of the full
    run: all of it takes ~10 s)."""
    import se_placement_quant as f

    s = load(f"se_placement_quant/summary_{tag}.json")
    rows = load(f"se_placement_quant/rows_{tag}.json")
    depths = [depth] if depth else s["depths"]
    new = f.summarize(rows, tag == "quick", depths, s["seeds"], data)["pre_minus_post"]
    stored = {k: v for k, v in s[data]["pre_minus_post"].items() if any(k.startswith(f"L{L}_") for L in depths)}
    assert set(new) == set(stored) and len(new) >= 6
    for k, v in stored.items():
        assert same(v["output_db"], new[k]["output_db"]) and same(v["drop_pt"], new[k]["drop_pt"]), k
