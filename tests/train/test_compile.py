"""The trainer's `compile` switch: the training step runs through torch.compile with the depthwise layers traced into
the native operators (layers/compiled.py), the thread tuner stays off, rows record it, and checkpoints and evaluation
use the plain model. The compiler backend is aot_eager here (the graph as traced, no inductor build: seconds);
tests/layers/test_compiled.py runs inductor itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import mbconv.layers.depthwise as depthwise
from mbconv import create_model
from mbconv.checkpoint import load_checkpoint
from mbconv.cli import main
from mbconv.layers.native import native_enabled
from mbconv.train import TrainConfig, Trainer
from mbconv.train.trainer import COMPILE_OPTIONS_CPU

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_train_scripts"))
from tinytrain import make_data  # noqa: E402


@pytest.fixture
def traced(monkeypatch) -> list[tuple]:
    """torch.compile with the aot_eager backend; returns ("options", the inductor options the trainer passed), then
    the depthwise calls traced into the operator."""
    calls: list[tuple] = []
    real_op = depthwise.compiled_dw_conv

    def counting(x, *args):  # noqa: ANN001, ANN202
        calls.append(tuple(x.shape))
        return real_op(x, *args)

    monkeypatch.setattr(depthwise, "compiled_dw_conv", counting)
    real_compile = torch.compile

    def aot_eager(model, options=None):  # noqa: ANN001, ANN202 (inductor's options mean nothing to aot_eager)
        calls.append(("options", options))
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", aot_eager)
    torch._dynamo.reset()
    return calls


def test_trainer_compiles_the_step_and_keeps_the_plain_model(traced, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, progress="none", compile=True, out_dir=str(tmp_path),
                      optimizer="adamw")
    tr = Trainer(model, make_data(16), make_data(8, seed=1), cfg, val_ds=make_data(8, seed=2))
    assert tr.net is not tr.model and hasattr(tr.net, "_orig_mod") and tr.tuner is None
    row = tr.fit()
    assert row["compiled"] is True and row["val_acc"] is not None
    assert traced[0] == ("options", COMPILE_OPTIONS_CPU)  # CPU: inductor's C++ wrapper
    assert bool(traced[1:]) is native_enabled()  # depthwise layers traced into mbconv::dw_conv where built
    fresh = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    load_checkpoint(tmp_path / "last", fresh)  # the plain model's keys (strict), not the compiled wrapper's
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tr.model.state_dict().values()))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["compiled"] is True for r in rows)


def test_default_trainer_is_eager_and_records_it() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    tr = Trainer(model, make_data(16), None, TrainConfig(epochs=1, batch_size=8, progress="none"))
    assert tr.net is tr.model
    assert tr.fit()["compiled"] is False


def test_cli_compile_reaches_the_rows(traced, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--model", "efficientnet_b0", "--width-mult", "0.25", "--depth-mult", "0.25", "--data",
               "digits8", "--epochs", "1", "--batch-size", "64", "--resolution", "8", "--out", str(out), "--compile"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["compiled"] is True for r in rows)
    assert "torch.compile compiles the training step" in capsys.readouterr().err  # the first step's wait explained


def test_compile_without_a_cxx_compiler_is_a_one_line_error(monkeypatch) -> None:
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    model = create_model("efficientnet_b0", num_classes=4, width_mult=0.25, depth_mult=0.25)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        Trainer(model, make_data(16), None, TrainConfig(epochs=1, batch_size=8, progress="none", compile=True))
