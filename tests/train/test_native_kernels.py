"""The trainer's `native_kernels` switch: the fused BN + activation kernels and the native depthwise kernels run in
its training steps where built, not at all when switched off, and each metrics row records which."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mbconv.layers.depthwise as depthwise
import mbconv.layers.memory as memory
from mbconv import create_model
from mbconv.layers.native import native_enabled
from mbconv.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_train_scripts"))
from tinytrain import make_data  # noqa: E402


def count_native_depthwise(monkeypatch) -> list[bool]:  # noqa: ANN001
    """Every depthwise layer's answer to "take the native kernels?" during what follows."""
    answers: list[bool] = []
    real = depthwise.native_dw_applies

    def counting(*args, **kwargs) -> bool:
        answers.append(real(*args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(depthwise, "native_dw_applies", counting)
    return answers


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_runs_and_records_the_native_kernels(enabled, monkeypatch):
    calls = []
    real = memory.native_bn_act_apply

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(memory, "native_bn_act_apply", counting)
    dw = count_native_depthwise(monkeypatch)
    built = native_enabled()
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, progress="none", tune_threads=False, native_kernels=enabled)
    row = Trainer(model, make_data(16), make_data(8, seed=1), cfg).fit()
    assert row["native_kernels"] is (enabled and built)
    assert bool(calls) is (enabled and built)
    assert any(dw) is (enabled and built)
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
        assert "note: native kernels (BN + activation, depthwise) off: build failed" in err and "PyTorch's ops" in err
    finally:
        monkeypatch.undo()
        native.reset_native()


def test_memory_lean_off_keeps_the_depthwise_kernels(monkeypatch):
    """With memory_lean="off" no lean layer takes the BN kernels, but the depthwise layers still take theirs: the
    row says the kernels were on (where built)."""
    bn_calls = []
    monkeypatch.setattr(memory, "native_bn_act_apply", lambda *a, **k: bn_calls.append(1))
    dw = count_native_depthwise(monkeypatch)
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, progress="none", tune_threads=False, memory_lean="off")
    row = Trainer(model, make_data(16), make_data(8, seed=1), cfg).fit()
    assert row["native_kernels"] is native_enabled()
    assert not bn_calls and any(dw) is native_enabled()
