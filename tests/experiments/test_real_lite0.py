"""experiments/real_lite0.py: its metrics on known answers, its distillation and activation criterion on a small
net, and the committed tables (the result file's rendering, and the page that quotes them). Seconds, no photos."""

import json
import math
from pathlib import Path

import pytest
import real_lite0 as R
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results" / "real_lite0"


def test_agreement_known_answers():
    ref = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0, -1.0], [0.2, 0.1, 0.0, 0.0, 0.0, 0.0]])
    same = R.agreement(ref, ref)
    assert same["top1_all"] == same["top1_confident"] == same["top5_overlap"] == 1.0
    assert same["kl"] == pytest.approx(0.0, abs=1e-12) and math.isinf(same["logit_sqnr_db"])
    assert (same["n"], same["n_confident"]) == (2, 1)  # only the first row has a top-class probability > 0.5
    out = ref.clone()
    out[1] = torch.tensor([0.0, 0.3, 0.0, 0.0, 0.0, 0.0])  # the unconfident row changes its top-1
    a = R.agreement(ref, out)
    assert a["top1_all"] == 0.5 and a["top1_confident"] == 1.0 and a["kl"] > 0
    noise = float((out - ref).pow(2).sum())
    assert a["logit_sqnr_db"] == pytest.approx(10 * math.log10(float(ref.pow(2).sum()) / noise))


def small_mbconv() -> nn.Module:
    from mbconv.net import MBConvNet
    from mbconv.spec import NetSpec, parse_arch

    torch.manual_seed(0)
    spec = NetSpec(stages=parse_arch("ds_r1_k3_s1_c8;ir_r2_k3_s2_e4_c16"), act="relu6", num_classes=6, stem_chs=8,
                   head_chs=16, resolution=16)
    return MBConvNet(spec).eval()


def test_activation_scores_are_energy_times_column_norm():
    from mbconv.prune import prunable_blocks

    m = small_mbconv()
    x = torch.randn(16, 3, 16, 16)
    scores = R.activation_scores(m, x)
    blocks = prunable_blocks(m)
    assert set(scores) == {b.name for b in blocks}
    b = blocks[0]
    seen = {}
    h = b.module.project.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        m(x)
    h.remove()
    rms = seen["x"].double().pow(2).mean((0, 2, 3)).sqrt()
    col = b.module.project.conv.weight.detach().double().pow(2).sum((0, 2, 3)).sqrt()
    assert torch.allclose(scores[b.name], rms * col)


def test_distillation_moves_the_student_towards_the_teacher():
    teacher, student = small_mbconv(), small_mbconv()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    crops = torch.randn(16, 3, 16, 16)
    t, tf = R.logits(teacher, crops), R.logits(teacher, crops.flip(-1))
    before = R.agreement(t, R.logits(student, crops))["kl"]
    losses = R.distill(student, crops, t, tf, steps=30, lr=3e-3)
    assert len(losses) == 30 and R.agreement(t, R.logits(student, crops))["kl"] < before
    assert not student.training  # BN statistics stayed frozen


@pytest.mark.parametrize("mode", ["full", "quick"])
def test_committed_tables_are_the_results_rendering(mode):
    path = RESULTS / f"{mode}.json"
    if not path.exists():
        pytest.skip(f"no committed {mode} result")
    r = json.loads(path.read_text())
    assert R.tables(r) == path.with_suffix(".md").read_text()
    assert r["provenance"]["threads"] == 1 and r["provenance"]["command"]


def test_the_page_holds_the_full_tables_as_placeholders():
    """docs/bench/real.md's tables are the full result's, as placeholders that docs/compose.py renders into exactly
    the committed full.md numbers."""
    import sys

    path = RESULTS / "full.json"
    if not path.exists():
        pytest.skip("no committed full result")
    r = json.loads(path.read_text())
    page = R.PAGE.read_text()
    assert R.with_tables(page, R.tables(r, literal=False)) == page, "run: python experiments/real_lite0.py --tables"
    sys.path.insert(0, str(ROOT / "docs"))
    import tables as T

    block = page.split(R.BEGIN, 1)[1].split(R.END, 1)[0]
    assert T.render_fragment(block, ROOT).strip() == R.tables(r).strip()
