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
