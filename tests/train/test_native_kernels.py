"""The trainer's `native_kernels` switch: the fused BN + activation kernels run in its training steps where built,
not at all when switched off, and each metrics row records which."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mbconv.layers.memory as memory
from mbconv import create_model
from mbconv.layers.native import native_enabled
from mbconv.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_train_scripts"))
from tinytrain import make_data  # noqa: E402


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_runs_and_records_the_native_kernels(enabled, monkeypatch):
    calls = []
    real = memory.native_bn_act_apply

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(memory, "native_bn_act_apply", counting)
    built = native_enabled()
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, progress="none", tune_threads=False, native_kernels=enabled)
    row = Trainer(model, make_data(16), make_data(8, seed=1), cfg).fit()
    assert row["native_kernels"] is (enabled and built)
    assert bool(calls) is (enabled and built)
    if calls:
        assert "silu" in calls
    assert native_enabled() is built  # the switch ends with fit()


def test_trainer_says_why_the_kernels_are_off(monkeypatch, capsys, tmp_path):
    import mbconv.layers.native as native

    monkeypatch.setenv("MBCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    native.reset_native()
    try:
        torch.manual_seed(0)
        model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
        cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, progress="plain", tune_threads=False)
        row = Trainer(model, make_data(16), make_data(8, seed=1), cfg).fit()
        assert row["native_kernels"] is False
        err = capsys.readouterr().err
        assert "note: native BN + activation kernels off: build failed" in err and "PyTorch's ops" in err
    finally:
        monkeypatch.undo()
        native.reset_native()


def test_row_says_off_when_the_lean_layers_are_off():
    """The kernels run inside the lean layers: with memory_lean="off" no layer can take them, and the row says so."""
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, progress="none", tune_threads=False, memory_lean="off")
    row = Trainer(model, make_data(16), make_data(8, seed=1), cfg).fit()
    assert row["native_kernels"] is False
