"""The per-epoch thread-count choice: probes alternate counts, keep the faster, back off while the choice holds,
decide at once on a decisive pair; the Trainer uses it only where a run may change threads, and restores them."""

from __future__ import annotations

import pytest
import torch

from mbconv.train import ThreadTuner


def run_epoch(tuner: ThreadTuner, epoch: int, cost: dict[int, float], steps: int = 8) -> list[int]:
    """Drive one epoch with a fake step time per thread count; returns the count of every step."""
    used = []
    tuner.start_epoch(epoch)
    for _ in range(steps):
        tuner.before_step()
        n = torch.get_num_threads()
        used.append(n)
        tuner.after_step(cost[n])
    return used


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_keeps_the_faster_count_and_backs_off(threads):
    t = ThreadTuner(max_threads=2, pairs=2, skip=1)
    used = run_epoch(t, 0, {2: 0.10, 1: 0.12})
    assert used[0] == 2 and sorted(used[1:5]) == [1, 1, 2, 2] and used[5:] == [2, 2, 2]
    assert t.choice == 2 and t.next_probe == 2  # confirmed: probe again after 2 epochs
    assert run_epoch(t, 1, {2: 0.10, 1: 0.12}) == [2] * 8  # no probe this epoch
    run_epoch(t, 2, {2: 0.10, 1: 0.12})
    assert t.next_probe == 6
    # the machine gets loaded: the next probe switches to one thread and probes again the next epoch
    used = run_epoch(t, 6, {2: 0.30, 1: 0.20})
    assert t.choice == 1 and used[-1] == 1 and t.next_probe == 7


def test_a_decisive_pair_decides_at_once(threads):
    t = ThreadTuner(max_threads=2, pairs=3, skip=1)
    used = run_epoch(t, 0, {2: 3.4, 1: 0.2})  # libgomp spin-waiting on a loaded machine
    assert used[:3] == [2, 1, 2] and used[3:] == [1] * 5 and t.choice == 1
    assert t.history[0]["choice"] == 1 and len(t.history[0]["2_threads_s"]) == 1


def test_needs_two_counts_and_skips_runs_that_fix_threads(monkeypatch):
    with pytest.raises(ValueError, match="at least 2 threads"):
        ThreadTuner(max_threads=1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert ThreadTuner.wanted(cpu, 1, False)
    assert not ThreadTuner.wanted(cpu, 1, True)  # deterministic: the thread count is part of a bit-exact run
    assert not ThreadTuner.wanted(cpu, 2, False)  # DDP ranks keep their threads
    assert not ThreadTuner.wanted(torch.device("meta"), 1, False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit choice is kept
    assert not ThreadTuner.wanted(cpu, 1, False)


def test_trainer_restores_threads_and_logs_the_count(tmp_path, monkeypatch, threads):
    from torch.utils.data import TensorDataset

    from mbconv.train import TrainConfig, Trainer

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    ds = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    model = torch.nn.Linear(4, 2)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, out_dir=str(tmp_path), progress="none")
    tr = Trainer(model, ds, ds, cfg, val_ds=ds)
    assert tr.tuner is not None
    row = tr.fit()
    assert row["threads"] in (1, 2) and torch.get_num_threads() == 2
    assert tr.tuner.history and tr.tuner.history[0]["epoch"] == 0
    off = Trainer(torch.nn.Linear(4, 2), ds, ds, TrainConfig(epochs=1, batch_size=8, tune_threads=False,
                                                             progress="none"))
    assert off.tuner is None
