"""Tests for mbconv.train: optimizer/schedule/EMA pieces, exact resume, crash safety, NaN guard, DDP."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from mbconv.checkpoint import latest_checkpoint, load_checkpoint, read_meta
from mbconv.train import (
    ModelEma,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    cosine_warmup_lambda,
    evaluate,
    init_distributed,
    make_optimizer,
    make_scheduler,
    make_shard_loader,
    param_groups_weight_decay,
    train_one_epoch,
)

SCRIPTS = Path(__file__).parent / "_train_scripts"
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SCRIPTS))
from ddp_train import ddp_config  # noqa: E402
from ddp_train import model as ddp_model  # noqa: E402
from tinytrain import TinyMLP, TinyNet, make_data  # noqa: E402

TRAIN, TEST, VAL = make_data(64), make_data(32, seed=1), make_data(24, seed=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a busy 2-core box are ~100x faster single-threaded (no OpenMP spin contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg_for(out_dir, **kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=8, lr=0.1, optimizer="sgd", weight_decay=1e-4, warmup_epochs=1,
                label_smoothing=0.1, ema_decay=0.9, seed=7, deterministic=True,
                out_dir=str(out_dir) if out_dir else None, progress="none")
    base.update(kw)
    return TrainConfig(**base)


def net(seed: int = 0, cls=TinyNet, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kw)


def assert_models_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def rows(out_dir) -> list[dict]:
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in lines]


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}


# ----------------------------------------------------------------------------- pieces


def test_weight_decay_skips_norms_and_biases():
    m = net()
    groups = param_groups_weight_decay(m, 0.01)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m.conv.weight), id(m.fc.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(m.bn.weight), id(m.bn.bias), id(m.fc.bias)}
    opt = make_optimizer(m, TrainConfig(optimizer="adamw", weight_decay=0.05))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_optimizer_kinds():
    m = net()
    sgd = make_optimizer(m, TrainConfig(optimizer="sgd", momentum=0.8, lr=0.3))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["lr"] == 0.3
    rms = make_optimizer(m, TrainConfig(optimizer="rmsprop"))
    assert isinstance(rms, torch.optim.RMSprop)
    assert (rms.defaults["alpha"], rms.defaults["eps"], rms.defaults["momentum"]) == (0.9, 1e-3, 0.9)
    assert isinstance(make_optimizer(m, TrainConfig(optimizer="AdamW")), torch.optim.AdamW)
    with pytest.raises(ValueError, match="lamb"):
        make_optimizer(m, TrainConfig(optimizer="lamb"))


@pytest.mark.parametrize("name", ["sgd", "adamw", "rmsprop"])
def test_optimizer_fast_step_equals_the_per_parameter_loop(name):
    """make_optimizer's fused (SGD, AdamW) / multi-tensor (RMSprop) step gives the per-parameter loop's weights."""
    fast_net, ref_net = net(p=0.0), net(p=0.0)  # same weights; no dropout, whose masks would differ
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.05)
    fast = make_optimizer(fast_net, cfg)
    assert fast.defaults["fused" if name != "rmsprop" else "foreach"] is True
    kw = {"sgd": dict(momentum=0.9), "adamw": {}, "rmsprop": dict(alpha=0.9, eps=1e-3, momentum=0.9)}[name]
    cls = type(fast)
    ref = cls(param_groups_weight_decay(ref_net, 0.05), lr=0.01, foreach=False, **kw)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    for _ in range(3):
        for m, opt in ((fast_net, fast), (ref_net, ref)):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(fast_net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cosine_warmup_values():
    f = cosine_warmup_lambda(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0]
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    # through LambdaLR: the lr used by optimizer step s is lr * f(s)
    cfg = TrainConfig(epochs=2, lr=0.4, min_lr=0.04, warmup_epochs=0.5)
    opt = make_optimizer(net(), cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=4)  # 8 steps, 2 warmup
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    g = cosine_warmup_lambda(8, 2, 0.1)
    assert lrs == pytest.approx([0.4 * g(s) for s in range(8)])
    assert lrs[:3] == pytest.approx([0.2, 0.4, 0.4]) and lrs[5] == pytest.approx(0.04 + 0.36 * 0.5)
    assert all(gr["lr"] == opt.param_groups[0]["lr"] for gr in opt.param_groups)


def test_label_smoothing_reaches_the_loss():
    t = Trainer(net(cls=TinyMLP), TRAIN, None, cfg_for(None, label_smoothing=0.25, epochs=1))
    assert t.criterion.label_smoothing == 0.25
    # with lr=0 the model is unchanged, so the epoch loss is exactly smoothed CE of the fixed model
    m = net(cls=TinyMLP)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    loader = make_shard_loader(TRAIN, 16, train=True, seed=0)
    out = train_one_epoch(m, loader, opt, criterion=nn.CrossEntropyLoss(label_smoothing=0.25))
    x, y = TRAIN.tensors
    with torch.no_grad():
        want = F.cross_entropy(m(x), y, label_smoothing=0.25).item()
        plain = F.cross_entropy(m(x), y).item()
    assert out["train_loss"] == pytest.approx(want, rel=1e-5) and abs(want - plain) > 1e-3
    assert out["step"] == 4 and out["stopped"] is False


def test_ema_update_math():
    m = net()
    ema = ModelEma(m, decay=0.75)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    m(torch.randn(4, 3, 8, 8))  # train mode: BN running stats and num_batches_tracked change
    ema.update(m)
    cur = m.state_dict()
    for k, e in ema.state_dict().items():
        if e.dtype.is_floating_point:
            torch.testing.assert_close(e, 0.75 * before[k] + 0.25 * cur[k], rtol=0, atol=1e-6)
        else:
            assert torch.equal(e, cur[k])  # integer buffers are copied
    assert not torch.equal(ema.state_dict()["bn.running_var"], before["bn.running_var"])
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_grad_clip_limits_the_update():
    m = net(cls=TinyMLP)
    start = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    loader = make_shard_loader(TRAIN, 64, train=True, seed=0)
    train_one_epoch(m, loader, opt, grad_clip=1e-3)
    delta = torch.sqrt(sum(((p - s) ** 2).sum() for p, s in zip(m.parameters(), start)))
    assert 0 < delta <= 1e-3 * (1 + 1e-4)


def test_bf16_autocast_is_used():
    seen = []

    class Probe(TinyMLP):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x)

    t = Trainer(net(cls=Probe), TRAIN, TEST, cfg_for(None, epochs=1, bf16=True))
    row = t.fit()
    assert seen and all(seen) and math.isfinite(row["train_loss"]) and row["test_acc"] is not None


def test_data_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch, skip=0, rank=0, world=1, bs=8):
        loader = make_shard_loader(TRAIN, bs, train=True, seed=seed, rank=rank, world_size=world)
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip = skip
        return [y.tolist() for _, y in loader]

    assert order(1, 0) == order(1, 0) and order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert order(1, 2, skip=24) == order(1, 2)[3:]
    # two ranks' k-th batches of 4 together are the 1-process k-th batch of 8
    r0, r1 = order(1, 2, rank=0, world=2, bs=4), order(1, 2, rank=1, world=2, bs=4)
    single = order(1, 2, bs=8)
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(s) for s in single]


def test_evaluate_function_and_init_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == (0, 1, torch.device("cpu"))
    m = net()
    m.train()
    out = evaluate(m, TEST, batch_size=5)
    assert out["count"] == 32 and 0.0 <= out["acc"] <= 1.0 and m.training
    x, y = TEST.tensors
    m.eval()
    with torch.no_grad():
        assert out["loss"] == pytest.approx(F.cross_entropy(m(x), y).item(), rel=1e-5)


def test_fit_logs_metrics_and_progress(tmp_path, capsys):
    calls = []
    t = Trainer(net(), TRAIN, TEST, cfg_for(tmp_path, epochs=2, progress="plain"), spec={"w": 8},
                on_epoch_end=lambda tr, row: calls.append(row["epoch"]), val_ds=VAL)
    final = t.fit()
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "test_loss",
            "test_acc", "ema_test_acc", "best_val_acc", "best_epoch", "test_acc_at_best", "lr", "seconds"}
    assert [r["epoch"] for r in lines] == [0, 1] and keys <= set(lines[0]) and calls == [0, 1]
    assert final["step"] == 16 and final["test_acc"] == lines[-1]["test_acc"]
    assert capsys.readouterr().out.count("epoch ") == 2
    meta = read_meta(tmp_path / "last")
    assert meta["spec"] == {"w": 8} and meta["epoch"] == 2 and meta["epoch_step"] == 0
    assert (tmp_path / "best").is_dir() and meta["config"]["lr"] == 0.1
    assert meta["selection"]["split"] == "val" and meta["selection"]["metric"] == "val_acc"
    # a fresh (non-resume) run into the same dir starts over instead of mixing runs
    t2 = Trainer(net(), TRAIN, TEST, cfg_for(tmp_path, epochs=1, progress="none"),
                 on_epoch_end=lambda tr, row: True)
    assert not (tmp_path / "last").exists() and (tmp_path / "metrics.jsonl").read_text() == ""
    t2.fit()
    assert capsys.readouterr().out == "" and len(rows(tmp_path)) == 1


def test_progress_modes(capsys):
    Trainer(net(), TRAIN, TEST, cfg_for(None, epochs=1, progress="tqdm")).fit()
    out = capsys.readouterr()
    assert "epoch 0" in out.err and out.out == ""  # tqdm bar on stderr, no plain lines
    Trainer(net(), TRAIN, TEST, cfg_for(None, epochs=1, progress="auto")).fit()  # stderr is no TTY here
    assert capsys.readouterr().out.startswith("epoch 1/1 step 8 train_loss ")
    with pytest.raises(ValueError, match="progress"):
        TrainConfig(progress="bar")


# ----------------------------------------------------------------------------- exact resume


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """Uninterrupted 3-epoch runs per optimizer: final weights, EMA and metrics rows."""
    out = {}
    for kind in ("sgd", "adamw", "rmsprop"):
        d = tmp_path_factory.mktemp(f"straight_{kind}")
        lr = 0.1 if kind == "sgd" else 0.01
        t = Trainer(net(0), TRAIN, TEST, cfg_for(d, optimizer=kind, lr=lr))
        t.fit()
        out[kind] = (t.model.state_dict(), t.ema.state_dict(), rows(d), lr)
    return out


@pytest.mark.parametrize("kind", ["sgd", "adamw", "rmsprop"])
def test_resume_at_epoch_boundary_is_bit_identical(tmp_path, straight_runs, kind):
    model_sd, ema_sd, metric_rows, lr = straight_runs[kind]
    cfg = cfg_for(tmp_path, optimizer=kind, lr=lr)
    Trainer(net(0), TRAIN, TEST, dataclasses.replace(cfg, max_steps=8)).fit()  # exactly one epoch
    assert read_meta(tmp_path / "last")["epoch"] == 1
    t = Trainer(net(2), TRAIN, TEST, dataclasses.replace(cfg, resume=True))  # other init, gets overwritten
    assert (t.epoch, t.step, t.resumed_from) == (1, 8, tmp_path / "last")
    t.fit()
    assert_models_equal(t.model.state_dict(), model_sd)
    assert_models_equal(t.ema.state_dict(), ema_sd)
    assert rows(tmp_path) == metric_rows


def test_resume_mid_epoch_after_crash_is_bit_identical(tmp_path, straight_runs):
    model_sd, ema_sd, metric_rows, _ = straight_runs["sgd"]

    class CrashAt(TinyNet):
        calls = 0

        def forward(self, x):
            if self.training:
                CrashAt.calls += 1
                if CrashAt.calls == 14:  # step index 13 = epoch 1, batch 5
                    raise RuntimeError("simulated crash")
            return super().forward(x)

    cfg = cfg_for(tmp_path, ckpt_every_steps=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(net(0, CrashAt), TRAIN, TEST, cfg).fit()
    meta = read_meta(latest_checkpoint(tmp_path))
    assert (meta["epoch"], meta["epoch_step"], meta["step"]) == (1, 4, 12)
    t = Trainer(net(2), TRAIN, TEST, dataclasses.replace(cfg, resume=True))
    assert (t.epoch, t.epoch_step, t.step) == (1, 4, 12)
    t.fit()
    assert_models_equal(t.model.state_dict(), model_sd)
    assert_models_equal(t.ema.state_dict(), ema_sd)
    assert rows(tmp_path) == metric_rows  # partial-epoch loss/acc sums were resumed too

    # max_steps stopping mid-epoch, twice, then finishing: same result again
    d2 = tmp_path / "b"
    cfg2 = cfg_for(d2)
    for stop in (5, 19):
        part = dataclasses.replace(cfg2, max_steps=stop, resume=True)
        out = Trainer(net(0 if stop == 5 else 9), TRAIN, TEST, part).fit()
        assert out["stopped"] and read_meta(d2 / "last")["step"] == stop
    t = Trainer(net(3), TRAIN, TEST, dataclasses.replace(cfg2, resume=True))
    t.fit()
    assert_models_equal(t.model.state_dict(), model_sd)
    assert rows(d2) == metric_rows
    done = Trainer(net(4), TRAIN, TEST, dataclasses.replace(cfg2, resume=True)).fit()  # nothing left to do
    assert done["step"] == 24 and done["test_acc"] == metric_rows[-1]["test_acc"]


# ----------------------------------------------------------------------------- best/: raw or EMA weights


@pytest.fixture(scope="module")
def pretrained_and_wrong():
    """A net trained on TRAIN (val ~0.8) and TRAIN with every label shifted by one: training on those wrecks the raw
    weights while an EMA of decay 0.999 stays at the good start, so the EMA must win on validation."""
    t = Trainer(net(0), TRAIN, None, cfg_for(None, epochs=15, ema_decay=0.0), val_ds=VAL)
    t.fit()
    x, y = TRAIN.tensors
    return t.model.state_dict(), torch.utils.data.TensorDataset(x, (y + 1) % 4)


def load_best(out_dir) -> dict:
    sd = safetensors.torch.load_file(str(Path(out_dir) / "best" / "model.safetensors"))
    return {k: sd[k] for k in net().state_dict()}  # in the module's key order, as assert_models_equal wants


def test_candidate_prefers_ema_only_when_it_is_better_on_val():
    row = {"val_acc": 0.5, "test_acc": 0.4, "ema_val_acc": 0.5, "ema_test_acc": 0.9}
    assert Trainer.candidate(row) == ("raw", 0.5, 0.4)  # tie keeps raw; test never decides
    assert Trainer.candidate({**row, "ema_val_acc": 0.6}) == ("ema", 0.6, 0.9)
    assert Trainer.candidate({**row, "ema_val_acc": None}) == ("raw", 0.5, 0.4)


def test_best_holds_the_ema_when_it_wins_on_val(tmp_path, pretrained_and_wrong):
    from mbconv.workflow import describe_selection

    start, wrong = pretrained_and_wrong
    m = net(1)
    m.load_state_dict(start)
    t = Trainer(m, wrong, TEST, cfg_for(tmp_path, epochs=1, ema_decay=0.999), val_ds=VAL)
    row = t.fit()
    assert row["ema_val_acc"] > row["val_acc"] + 0.3  # the construction: EMA ~ the good start
    meta = read_meta(tmp_path / "best")
    assert meta["selection"]["weights"] == "ema" and meta["model_weights"] == "ema"
    assert (meta["best_val_acc"], meta["test_acc_at_best"]) == (row["ema_val_acc"], row["ema_test_acc"])
    assert_models_equal(load_best(tmp_path), t.ema.state_dict())
    assert "EMA weights" in describe_selection(tmp_path / "best")
    # last/ keeps the raw weights as the model and the EMA as its own state, as before
    last = load_checkpoint(tmp_path / "last", model := net(5), ema=(ema := ModelEma(net(6), 0.999)))
    assert last["model_weights"] == "raw" and last["selection"]["weights"] == "ema"
    assert_models_equal(model.state_dict(), t.model.state_dict())
    assert_models_equal(ema.state_dict(), t.ema.state_dict())


def test_best_holds_the_raw_weights_when_the_ema_lags(tmp_path):
    from mbconv.workflow import describe_selection

    t = Trainer(net(0), TRAIN, TEST, cfg_for(tmp_path, epochs=2, ema_decay=0.999), val_ds=VAL)
    row = t.fit()
    assert row["val_acc"] > row["ema_val_acc"]  # the EMA is still ~ the random init
    meta = read_meta(tmp_path / "best")
    assert meta["selection"]["weights"] == "raw" and meta["model_weights"] == "raw"
    if meta["epoch"] == 2:  # best/ is the last epoch: its weights are the final raw ones
        assert_models_equal(load_best(tmp_path), t.model.state_dict())
    assert not torch.equal(load_best(tmp_path)["fc.weight"], t.ema.state_dict()["fc.weight"])
    assert "EMA" not in describe_selection(tmp_path / "best")


def test_resume_never_starts_from_a_best_holding_the_ema(tmp_path, pretrained_and_wrong, monkeypatch):
    """Killed between best/ (EMA weights) and last/: resume takes last/ (mid-epoch here) and ends bit-identical to a
    straight run, instead of training on from the EMA."""
    start, wrong = pretrained_and_wrong

    def run(out, resume=False):
        m = net(1)
        m.load_state_dict(start)
        cfg = cfg_for(out, epochs=2, ema_decay=0.999, ckpt_every_steps=4, resume=resume)
        return Trainer(m if not resume else net(3), wrong, TEST, cfg, val_ds=VAL)

    straight = run(tmp_path / "a")
    straight.fit()
    save = Trainer._save

    def killed_before_last(self, name, weights="raw"):
        if name == "last" and self.step == 8:
            raise KeyboardInterrupt("simulated kill")
        save(self, name, weights)

    monkeypatch.setattr(Trainer, "_save", killed_before_last)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b").fit()
    monkeypatch.setattr(Trainer, "_save", save)
    assert read_meta(tmp_path / "b" / "best")["model_weights"] == "ema"
    assert latest_checkpoint(tmp_path / "b").name == "best"  # the newest step: what resume must skip
    t = run(tmp_path / "b", resume=True)
    assert (t.resumed_from.name, t.step) == ("last", 4)
    t.fit()
    assert_models_equal(t.model.state_dict(), straight.model.state_dict())
    assert_models_equal(t.ema.state_dict(), straight.ema.state_dict())
    assert_models_equal(load_best(tmp_path / "b"), load_best(tmp_path / "a"))
    assert rows(tmp_path / "b") == rows(tmp_path / "a")


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    class NaNAt(TinyNet):
        calls = 0

        def forward(self, x):
            out = super().forward(x)
            if self.training:
                NaNAt.calls += 1
                if NaNAt.calls == 11:  # step index 10 = epoch 1, batch 2
                    out = out * float("nan")
            return out

    cfg = cfg_for(tmp_path, ckpt_every_steps=2)
    t = Trainer(net(0, NaNAt), TRAIN, TEST, cfg)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 10 .*loss is nan") as e:
        t.fit()
    assert (e.value.epoch, e.value.step) == (1, 10) and math.isnan(e.value.loss)
    ck = latest_checkpoint(tmp_path)
    meta = load_checkpoint(ck, TinyNet())
    assert (meta["epoch"], meta["epoch_step"], meta["step"]) == (1, 2, 10)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())  # no step taken with the bad loss
    assert len(rows(tmp_path)) == 1

    # a huge learning rate blows up by itself
    cfg = cfg_for(tmp_path / "lr", lr=1e12, warmup_epochs=0, epochs=2)
    with pytest.raises(TrainingDivergedError, match="diverged"):
        Trainer(net(0, TinyMLP), TRAIN, TEST, cfg).fit()


# ----------------------------------------------------------------------------- crash safety (real kills)


def test_sigkill_at_random_moments_then_resume(tmp_path):
    """Kill a training process with SIGKILL 4 times at random moments, resuming each time.

    Every kill must leave a verifiable checkpoint no older than the previous one, and the final
    weights and metrics must equal an uninterrupted run's bit for bit. The runs are forked from a
    pre-imported server (tests/_train_scripts/forkserver.py) to skip seconds of imports per start.
    """
    err_path = tmp_path / "server.err"
    with open(err_path, "w") as err:
        server = subprocess.Popen([sys.executable, str(SCRIPTS / "forkserver.py")], cwd=SCRIPTS,
                                  env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=err, text=True)

    def start(*args: str) -> tuple[int, int]:
        server.stdin.write(json.dumps(list(args)) + "\n")
        server.stdin.flush()
        line = server.stdout.readline().split()
        assert line[:1] == ["ready"], (line, err_path.read_text())
        return int(line[1]), int(line[2])  # pid, step the run resumed from

    def finish() -> tuple[int, list[str]]:
        lines = []
        while not (line := server.stdout.readline()).startswith("exit"):
            assert line, err_path.read_text()
            lines.append(line)
        return int(line.split()[2]), lines

    try:
        assert server.stdout.readline() == "server ready\n", err_path.read_text()
        start(str(tmp_path / "ref"))  # the uninterrupted reference run
        assert finish() == (0, ["done 32\n"]), err_path.read_text()

        run = tmp_path / "run"
        rng = random.Random(0)
        last_step, kills = -1, 0
        for _ in range(4):
            # >= 2.56 s of sleeping per full run (256 samples x 10 ms) vs <= 2 s of kill delays in total:
            # every kill lands mid-run, wherever in the run (training, evaluation, a checkpoint write)
            pid, resumed = start(str(run), "--resume", "--item-sleep", "0.01")
            assert resumed == max(last_step, 0)  # resumed exactly where the last checkpoint was
            time.sleep(rng.uniform(0.05, 0.5))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            code, _ = finish()
            kills += code == -signal.SIGKILL
            ck = latest_checkpoint(run)  # verifies the checksums of every candidate
            if last_step >= 0:
                assert ck is not None, "a kill left no loadable checkpoint"
            if ck is not None:
                meta = load_checkpoint(ck, TinyNet(), restore_rng=False)
                assert meta["step"] >= last_step
                last_step = meta["step"]
        assert kills == 4 and last_step > 0

        start(str(run), "--resume")
        assert finish() == (0, ["done 32\n"]), err_path.read_text()
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    final = safetensors.torch.load_file(run / "last" / "model.safetensors")
    want = safetensors.torch.load_file(tmp_path / "ref" / "last" / "model.safetensors")
    assert_models_equal(dict(sorted(final.items())), dict(sorted(want.items())))
    assert rows(run) == rows(tmp_path / "ref")


# ----------------------------------------------------------------------------- torchrun / DDP


def test_torchrun_ddp_matches_single_process_and_resumes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPTS / "ddp_train.py"), str(tmp_path)]
    # stdin must not be inherited: torchrun's workers stall on an inherited (pytest) stdin
    p = subprocess.run(cmd, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    load = safetensors.torch.load_file
    r0, r1 = load(tmp_path / "straight_rank0.safetensors"), load(tmp_path / "straight_rank1.safetensors")
    assert_models_equal(r0, r1)
    # resumed-under-torchrun weights are bit-identical to the uninterrupted DDP run on each rank
    assert_models_equal(load(tmp_path / "resumed_rank0.safetensors"), r0)
    assert_models_equal(load(tmp_path / "resumed_rank1.safetensors"), r1)
    ddp_row = json.loads((tmp_path / "metrics_rank0.json").read_text())
    assert ddp_row["world_size"] == 2 and ddp_row["step"] == 16
    assert [r["step"] for r in rows(tmp_path / "straight")] == [8, 16]  # rank 0 logged, once per epoch

    # 1 process with the global batch (2 x 4) sees the same samples per step: same weights
    t = Trainer(ddp_model(0), make_data(64), make_data(30, seed=1), ddp_config(None, batch_size=8))
    row = t.fit()
    single = t.model.state_dict()
    for k in single:
        torch.testing.assert_close(r0[k], single[k], rtol=0, atol=1e-5)
    assert ddp_row["test_acc"] == row["test_acc"]  # sharded evaluation covers each test sample once
    assert ddp_row["test_loss"] == pytest.approx(row["test_loss"], abs=1e-5)
    assert ddp_row["train_loss"] == pytest.approx(row["train_loss"], abs=1e-5)
