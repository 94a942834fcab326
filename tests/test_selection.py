"""Model selection reads the validation split only: the trainer's best/, fit_spec's best epoch, the checkpoint a run
directory stands for, and what `mbconv eval` says about it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mbconv.checkpoint import read_meta
from mbconv.data import ArrayDataset, DatasetInfo
from mbconv.train import TrainConfig, Trainer
from mbconv.workflow import describe_selection, find_checkpoint, fit_spec
from mbconv.zoo_nd import mbconv1d_se4_spec

sys.path.insert(0, str(Path(__file__).parent / "_train_scripts"))
from tinytrain import TinyMLP, make_data  # noqa: E402

# scripted accuracies per epoch: the validation split peaks at epoch 1, the test split at epoch 2
VAL_ACC = [0.50, 0.90, 0.70]
TEST_ACC = [0.60, 0.55, 0.95]


def scripted(monkeypatch, val_ds, test_ds) -> None:
    """Trainer.evaluate returns the scripted accuracy of the epoch in progress for each split."""

    def fake(self, ds, use_ema=False):
        acc = {id(val_ds): VAL_ACC, id(test_ds): TEST_ACC}[id(ds)][self.epoch]
        return {"loss": 1 - acc, "acc": acc, "count": len(ds)}

    monkeypatch.setattr(Trainer, "evaluate", fake)


def config(out, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=3, batch_size=8, lr=0.05, seed=0, out_dir=str(out), progress="none"), **kw})


def test_best_is_the_validation_peak_not_the_test_peak(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    train, val, test = make_data(32), make_data(16, seed=1), make_data(16, seed=2)
    scripted(monkeypatch, val, test)
    weights = []
    torch.manual_seed(0)
    t = Trainer(TinyMLP(), train, test, config(tmp_path), val_ds=val,
                on_epoch_end=lambda tr, row: weights.append({k: v.clone() for k, v in tr.model.state_dict().items()}))
    final = t.fit()
    assert final["best_epoch"] == 1 and final["best_val_acc"] == 0.90 and final["test_acc_at_best"] == 0.55
    meta = read_meta(tmp_path / "best")
    assert meta["selection"] == {"split": "val", "metric": "val_acc", "epoch": 1, "value": 0.90}
    assert meta["epoch"] == 2  # epochs done when it was saved: epoch index 1 finished
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert all(torch.equal(saved[k], weights[1][k]) for k in weights[1])
    assert not all(torch.equal(saved[k], weights[2][k]) for k in weights[2])
    rows = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in rows] == VAL_ACC and [r["test_acc"] for r in rows] == TEST_ACC
    assert find_checkpoint(tmp_path) == tmp_path / "best"  # the run stands for its validation-chosen checkpoint
    assert "chosen on val_acc: epoch 1" in describe_selection(tmp_path / "best")
    assert find_checkpoint(tmp_path, prefer="last") == tmp_path / "last"
    with pytest.raises(ValueError, match="prefer"):
        find_checkpoint(tmp_path, prefer="test")


def test_without_a_validation_split_no_best_is_kept(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    train, test = make_data(32), make_data(16, seed=2)
    scripted(monkeypatch, object(), test)
    torch.manual_seed(0)
    final = Trainer(TinyMLP(), train, test, config(tmp_path)).fit()
    assert final["best_epoch"] is None and final["test_acc"] == TEST_ACC[-1]
    assert not (tmp_path / "best").exists()
    assert read_meta(tmp_path / "last")["selection"]["split"] is None
    assert find_checkpoint(tmp_path) == tmp_path / "last"
    assert "not selected" in describe_selection(tmp_path / "last")


def test_an_old_test_selected_best_is_not_what_a_run_stands_for(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    train, val, test = make_data(32), make_data(16, seed=1), make_data(16, seed=2)
    scripted(monkeypatch, val, test)
    torch.manual_seed(0)
    Trainer(TinyMLP(), train, test, config(tmp_path), val_ds=val).fit()
    meta_path = tmp_path / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["selection"]  # what best/ of the trainer before validation splits looked like
    meta_path.write_text(json.dumps(meta))
    assert find_checkpoint(tmp_path) == tmp_path / "last"
    assert "test split" in describe_selection(tmp_path / "best")


def test_fit_spec_reports_test_at_the_validation_chosen_epoch(tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    info = DatasetInfo("toy", 3, 1, 1, (16,), "toy")
    g = torch.Generator().manual_seed(0)
    train, val, test = (ArrayDataset(torch.randn(n, 1, 16, generator=g), torch.arange(n) % 3, info)
                        for n in (24, 12, 12))
    scripted(monkeypatch, val, test)
    monkeypatch.setattr("mbconv.train.evaluate", lambda model, ds: {"loss": 0.0, "acc": TEST_ACC[-1]})
    r = fit_spec(mbconv1d_se4_spec(), train, test, tmp_path / "run", epochs=3, batch_size=8, val_ds=val)
    assert (r["best_epoch"], r["best_val_acc"], r["best_acc"]) == (1, 0.90, 0.55)
    assert r["final_acc"] == 0.95 and r["selection"] == "val_acc"
    assert [h["val_acc"] for h in r["history"]] == VAL_ACC
    r2 = fit_spec(mbconv1d_se4_spec(), train, test, tmp_path / "run2", epochs=1, batch_size=8)
    assert r2["best_acc"] is None and r2["best_epoch"] is None  # no validation split: nothing is chosen
