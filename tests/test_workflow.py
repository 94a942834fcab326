"""mbconv.workflow: the initial weights are a function of the run's seed; fit_spec caches its runs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mbconv.cost import spec_cost
from mbconv.data import ArrayDataset, DatasetInfo
from mbconv.workflow import RunConfig, build_for_data, fit_spec
from mbconv.zoo import get_spec
from mbconv.zoo_nd import mbconv1d_se4_spec

INFO = DatasetInfo(name="toy", num_classes=3, in_chans=1, dims=1, native_size=(16,), description="toy")
ARCH = "ir_r1_k3_s1_e2_c8_se0.25"


def _weights(m: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_seeded_init_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_for_data(ARCH, INFO, 16, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is untouched
    b = build_for_data(ARCH, INFO, 16, seed=7)
    c = build_for_data(ARCH, INFO, 16, seed=8)
    assert torch.equal(_weights(a), _weights(b))
    assert not torch.equal(_weights(a), _weights(c))
    # not the stream torch.manual_seed(seed) would give (that stream is also the one a trainer seeded with
    # the same number would draw from)
    torch.manual_seed(7)
    d = build_for_data(ARCH, INFO, 16)
    assert not torch.equal(_weights(a), _weights(d))


def test_fit_spec_caches(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    ds = ArrayDataset(torch.randn(24, 1, 16, generator=g), torch.arange(24) % 3, INFO)
    r1 = fit_spec(mbconv1d_se4_spec(), ds, ds, tmp_path / "run", epochs=1, batch_size=8)
    assert r1["epochs_done"] == 1 and r1["params"] == spec_cost(get_spec("mbconv1d_se4", num_classes=3)).params
    r2 = fit_spec(mbconv1d_se4_spec(), ds, ds, tmp_path / "run", epochs=1, batch_size=8)
    assert r2 == r1  # read back, not retrained
    # another configuration in the same folder trains from scratch instead of resuming the old checkpoint
    r3 = fit_spec(mbconv1d_se4_spec(), ds, ds, tmp_path / "run", epochs=1, batch_size=8, seed=1)
    assert r3["seed"] == 1 and r3["epochs_done"] == 1
    assert r3["history"][0]["train_loss"] != r1["history"][0]["train_loss"]


# -- RunConfig refuses bad values when built, in one line naming the field --------------------------------------
RUN_BAD = [
    ("epochs", 0), ("lr", -1.0), ("lr", float("nan")), ("batch_size", 0), ("weight_decay", -1.0),
    ("label_smoothing", 1.5), ("ema_decay", 1.0), ("seed", 1.5), ("optimizer", "lamb"), ("progress", "loud"),
    ("resume", "yes"), ("augment", "no"), ("data", ""), ("out", ""), ("out", None), ("model", ""), ("model", 5),
    ("weights", ""), ("resolution", 0), ("resolution", 2.5), ("width_mult", 0.0), ("depth_mult", float("inf")),
    ("init", "bogus"), ("channels", 2), ("channels", "3"), ("norm", "bogus"), ("norm", (1, 2, 3)),
    ("freeze", "stem"), ("freeze", 3), ("overrides", None), ("overrides", {"num_classes": 0}),
    ("overrides", {"nosuch": 1}), ("extra_train", None), ("extra_train", {"lr": 0.1}), ("extra_train", {"nosuch": 1}),
    ("extra_train", {"max_steps": -1}),
]


@pytest.mark.parametrize("field, value", RUN_BAD)
def test_run_config_names_the_bad_field(field, value) -> None:
    with pytest.raises(ValueError) as e:
        RunConfig(**{field: value})
    msg = str(e.value)
    assert "\n" not in msg
    # the message names the field (or, for extra_train/overrides, the key inside it) and the value or key
    key = next(iter(value)) if isinstance(value, dict) and value else None
    assert field in msg or (key is not None and key in msg)
    assert repr(value) in msg or (key is not None and repr(key) in msg) or str(key) in msg


def test_run_config_checks_model_before_the_data() -> None:
    with pytest.raises(ValueError, match="missing required token"):
        RunConfig(model="ir_r1_k3_s1_e6")
    with pytest.raises(ValueError, match="drop_path_rate=2.0"):
        RunConfig(model=ARCH, overrides={"drop_path_rate": 2.0})
    with pytest.raises(ValueError, match="norm=.weights. needs --weights"):
        RunConfig(norm="weights")


def test_run_config_accepts_good_values() -> None:
    cfg = RunConfig(model=get_spec(ARCH), data="digits8", out=Path("x"), resolution=np.int64(8), width_mult=0.5,
                    norm=([0.5], [0.25]), channels=3, weights="w.pt", freeze="stem,stages.0-1",
                    overrides={"se_position": "before_dw"}, extra_train={"max_steps": 3, "memory_lean": "off"})
    assert cfg.train_config().max_steps == 3 and cfg.train_config().out_dir == "x"


def test_run_helpers_refuse_bad_values(tmp_path) -> None:
    from mbconv.workflow import evaluate_run, predict

    net = build_for_data(ARCH, INFO, 16).eval()
    x = torch.randn(2, 1, 16)
    assert len(predict(net, x, ["a", "b", "c"], top_k=2)[0]) == 2
    for kw, words in ((dict(top_k=0), r"top_k >= 1 \(got 0\)"), (dict(classes=["a"]), "1 names for 3 outputs")):
        with pytest.raises(ValueError, match=words):  # top_k=0 returned [] per input, short classes an IndexError
            predict(net, x, **{"classes": ["a", "b", "c"], **kw})
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, not 0"):  # was torch's sampler error
        evaluate_run(tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="in-memory datasets"):  # was an AttributeError
        fit_spec(mbconv1d_se4_spec(), None, None, tmp_path / "run", epochs=1)


def test_preprocess_names_a_bad_data_record_or_input() -> None:
    from mbconv.workflow import preprocess

    x = torch.rand(2, 3, 20, 20)
    out = preprocess(x, {"dims": 2, "resolution": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out.mean(), ((torch.nn.functional.interpolate(x, size=[16, 16], mode="bilinear")
                                             - 0.5) / 0.25).mean())
    for data in ({}, {"dims": 2}, {"dims": 4, "resolution": 16}, {"dims": 2, "resolution": 0}, None):
        with pytest.raises(ValueError, match="preprocess needs the run's data record"):  # {} was a bare KeyError
            preprocess(x, data)
    with pytest.raises(ValueError, match=r"with 1 spatial dims, got \(2, 3, 20, 20\)"):
        preprocess(x, {"dims": 1, "resolution": 16})
