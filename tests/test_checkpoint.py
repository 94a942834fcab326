"""Tests for mbconv.checkpoint: exact round trips, atomic replacement, clear errors, no pickle."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from mbconv.checkpoint import (
    CheckpointError,
    _decode,
    _encode,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    read_meta,
    save_checkpoint,
    verify_checkpoint,
)
from mbconv.train import ModelEma, TrainConfig, make_optimizer, make_scheduler

sys.path.insert(0, str(Path(__file__).parent / "_train_scripts"))
from tinytrain import TinyNet  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a busy 2-core box are ~100x faster single-threaded (no OpenMP spin contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_same(a, b, path="root"):
    """Deep equality with exact tensors and exact container/scalar types."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def trained_setup(kind: str, steps: int = 3):
    torch.manual_seed(0)
    model = TinyNet()
    cfg = TrainConfig(epochs=2, lr=0.01, optimizer=kind, warmup_epochs=1, weight_decay=1e-4)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=5)
    ema = ModelEma(model, 0.9)
    for _ in range(steps):
        loss = model(torch.randn(4, 3, 8, 8)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)
    return model, opt, sched, ema, cfg


def fresh_setup(cfg):
    torch.manual_seed(123)  # different init, so a passing test proves the load
    model = TinyNet()
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=5)
    return model, opt, sched, ModelEma(model, 0.9)


@pytest.mark.parametrize("kind", ["sgd", "adamw", "rmsprop"])
def test_roundtrip_exact(tmp_path, kind):
    model, opt, sched, ema, cfg = trained_setup(kind)
    spec = {"name": "tiny", "blocks": [[1, 3, 16], [6, 5, 24]], "se": 0.25}
    save_checkpoint(tmp_path / "ck", model, optimizer=opt, scheduler=sched, ema=ema,
                    extra={"epoch": 2, "step": 3, "best_metric": 0.5}, spec=spec)
    # what the RNGs produce right after saving must be reproduced after loading
    expect = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])

    m2, o2, s2, e2 = fresh_setup(cfg)
    meta = load_checkpoint(tmp_path / "ck", m2, optimizer=o2, scheduler=s2, ema=e2)
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]

    assert_same(model.state_dict(), m2.state_dict())
    assert_same(ema.state_dict(), e2.state_dict())
    assert_same(opt.state_dict(), o2.state_dict())
    assert_same(sched.state_dict(), s2.state_dict())
    assert meta["epoch"] == 2 and meta["step"] == 3 and meta["best_metric"] == 0.5
    assert meta["spec"] == spec and meta["format_version"] == 1
    # the restored optimizer keeps producing the same trajectory
    x = torch.randn(4, 3, 8, 8)
    for m, o in ((model, opt), (m2, o2)):
        m.eval()
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    assert_same(model.state_dict(), m2.state_dict())


def test_layout_and_checksums(tmp_path):
    model, opt, sched, ema, _ = trained_setup("adamw")
    path = save_checkpoint(tmp_path / "run" / "last", model, optimizer=opt, scheduler=sched, ema=ema,
                           extra={"step": 1})
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "state.safetensors"]
    meta = json.loads((path / "meta.json").read_text())
    for name in ("model.safetensors", "state.safetensors"):
        assert meta["files"][name]["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    weights = safetensors.torch.load_file(path / "model.safetensors")
    assert_same(dict(sorted(weights.items())), dict(sorted(model.state_dict().items())))
    state = safetensors.torch.load_file(path / "state.safetensors")
    assert state["rng.torch"].dtype == torch.uint8 and state["rng.numpy.keys"].dtype == torch.uint8
    assert any(k.startswith("ema.") for k in state) and any(k.startswith("optim.") for k in state)
    assert meta["optimizer"]["class"] == "AdamW" and meta["scheduler"]["class"] == "LambdaLR"
    assert read_meta(path)["step"] == 1 and read_meta(path / "meta.json")["step"] == 1
    assert verify_checkpoint(path)["step"] == 1
    assert list((tmp_path / "run").iterdir()) == [path]  # no temp dirs left behind


def test_no_pickle_on_save_or_load(tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    for mod, name in [(torch, "load"), (torch, "save"), (pickle, "load"), (pickle, "loads"),
                      (pickle, "dump"), (pickle, "dumps"), (pickle, "Unpickler"), (pickle, "Pickler")]:
        monkeypatch.setattr(mod, name, forbidden)
    model, opt, sched, ema, cfg = trained_setup("rmsprop", steps=2)
    save_checkpoint(tmp_path / "ck", model, optimizer=opt, scheduler=sched, ema=ema)
    m2, o2, s2, e2 = fresh_setup(cfg)
    load_checkpoint(tmp_path / "ck", m2, optimizer=o2, scheduler=s2, ema=e2)
    load_weights(tmp_path / "ck", m2)
    assert_same(model.state_dict(), m2.state_dict())
    for name in ("model.safetensors", "state.safetensors"):
        assert not (tmp_path / "ck" / name).read_bytes().startswith(b"\x80")  # pickle protocol header


def _saved(tmp_path):
    model, opt, sched, ema, cfg = trained_setup("sgd", steps=2)
    return save_checkpoint(tmp_path / "ck", model, optimizer=opt, scheduler=sched, ema=ema), cfg


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors"])
def test_tampered_file(tmp_path, name):
    path, cfg = _saved(tmp_path)
    data = bytearray((path / name).read_bytes())
    data[-5] ^= 0xFF
    (path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{name}.*checksum"):
        load_checkpoint(path, fresh_setup(cfg)[0])
    if name == "model.safetensors":
        with pytest.raises(CheckpointError, match=name):
            load_weights(path, TinyNet())
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors"])
def test_truncated_file(tmp_path, name):
    path, cfg = _saved(tmp_path)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{name}.*truncated"):
        load_checkpoint(path, fresh_setup(cfg)[0])


def test_missing_file_and_bad_json(tmp_path):
    path, cfg = _saved(tmp_path)
    (path / "meta.json").write_text('{"format": "mbconv-checkpoint", "format_ver')
    with pytest.raises(CheckpointError, match="meta.json.*not valid JSON"):
        load_checkpoint(path, TinyNet())
    path, cfg = _saved(tmp_path / "b")
    os.remove(path / "state.safetensors")
    with pytest.raises(CheckpointError, match="state.safetensors.*missing"):
        load_checkpoint(path, TinyNet())
    with pytest.raises(CheckpointError, match="meta.json.*missing"):
        read_meta(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="format_version"):
        meta = json.loads((path / "meta.json").read_text())
        meta["format_version"] = 99
        (path / "meta.json").write_text(json.dumps(meta))
        read_meta(path)


def test_unreadable_safetensors_with_matching_checksum(tmp_path):
    path, _ = _saved(tmp_path)
    garbage = b"\xff" * 64
    (path / "model.safetensors").write_bytes(garbage)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["model.safetensors"] = {"sha256": hashlib.sha256(garbage).hexdigest(), "bytes": 64}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.safetensors.*not a readable safetensors"):
        load_weights(path, TinyNet())
    bare = tmp_path / "w.safetensors"
    bare.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(CheckpointError, match="w.safetensors"):
        load_weights(bare, TinyNet())


def test_shape_mismatch_lists_keys(tmp_path):
    save_checkpoint(tmp_path / "ck", TinyNet(width=8), rng=False)

    class Other(TinyNet):
        def __init__(self):
            super().__init__(width=12)
            self.head2 = nn.Linear(3, 3)
            del self.bn

    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path / "ck", Other())
    msg = str(e.value)
    for key in ("conv.weight", "fc.weight", "head2.weight", "head2.bias", "bn.running_mean", "bn.weight"):
        assert key in msg
    assert "shape mismatch conv.weight: checkpoint (8, 3, 3, 3) vs model (12, 3, 3, 3)" in msg
    assert "missing in checkpoint: head2.weight" in msg and "unexpected in checkpoint: bn.bias" in msg

    # strict=False tolerates missing/unexpected keys but never shape mismatches
    class Wider(TinyNet):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(2, 2)

    res = load_weights(tmp_path / "ck", Wider(), strict=False)
    assert res == {"missing": ["extra.weight", "extra.bias"], "unexpected": []}
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(tmp_path / "ck" / "model.safetensors", TinyNet(width=4), strict=False)


def test_atomic_replace_keeps_prev_and_survives_crashes(tmp_path, monkeypatch):
    model = TinyNet()
    run = tmp_path / "run"
    save_checkpoint(run / "last", model, extra={"step": 1})
    save_checkpoint(run / "last", model, extra={"step": 2})
    assert read_meta(run / "last")["step"] == 2 and read_meta(run / "last.prev")["step"] == 1

    # crash while writing files: the old checkpoint is untouched, the temp dir is ignored, then swept
    real_save = safetensors.torch.save_file

    def dying_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run / "last", model, extra={"step": 3})
    monkeypatch.undo()
    os.makedirs(run / ".last.tmp-1-dead")  # as a SIGKILL would leave it
    assert latest_checkpoint(run) == run / "last" and read_meta(run / "last")["step"] == 2

    # crash between "last -> last.prev" and "tmp -> last": last.prev is complete and is picked up
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # (1) drop old prev via trash, (2) last -> last.prev, (3) tmp -> last
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run / "last", model, extra={"step": 3})
    monkeypatch.undo()
    assert not (run / "last").exists()
    assert latest_checkpoint(run) == run / "last.prev"
    assert load_checkpoint(run, TinyNet())["step"] == 2  # a run dir resolves to its latest checkpoint

    save_checkpoint(run / "last", model, extra={"step": 4})
    assert sorted(p.name for p in run.iterdir()) == ["last", "last.prev"]
    assert read_meta(run / "last")["step"] == 4


def test_latest_checkpoint_falls_back_to_prev_when_last_is_corrupt(tmp_path):
    model = TinyNet()
    save_checkpoint(tmp_path / "last", model, extra={"step": 5})
    save_checkpoint(tmp_path / "last", model, extra={"step": 6})
    save_checkpoint(tmp_path / "best", model, extra={"step": 5}, keep_prev=False)
    assert not (tmp_path / "best.prev").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "last"
    with open(tmp_path / "last" / "model.safetensors", "r+b") as f:
        f.truncate(10)
    assert read_meta(latest_checkpoint(tmp_path))["step"] == 5
    assert latest_checkpoint(tmp_path / "missing") is None


def test_encoding_roundtrip_types():
    obj = {"a": (1, 2.5, None), 3: [torch.arange(3), {"x": True}], "t": torch.tensor(0.5),
           "s": "str", "nested": {(1, 2): "tuple key"}, "nan": float("inf")}
    tensors: dict = {}
    enc = _encode(obj, tensors, "r")
    enc = json.loads(json.dumps(enc))
    dec = _decode(enc, tensors, "here")
    assert_same(obj, dec)
    with pytest.raises(TypeError, match="set"):
        _encode({"bad": {1, 2}}, {}, "r")


def test_extra_validation(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a", TinyNet(), extra={"files": 1})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "b", TinyNet(), extra={"obj": object()})
    assert not (tmp_path / "b").exists()


def test_load_errors_for_missing_parts(tmp_path):
    save_checkpoint(tmp_path / "ck", TinyNet(), rng=False)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path / "ck", model, optimizer=opt)
    _, opt_ad, *_ = trained_setup("adamw", steps=1)
    save_checkpoint(tmp_path / "ck2", model, optimizer=opt_ad)
    with pytest.raises(CheckpointError, match="AdamW, not SGD"):
        load_checkpoint(tmp_path / "ck2", model, optimizer=opt)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        load_checkpoint(tmp_path / "empty_dir", model)


def test_tied_weights_save(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    m = Tied()
    save_checkpoint(tmp_path / "ck", m, rng=False)
    m2 = Tied()
    load_weights(tmp_path / "ck", m2)
    assert torch.equal(m2.a.weight, m.a.weight) and m2.a.weight is m2.b.weight


def test_refuses_to_replace_a_non_checkpoint_dir(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "run", TinyNet())
    assert (tmp_path / "run" / "notes.txt").exists()
