"""The `mbconv` command: outputs and one-line errors."""

import json
import subprocess
import sys

import pytest

from mbconv.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cost_b0(capsys):
    rc, out, _ = run(capsys, "cost", "efficientnet_b0")
    assert rc == 0
    assert "5,288,548" in out and "0.386 G" in out


def test_cost_json_per_layer(capsys):
    rc, out, _ = run(capsys, "cost", "mobilenetv3_small_100", "--json", "--per-layer", "--resolution", "96")
    d = json.loads(out)
    assert d["params"] == 2_542_856 and len(d["layers"]) > 50 and d["resolution"] == [96, 96]


def test_info_and_list(capsys):
    rc, out, _ = run(capsys, "info", "efficientnet_b3")
    assert rc == 0 and "MBConv" in out and "1536" in out
    rc, out, _ = run(capsys, "list", "efficientnet_b*")
    assert rc == 0 and "efficientnet_b7" in out and "mobilenet" not in out


def test_scale_phi_and_triple(capsys):
    rc, out, _ = run(capsys, "scale", "--base", "efficientnet_b0", "--width", "1.1", "--depth", "1.2",
                     "--resolution", "260")
    assert rc == 0 and "9,109,994" in out  # = B2
    rc, out, _ = run(capsys, "scale", "--phi", "-1", "--json")
    d = json.loads(out)
    assert d["params"] < 5_288_548 and d["spec"]["resolution"] == round(224 / 1.15)


def test_compare(capsys):
    rc, out, _ = run(capsys, "compare", "--cin", "64", "--cout", "64", "--dims", "3")
    assert rc == 0 and "18.99" in out


@pytest.mark.parametrize("argv,needle", [
    (["cost", "efficientnet_b9"], "unknown model 'efficientnet_b9'"),
    (["cost", "efficientnet_b0", "--resolution", "abc"], "not an integer: 'abc'"),
    (["cost", "efficientnet_b0", "--resolution", "-3"], "must be >= 1"),
    (["info", "ir_r1_k4_s1_c16"], "invalid kernel=4"),
    (["info", "ir_r1_k3_s1_c16_zz9"], "unknown token 'zz9'"),
    (["scale", "--phi", "x"], "not a number: 'x'"),
    (["scale"], "nothing to scale"),
    (["nosuchcmd"], "invalid choice"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_no_traceback():
    p = subprocess.run([sys.executable, "-m", "mbconv.cli", "cost", "nosuch"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "unknown model" in p.stderr


def test_tour_cost_chapter(tmp_path, capsys):
    rc, out, _ = run(capsys, "tour", "--out", str(tmp_path), "--chapters", "cost", "--quick")
    assert rc == 0
    html = (tmp_path / "report.html").read_text()
    assert "EfficientNet B0-B7" in html and "data:image/png;base64" in html
    fam = json.loads((tmp_path / "cost_family.json").read_text())
    assert [r["params"] for r in fam][:2] == [5_288_548, 7_794_184]


TINY = "ds_r1_k3_s1_c8_se0.25;ir_r1_k3_s2_e2_c16_se0.25"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    rc = main(["train", "--model", TINY, "--data", "digits8", "--epochs", "2", "--batch-size", "64",
               "--out", str(out), "--resolution", "8", "--lr", "0.01"])
    assert rc == 0
    return out


def test_train_eval_predict(trained_run, capsys, tmp_path):
    import numpy as np

    assert (trained_run / "last" / "model.safetensors").exists()
    rows = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["test_acc"] > 0.3  # 10 classes: chance is 0.1
    rc, out, _ = run(capsys, "eval", "--checkpoint", str(trained_run), "--json")
    r = json.loads(out)
    assert rc == 0 and r["count"] == 359 and r["acc"] > 0.3
    assert r["selection"].startswith("best/ (chosen on val_acc")  # test is reported; validation chose best/
    x = np.random.default_rng(0).uniform(0, 1, (8, 8)).astype("float32")  # digits8 scaled to [0, 1]
    np.save(tmp_path / "a.npy", x)
    rc, out, _ = run(capsys, "predict", "--checkpoint", str(trained_run), str(tmp_path / "a.npy"), "--top-k", "2")
    assert rc == 0 and out.count("%") == 2


def test_train_switches_reach_the_metrics_rows(trained_run, tmp_path, capsys):
    """`--no-native-kernels` and `--no-large-tensor-heap` reach the trainer: each metrics row says they were off,
    where the default run's rows record the kernels on wherever they are built."""
    from mbconv.layers.native import native_enabled

    default = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["native_kernels"] is native_enabled() for r in default)
    out = tmp_path / "plain"
    rc = main(["train", "--model", TINY, "--data", "digits8", "--epochs", "1", "--batch-size", "64", "--out", str(out),
               "--resolution", "8", "--no-native-kernels", "--no-large-tensor-heap"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["native_kernels"] is False and r["large_tensor_heap"] is False for r in rows)
    capsys.readouterr()


def test_resume_continues(trained_run, capsys):
    rc = main(["train", "--model", TINY, "--data", "digits8", "--epochs", "3", "--batch-size", "64",
               "--out", str(trained_run), "--resolution", "8", "--lr", "0.01", "--resume"])
    assert rc == 0
    rows = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--checkpoint", "/nonexistent/run"], "no such run or checkpoint"),
    (["train", "--data", "nosuchdata", "--epochs", "1"], "nosuchdata"),
    (["train", "--epochs", "0"], "must be >= 1"),
    (["predict", "--checkpoint", "/nonexistent", "x.png"], "no such run"),
])
def test_train_eval_bad_input(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and needle in err and "Traceback" not in err


def test_corrupt_checkpoint_is_one_line(trained_run, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained_run / "last", bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    rc, out, err = run(capsys, "eval", "--checkpoint", str(bad))
    assert rc == 2 and "model.safetensors" in err and "Traceback" not in err


def test_tour_shows_committed_results_only_when_given(tmp_path, capsys):
    """The library never looks for the repository's experiments/results: `--results DIR` says where they are."""
    res = tmp_path / "results" / "scaling_stability_quick"
    res.mkdir(parents=True)
    (res / "summary.json").write_text(json.dumps({"rule_outcome": {"x2": {"outcome": "not supported"}}}))
    rc, _, err = run(capsys, "tour", "--out", str(tmp_path / "t"), "--quick", "--chapters", "stability",
                     "--results", str(tmp_path / "results"))
    assert rc == 0, err
    html = (tmp_path / "t" / "report.html").read_text()
    assert "x2: not supported" in html and "quick (preliminary)" in html and "skipped" not in html
    rc, _, err = run(capsys, "tour", "--out", str(tmp_path / "t"), "--chapters", "stability", "--results",
                     str(tmp_path / "nowhere"))
    assert rc == 2 and "no such results folder" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "tour", "--out", str(tmp_path / "t"), "--chapters", "cost,nochapter")
    assert rc == 2 and "nochapter" in err


def test_tour_quick_has_training_chapter(tmp_path, capsys):
    rc, out, _ = run(capsys, "tour", "--out", str(tmp_path), "--quick", "--chapters", "train")
    assert rc == 0
    html = (tmp_path / "report.html").read_text()
    assert "Training a small SE-MBConv net" in html
    res = json.loads((tmp_path / "train_result.json").read_text())
    assert res["params"] > 100_000 and 0.0 <= res["eval"]["acc"] <= 1.0
