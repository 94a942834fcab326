"""The depthwise kernels as torch.compile operators (mbconv.layers.compiled): the operators pass torch.library's
checks (schema, fake shapes and strides, autograd registration), equal ATen's convolution and gradients on both
forward branches and without the library; compiled training steps put them into the graph (and the small-map 1x1
convs' products) with gradients equal to the eager step's, while compiled inference and torch.export keep the
plain convolution; one inductor step end to end."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbconv.layers import compiled, native
from mbconv.layers.depthwise import DepthwiseConv2d
from mbconv.layers.native_depthwise import native_dw_pays
from mbconv.layers.pointwise import PointwiseConv2d
from mbconv.train.trainer import COMPILE_OPTIONS_CPU

pytestmark = pytest.mark.skipif(not native.native_enabled(), reason=f"native kernels {native.native_status()}")

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
LAST = {2: torch.channels_last, 3: torch.channels_last_3d}

# (x shape, kernel, stride, padding, layout): both forward branches (native where it pays, ATen elsewhere), 1-3
# spatial axes, strides, a 1-pixel map, both 2-D layouts
CASES = [((2, 24, 4, 4), 3, 1, 1, "last"), ((2, 24, 12, 12), 3, 2, 1, "last"), ((2, 20, 10, 10), 5, 1, 2, "last"),
         ((2, 20, 7, 7), 5, 2, 2, "contiguous"), ((3, 18, 1, 1), 3, 1, 1, "last"), ((2, 16, 9), 5, 1, 2, "contiguous"),
         ((2, 16, 4, 4, 4), 3, 1, 1, "last")]


def make(shape: tuple, k: int, layout: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if layout == "last":
        x = x.contiguous(memory_format=LAST[len(shape) - 2])
    w = torch.randn(shape[1], 1, *([k] * (len(shape) - 2)), generator=g) * 0.3
    return x, w


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}s{c[2]}-{c[4]}")
def test_operators_pass_torch_library_checks(case) -> None:
    shape, k, s, p, layout = case
    x, w = make(shape, k, layout)
    dims = len(shape) - 2
    args = (x.requires_grad_(), w.requires_grad_(), [s] * dims, [p] * dims)
    torch.library.opcheck(torch.ops.mbconv.dw_conv.default, args)
    y = torch.ops.mbconv.dw_conv(*args)
    gy = torch.randn_like(y)
    for op in (torch.ops.mbconv.dw_conv_input_grad.default, torch.ops.mbconv.dw_conv_weight_grad.default):
        torch.library.opcheck(op, (gy, x.detach(), w.detach(), [s] * dims, [p] * dims))


@pytest.mark.parametrize("off", [False, True], ids=["native", "no library"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}s{c[2]}-{c[4]}")
def test_operator_and_gradients_equal_aten(case, off: bool) -> None:
    shape, k, s, p, layout = case
    x, w = make(shape, k, layout)
    dims = len(shape) - 2
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    ref = CONV[dims](xr, wr, None, s, p, 1, shape[1])
    gy = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(gy)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    with native.use_native(not off):
        y = torch.ops.mbconv.dw_conv(xa, wa, [s] * dims, [p] * dims)
        y.backward(gy.float().contiguous(memory_format=compiled.dw_conv_layout(y)))
    assert y.stride() == y.contiguous(memory_format=compiled.dw_conv_layout(x)).stride()
    for got, want in ((y, ref), (xa.grad, xr.grad), (wa.grad, wr.grad)):
        scale = float(want.detach().abs().max())
        assert float((got.detach().double() - want.detach()).abs().max()) <= 2e-5 * max(scale, 1.0)


def test_forward_branch_follows_the_eager_rule() -> None:
    """Sanity of the case list: it holds shapes on both sides of `native_dw_pays`."""
    picks = {native_dw_pays(torch.empty(c[0]), [c[1]] * (len(c[0]) - 2)) for c in CASES}
    assert picks == {True, False}


class Tiny(nn.Module):
    """A small channels-last MBConv-like net: 1x1 expand, depthwise 5x5 (4x4 map: native forward) and 3x3 (8x8:
    ATen forward), SE-free, BN + SiLU, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.dw1 = DepthwiseConv2d(16, 16, 3, 1, 1, groups=16)
        self.bn1 = nn.BatchNorm2d(16)
        self.pw = PointwiseConv2d(16, 32, 1)
        self.bn2 = nn.BatchNorm2d(32)
        self.dw2 = DepthwiseConv2d(32, 32, 5, 2, 2, groups=32, bias=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn1(self.dw1(self.stem(x))))
        x = F.silu(self.bn2(self.pw(x)))
        x = self.dw2(x)
        return self.head(x.mean((2, 3)))


def graph_ops(model: nn.Module, x: torch.Tensor, train: bool) -> tuple[set[str], torch.Tensor]:
    """The ATen/custom operators of the forward graph torch.compile traces (aot_eager backend: no inductor), and the
    output."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    seen: set[str] = set()

    def fw(gm: torch.fx.GraphModule, inputs: list) -> torch.fx.GraphModule:
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    def backend(gm: torch.fx.GraphModule, inputs: list):
        return aot_module_simplified(gm, inputs, fw_compiler=fw)

    torch._dynamo.reset()
    net = torch.compile(model, backend=backend)
    if train:
        out = net(x)
    else:
        with torch.no_grad():
            out = net(x)
    return seen, out


def test_compiled_training_step_uses_the_operators_and_matches_eager() -> None:
    torch.manual_seed(0)
    eager = Tiny().to(memory_format=torch.channels_last).train()
    comp = copy.deepcopy(eager)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (4,))
    F.cross_entropy(eager(x), y).backward()
    ops, out = graph_ops(comp, x, train=True)
    assert "mbconv.dw_conv.default" in ops and "aten.convolution.default" in ops  # the stem stays a conv
    assert any(o.startswith(("aten.mm", "aten.addmm")) for o in ops)  # the 4x4-map 1x1 conv as a product
    F.cross_entropy(out, y).backward()
    scale = max(float(p.grad.abs().max()) for p in eager.parameters())
    for (name, a), b in zip(eager.named_parameters(), comp.parameters()):
        assert float((a.grad - b.grad).abs().max()) <= 1e-5 * scale, name
    for a, b in zip(eager.buffers(), comp.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), "BN running statistics"


class Routed(nn.Module):
    """One depthwise layer per routing of a compiled step: 3x3 on an 8x8 map (ATen's conv: the native kernels do
    not pay there), 5x5 stride 2 on the same map size (the operator), 3x3 on a 1-pixel map (one tap read: a
    per-channel multiply)."""

    def __init__(self) -> None:
        super().__init__()
        self.big = DepthwiseConv2d(8, 8, 3, 1, 1, groups=8)
        self.small = DepthwiseConv2d(8, 8, 5, 2, 2, groups=8, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pixel = DepthwiseConv2d(8, 8, 3, 1, 1, groups=8, bias=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.small(F.silu(self.big(x))))
        return self.head(self.pixel(self.pool(x)).flatten(1))


def test_compiled_step_routes_each_depthwise_layer_by_the_eager_rule() -> None:
    """The operator only where `native_dw_pays`; ATen's conv on an 8x8 map with a 3x3 kernel; a 1-pixel map as a
    multiply by its centre tap (no convolution at all); gradients equal to the eager step's."""
    torch.manual_seed(2)
    eager = Routed().to(memory_format=torch.channels_last).train()
    comp = copy.deepcopy(eager)
    x = torch.randn(3, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(eager(x), torch.tensor([0, 1, 2])).backward()
    calls: list[str] = []

    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def fw(gm: torch.fx.GraphModule, inputs: list) -> torch.fx.GraphModule:
        calls.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    out = torch.compile(comp, backend=lambda gm, inputs: aot_module_simplified(gm, inputs, fw_compiler=fw))(x)
    F.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    assert calls.count("mbconv.dw_conv.default") == 1  # the 5x5 kernel
    assert calls.count("aten.convolution.default") == 1  # the 3x3 kernel on 8x8; none for the 1-pixel map
    scale = max(float(p.grad.abs().max()) for p in eager.parameters())
    for (name, a), b in zip(eager.named_parameters(), comp.parameters()):
        assert float((a.grad - b.grad).abs().max()) <= 1e-5 * scale, name


@pytest.mark.parametrize(("shape", "k", "want"), [
    ((2, 8, 20, 20), 3, True),  # more than COMPILED_ATEN_MAX_MAP a side: the operator
    ((2, 8, 16, 16), 3, False), ((2, 8, 8, 8), 3, False),  # 3-tap kernels on 5-16 px: ATen's conv
    ((2, 8, 8, 8), 5, True), ((2, 8, 4, 4), 3, True),  # where the native kernels pay (`native_dw_pays`)
    ((2, 8, 1, 1), 3, True)])  # one tap read
def test_compiled_routing_rule(monkeypatch, shape, k, want) -> None:
    monkeypatch.setattr(compiled, "compiled_training_step", lambda x, w: True)  # as while torch.compile traces
    x, w = torch.empty(shape), torch.empty(shape[1], 1, k, k)
    assert compiled.compiled_dw_applies(x, w, (1, 1), (k // 2, k // 2)) is want


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "want"), [
    ((1, 1), (3, 3), (1, 1), (1, 1), (1, 1)), ((1, 1), (5, 5), (2, 2), (2, 2), (2, 2)), ((1,), (5,), (1,), (2,), (2,)),
    ((1, 1), (3, 3), (1, 1), (2, 2), None),  # 3x3 output: more than one pixel
    ((1, 1), (3, 3), (1, 1), (0, 0), None),  # no output at all (nn.Conv2d's error is the answer)
    ((2, 2), (3, 3), (1, 1), (1, 1), None), ((1, 1, 1), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1))])
def test_single_tap_finds_the_one_tap_a_one_pixel_map_reads(size, kernel, stride, padding, want) -> None:
    assert compiled.single_tap(size, kernel, stride, padding) == want
    if want is not None:  # the multiply equals the convolution
        x, w = torch.randn(2, 4, *size), torch.randn(4, 1, *kernel)
        ref = CONV[len(size)](x, w, None, stride, padding, 1, 4)
        got = x * w[(slice(None), 0, *want)].view(1, -1, *([1] * len(size)))
        assert torch.allclose(got, ref, atol=1e-6)


def test_a_step_compiled_before_the_library_was_loaded_gets_the_operators() -> None:
    """torch.compile cannot trace the build: the library is built (or loaded from the cache) while tracing, once."""
    native.reset_native()  # as in a fresh process where nothing has loaded the library yet
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    ops, _ = graph_ops(Tiny().to(memory_format=torch.channels_last).train(), x, train=True)
    assert "mbconv.dw_conv.default" in ops and native.native_enabled()


def test_compiled_inference_and_frozen_weights_keep_the_plain_conv() -> None:
    model = Tiny().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    ops, _ = graph_ops(model.eval(), x, train=False)
    assert "mbconv.dw_conv.default" not in ops
    for p in model.parameters():
        p.requires_grad_(False)
    ops, _ = graph_ops(model.train(), x, train=True)  # nothing to differentiate: an inference step
    assert "mbconv.dw_conv.default" not in ops


def test_autocast_keeps_the_plain_ops() -> None:
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ops, _ = graph_ops(Tiny().to(memory_format=torch.channels_last).train(), x, train=True)
    assert "mbconv.dw_conv.default" not in ops and "aten.convolution.default" in ops


def test_export_keeps_the_plain_conv() -> None:
    model = Tiny().to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("mbconv" in t for t in targets)


def test_switched_off_kernels_keep_the_plain_conv() -> None:
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with native.use_native_depthwise(False):
        ops, _ = graph_ops(Tiny().to(memory_format=torch.channels_last).train(), x, train=True)
    assert "mbconv.dw_conv.default" not in ops


@pytest.mark.parametrize("options", [None, COMPILE_OPTIONS_CPU], ids=["python wrapper", "trainer's options"])
def test_inductor_training_step_end_to_end(options) -> None:
    """The real compiler, as torch.compile's default and with the trainer's CPU options (the C++ wrapper): the fake
    strides must agree with the kernels' results (inductor asserts them), and the gradients with eager's."""
    torch.manual_seed(1)
    eager = Tiny().to(memory_format=torch.channels_last).train()
    comp = copy.deepcopy(eager)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    net = torch.compile(comp, options=options)
    for fn in (eager, net):
        fn(x).square().mean().backward()
    scale = max(float(p.grad.abs().max()) for p in eager.parameters())
    for (name, a), b in zip(eager.named_parameters(), comp.parameters()):
        assert float((a.grad - b.grad).abs().max()) <= 1e-4 * scale, name
