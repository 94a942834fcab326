"""Experiment F's own pieces (experiments/se_placement_quant.py): the 2-D stack, the PTQ grids, and the summary
over datasets whose grids differ (the 2-D arm calibrates by MSE only)."""

import pytest
import torch

from mbconv.net import MBConvNet


@pytest.fixture(scope="module")
def f():
    import se_placement_quant  # experiments/ is on sys.path (conftest.py)

    return se_placement_quant


def test_2d_stack_runs_its_blocks_on_7x7_maps(f) -> None:
    net = MBConvNet(f.stack_spec(4, "se_pre", "mnist5k")).eval()
    sizes = []
    for b in (b for stage in net.stages for b in stage):
        b.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        y = net(torch.randn(2, 1, f.INPUT_RES["mnist5k"], f.INPUT_RES["mnist5k"]))
    assert y.shape == (2, 10) and sizes == [(7, 7)] * 4
    assert MBConvNet(f.stack_spec(4, "se_pre", "mnist1d"))(torch.randn(2, 1, 40)).shape == (2, 10)


def test_grids_cover_bits_granularity_and_placement(f) -> None:
    full, mse = f.grid(False), f.grid(False, f.CALIBS["mnist5k"])
    assert len(full) == 96 and len(mse) == 48
    assert len({f.cfg_key(c) for c in full}) == 96  # distinct keys: no configuration overwrites another
    assert {(c["wbits"], c["abits"], c["a_per_channel"], c["placement"]) for c in mse} == {
        (c["wbits"], c["abits"], c["a_per_channel"], c["placement"]) for c in full}
    assert {c["a_calib"] for c in mse} == {"mse"}


def _row(data: str, depth: int, variant: str, seed: int, keys: list[str], db: float) -> dict:
    return {"data": data, "depth": depth, "variant": variant, "seed": seed, "fp32_acc": 0.98, "inequality": [],
            "ptq": {k: {"output_db": db, "acc": 0.9, "lin_sum_rule_db": db - 3} for k in keys}}


def test_summary_pairs_by_seed_per_dataset_with_different_grids(f) -> None:
    k1 = ["W8A4_tensor_runtime_mse", "W8A4_tensor_runtime_minmax"]
    k2 = ["W8A4_tensor_runtime_mse"]  # the 2-D arm has no min/max configurations
    rows = []
    for s in range(3):
        for v, off in (("se_post", 0.0), ("se_pre", 1.0 + 0.1 * s), ("no_se", 2.0)):
            rows.append(_row("mnist1d", 4, v, s, k1, 10.0 + s + off))
            rows.append(_row("mnist5k", 4, v, s, k2, 20.0 + s - off))
    rows = [r for r in rows if not (r["data"] == "mnist5k" and r["variant"] == "se_pre" and r["seed"] == 2)]
    one = f.summarize(rows, False, [4], [0, 1, 2], "mnist1d")
    two = f.summarize(rows, False, [4], [0, 1, 2], "mnist5k")
    assert set(one["pre_minus_post"]) == {"L4_" + k for k in k1} and set(two["pre_minus_post"]) == {"L4_" + k2[0]}
    d1, d2 = one["pre_minus_post"]["L4_" + k2[0]]["output_db"], two["pre_minus_post"]["L4_" + k2[0]]["output_db"]
    assert d1["n"] == 3 and d1["mean"] == pytest.approx(1.1)
    assert d2["n"] == 2 and d2["mean"] == pytest.approx(-1.05)  # seed 2 has no SE-pre net: not paired
    assert two["sign_count"]["L4"]["configs"] == 1 and two["sign_count"]["L4"]["pre_better"] == 0
