"""mbconv.latency_search: the latency-constrained compound-scaling search, with a deterministic fake timer."""

import pytest
import torch

from mbconv.cost import spec_cost
from mbconv.latency_search import LatencySearch, fig_latency_search, latency_search, measure_latency, time_calls
from mbconv.scaling import compound_scale
from mbconv.zoo import get_spec


def _fake_time(spec, batch):
    """Deterministic latency: 1 ms per 10 M MACs (monotone in phi, like a real machine but noise-free)."""
    return batch * spec_cost(spec).macs / 1e7


def test_latency_search_picks_largest_under_budget():
    base = get_spec("efficientnet_b0")
    budget = 20.0  # B0 itself (0.39 G MACs) is 38.6 ms here: the answer is a negative phi
    r = latency_search(base, budget, time_fn=_fake_time)
    assert isinstance(r, LatencySearch)
    assert r.best["latency_ms"] <= budget and r.best["meets"]
    assert r.next_over is not None and r.next_over["latency_ms"] > budget
    assert r.next_over["phi"] == pytest.approx(r.best["phi"] + 0.25)  # the next grid point was timed, and is over
    assert _fake_time(compound_scale(base, r.best["phi"]), 1) == pytest.approx(r.best["latency_ms"])
    assert r.best_spec.resolution == r.best["resolution"]
    assert len(r.rows) < 15  # coarse-then-fine: far fewer timings than the 41-point grid
    # every timed phi below the chosen one is under budget, every one above it over
    assert all(row["meets"] == (row["phi"] <= r.best["phi"]) for row in r.rows)


def test_latency_search_errors_and_grid_end():
    base = get_spec("efficientnet_b0")
    with pytest.raises(ValueError, match="below the smallest model.*phi -4"):
        latency_search(base, 0.5, time_fn=_fake_time)
    with pytest.raises(ValueError, match="invalid latency budget"):
        latency_search(base, -1, time_fn=_fake_time)
    r = latency_search(base, 1e9, phis=[-1, 0], time_fn=_fake_time)
    assert r.best["phi"] == 0 and r.next_over is None and "not reached" in r.note



def test_time_calls_counts_rounds_after_warmup():
    calls = []
    ts = time_calls(lambda: calls.append(1), rounds=3, warmup=2)
    assert len(ts) == 3 and len(calls) == 5 and all(t >= 0 for t in ts)


def test_measure_latency_backends_and_bad_backend():
    torch.set_num_threads(1)
    spec = get_spec("ds_r1_k3_s1_c8;ir_r1_k3_s2_e4_c16", num_classes=3, resolution=16)
    assert measure_latency(spec, rounds=1, warmup=0) > 0
    pytest.importorskip("onnxruntime")
    assert measure_latency(spec, backend="onnx", rounds=1, warmup=0) > 0
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        measure_latency(spec, backend="tpu", rounds=1, warmup=0)


def test_fig_latency_search(tmp_path):
    r = latency_search(get_spec("efficientnet_b0"), 20.0, time_fn=_fake_time)
    path = fig_latency_search(r, tmp_path / "fig.png")
    assert path.stat().st_size > 1000
