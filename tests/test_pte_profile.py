"""Per-operator times of ExecuTorch programs (mbconv.export.pte_profile): event names to kinds, layer kinds from an
exported graph, sums per kind, and a real ETDump profile of a tiny program (skipped without the `phone` extra)."""

import pytest
import torch
from torch import nn

from mbconv.export.pte_profile import label_events, layer_kinds, op_kind, op_name, pte_op_times, time_by_kind


class Block(nn.Module):
    """stem 3x3 s2 -> depthwise 5x5 s2 -> 1x1 -> pool -> linear: one of each kind."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.dw = nn.Conv2d(8, 8, 5, 2, 2, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pw(self.dw(self.stem(x).relu())).mean((2, 3)))


def test_event_names_and_kinds():
    assert op_name("Convert (NC) #12") == "Convert (NC)"
    assert op_kind("Constant Pad (ND, X32) #2") == "explicit pad (fp32)"
    assert op_kind("Constant Pad (ND, X8) #1") == "explicit pad (int8)"
    assert op_kind("Convert (NC) #3") == "int8 <-> fp32 convert"
    assert op_kind("Frobnicate (NC) #1") == "Frobnicate (NC)"  # unknown: its own name


def test_layer_kinds_label_conv_events_in_order():
    gm = torch.export.export(Block().eval(), (torch.randn(1, 3, 32, 32),)).module()
    kinds = layer_kinds(gm)
    assert kinds == ["full conv 3x3 s2", "depthwise 5x5 s2", "1x1 conv", "classifier (linear)"]
    events = ["Convert (NC) #1", "Convolution (NHWC, QC8) IGEMM #1", "Convolution (NHWC, QC8) DWConv #1",
              "Fully Connected (NC, QS8, QC8W) GEMM #1", "Mean (ND) #1", "Fully Connected (NC, QS8, QC8W) GEMM #2"]
    assert label_events(events, kinds) == ["int8 <-> fp32 convert", *kinds[:3], "mean (pooling)", kinds[3]]
    # counts that do not match: the operator names, not a shifted labelling
    assert label_events(events, kinds[:3])[1:4] == [op_name(e) for e in events[1:4]]
    times = time_by_kind([{"median_ms": v} for v in (1.0, 2.0, 0.5, 3.0)], ["a", "b", "a", "c"])
    assert list(times) == ["c", "b", "a"] and times["a"] == {"ms": 1.5, "count": 2}
    with pytest.raises(ValueError):
        time_by_kind([{"median_ms": 1.0}], ["a", "b"])


def test_profile_of_a_tiny_program(tmp_path):
    pytest.importorskip("executorch")
    from mbconv.export.pte import export_pte, set_pte_threads

    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "m.pte"
    export_pte(Block().eval(), path, example=x)
    set_pte_threads(1)
    prof = pte_op_times({"m": path}, x, runs=3, warmup=1)["m"]
    events = [e["event"] for e in prof["events"]]
    assert prof["runs"] == 3 and prof["execute_ms"] > 0
    assert label_events(events, layer_kinds(torch.export.export(Block().eval(), (x,)).module())).count(
        "depthwise 5x5 s2") == 1, events
    assert all(e["median_ms"] >= e["min_ms"] >= 0 for e in prof["events"])
    with pytest.raises(ValueError, match="invalid runs"):
        pte_op_times({"m": path}, x, runs=0)
    with pytest.raises(FileNotFoundError):
        pte_op_times({"m": tmp_path / "missing.pte"}, x)
