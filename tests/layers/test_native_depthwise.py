"""The native depthwise kernels (mbconv.layers.native_depthwise, dw_conv.c): outputs and both gradients against
float64 truth over dims, kernels, strides, paddings, maps smaller than the kernel, channel counts off the vector
width, bias and layouts, no less accurate than ATen's float32; the autograd Function (layouts kept, double
backward); which training shapes the depthwise layers send to it; the switches; one-line errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mbconv.layers import native
from mbconv.layers.channels_last_1d import is_channels_last_1d, to_channels_last_1d
from mbconv.layers.depthwise import DepthwiseConv1d, DepthwiseConv2d, DepthwiseConv3d, use_fast_backward
from mbconv.layers.native_depthwise import (
    NativeDepthwiseFn,
    dw_backward_input,
    dw_backward_weight,
    dw_forward,
    native_dw_pays,
    use_native_depthwise,
)

pytestmark = pytest.mark.skipif(not native.native_enabled(), reason=f"native kernels {native.native_status()}")

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
LAYER = {1: DepthwiseConv1d, 2: DepthwiseConv2d, 3: DepthwiseConv3d}


def truth(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int, pad: int, gy: torch.Tensor):
    """ATen's output and gradients for float64 copies of the inputs (the reference) or float32 ones (its error)."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = CONV[x.dim() - 2](x, w, b, stride, pad, 1, x.shape[1])
    y.backward(gy.to(y.dtype))
    return [t.detach() for t in (y, x.grad, w.grad)] + ([] if b is None else [b.grad])


def in_layout(t: torch.Tensor, last: bool) -> torch.Tensor:
    """`t` channels-last (1-D: layers/channels_last_1d.py) if `last`, else as it is."""
    if not last:
        return t
    return to_channels_last_1d(t) if t.dim() == 3 else t.contiguous(memory_format=LAST[t.dim() - 2])


def has_layout(t: torch.Tensor, last: bool) -> bool:
    if not last:
        return t.is_contiguous()
    return is_channels_last_1d(t) if t.dim() == 3 else t.is_contiguous(memory_format=LAST[t.dim() - 2])


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


GRID = [(dims, k, s, p, size, last, ch) for dims, k, s, p, size, last, ch in
        itertools.product((1, 2, 3), (1, 3, 5), (1, 2), (0, 1, 2), (1, 2, 6), (False, True), (7, 20))
        if (size + 2 * p - k) // s + 1 >= 1 and not (dims == 3 and ch == 20)]


@pytest.mark.parametrize("dims,k,s,p,size,last,ch", GRID)
def test_kernels_match_float64_truth(dims: int, k: int, s: int, p: int, size: int, last: bool, ch: int) -> None:
    g = torch.Generator().manual_seed(dims * 100 + k * 10 + s)
    x64 = torch.randn(3, ch, *[size + d for d in range(dims)], generator=g, dtype=torch.float64)  # uneven sides
    w64 = torch.randn(ch, 1, *[k] * dims, generator=g, dtype=torch.float64)
    b64 = torch.randn(ch, generator=g, dtype=torch.float64)
    gy = torch.randn(CONV[dims](x64, w64, None, s, p, 1, ch).shape, generator=g, dtype=torch.float64)
    ref = truth(x64, w64, b64, s, p, gy)
    aten32 = truth(x64.float(), w64.float(), b64.float(), s, p, gy.float())
    x, gy32 = in_layout(x64.float(), last), in_layout(gy.float(), last)
    y = dw_forward(x, w64.float(), b64.float(), (s,) * dims, (p,) * dims)
    gx = dw_backward_input(gy32, x, w64.float(), (s,) * dims, (p,) * dims)
    gw = dw_backward_weight(gy32, x, w64.float(), (s,) * dims, (p,) * dims)
    for got, want, theirs in zip((y, gx, gw), ref, aten32):
        assert got.shape == want.shape
        assert rel_err(got, want) <= 4 * rel_err(theirs, want) + 1e-6
    # the input's layout is kept; a 1-D map of one position is contiguous in both, and stays contiguous
    kept = last and not (dims == 1 and x.is_contiguous())
    assert has_layout(y, kept) and has_layout(gx, kept)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2), (3, 2, 0), (5, 3, 1)])
def test_kernels_match_on_maps_with_many_inner_positions(k: int, s: int, p: int) -> None:
    """1-D and 2-D maps wide enough for the four-position inner loops of the forward and input gradient (the grid
    above has at most 8 positions a side), 40 channels: two full blocks of 16 and a partial one."""
    g = torch.Generator().manual_seed(k * 10 + s)
    for shape in ((2, 40, 13, 22), (2, 40, 37)):
        x64 = torch.randn(shape, generator=g, dtype=torch.float64)
        dims = x64.dim() - 2
        w64 = torch.randn(40, 1, *[k] * dims, generator=g, dtype=torch.float64)
        gy = torch.randn(CONV[dims](x64, w64, None, s, p, 1, 40).shape, generator=g, dtype=torch.float64)
        ref = truth(x64, w64, None, s, p, gy)
        aten32 = truth(x64.float(), w64.float(), None, s, p, gy.float())
        x, gy32 = in_layout(x64.float(), True), in_layout(gy.float(), True)
        got = (dw_forward(x, w64.float(), None, (s,) * dims, (p,) * dims),
               dw_backward_input(gy32, x, w64.float(), (s,) * dims, (p,) * dims),
               dw_backward_weight(gy32, x, w64.float(), (s,) * dims, (p,) * dims))
        for a, want, theirs in zip(got, ref, aten32):
            assert a.shape == want.shape and rel_err(a, want) <= 4 * rel_err(theirs, want) + 1e-6


@pytest.mark.parametrize("dims,last", [(1, False), (1, True), (2, False), (2, True), (3, True)])
def test_function_gradients_and_layout(dims: int, last: bool) -> None:
    torch.manual_seed(dims)
    x64 = torch.randn(4, 24, *[5] * dims, dtype=torch.float64)
    w64 = torch.randn(24, 1, *[5] * dims, dtype=torch.float64)
    b64 = torch.randn(24, dtype=torch.float64)
    gy = torch.randn(4, 24, *[3] * dims, dtype=torch.float64)
    ref = truth(x64, w64, b64, 2, 2, gy)
    x = in_layout(x64.float(), last).requires_grad_()
    w, b = w64.float().requires_grad_(), b64.float().requires_grad_()
    y = NativeDepthwiseFn.apply(x, w, b, (2,) * dims, (2,) * dims)
    assert type(y.grad_fn).__name__ == "NativeDepthwiseFnBackward"
    assert has_layout(y, last)
    y.backward(in_layout(gy.float(), last))
    assert has_layout(x.grad, last)
    for got, want in zip((y, x.grad, w.grad, b.grad), ref):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_double_backward_takes_a_differentiable_path() -> None:
    """create_graph: the Function's backward is ATen's differentiable one, so a gradient penalty works and equals
    the plain conv's."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 16, 4, 4), torch.randn(16, 1, 3, 3)
    grads = []
    for fn in (lambda a, b: NativeDepthwiseFn.apply(a, b, None, (1, 1), (1, 1)),
               lambda a, b: F.conv2d(a, b, None, 1, 1, 1, 16)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(xi, wi).square().sum(), xi, create_graph=True)
        g.square().sum().backward()
        grads.append(wi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


def test_layers_take_the_kernels_where_they_pay() -> None:
    """Training steps on small maps (and 5-tap kernels up to 56 px) run the native Function; 3-tap kernels on
    larger maps, one-pixel maps, eval mode, no-grad, the switches and ATen mode do not."""
    def node(conv, x):
        y = conv(x)
        return type(y.grad_fn).__name__ if y.grad_fn is not None else None

    small = DepthwiseConv2d(32, 32, 3, padding=1, groups=32)
    k5 = DepthwiseConv2d(32, 32, 5, stride=2, padding=2, groups=32)
    x_small = torch.randn(2, 32, 4, 4, requires_grad=True).contiguous(memory_format=torch.channels_last)
    x_mid = torch.randn(2, 32, 16, 16, requires_grad=True)
    assert node(small, x_small) == "NativeDepthwiseFnBackward"
    assert node(k5, x_mid) == "NativeDepthwiseFnBackward"
    assert node(small, x_mid) != "NativeDepthwiseFnBackward"  # 3 taps on 16 px: oneDNN's forward wins
    assert node(small, torch.randn(2, 32, 1, 1, requires_grad=True)) != "NativeDepthwiseFnBackward"
    assert node(DepthwiseConv1d(8, 8, 5, padding=2, groups=8), torch.randn(2, 8, 40, requires_grad=True)) == \
        "NativeDepthwiseFnBackward"
    assert not native_dw_pays(x_mid, (3, 3)) and native_dw_pays(x_mid, (5, 5)) and native_dw_pays(x_small, (3, 3))
    x3d = torch.randn(2, 8, 8, 8, 8, requires_grad=True)  # 3-D: 27 taps, native up to 16 a side
    assert node(DepthwiseConv3d(8, 8, 3, padding=1, groups=8), x3d) == "NativeDepthwiseFnBackward"
    assert not native_dw_pays(torch.randn(1, 8, 17, 17, 17), (3, 3, 3))
    with use_native_depthwise(False):
        assert node(k5, x_mid) != "NativeDepthwiseFnBackward"
    with native.use_native(False):
        assert node(k5, x_mid) != "NativeDepthwiseFnBackward"
    with use_fast_backward(False):
        assert node(k5, x_mid) == "ConvolutionBackward0"
    with torch.no_grad():
        assert node(k5, x_mid) is None
    assert node(k5.double(), x_mid.double()) != "NativeDepthwiseFnBackward"  # float32 only
    k5.float()
    with torch.autograd.forward_ad.dual_level():  # forward-mode AD: the Function with a jvp takes it
        dual = torch.autograd.forward_ad.make_dual(x_mid.detach(), torch.ones_like(x_mid))
        assert node(k5, dual) != "NativeDepthwiseFnBackward"


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_layer_training_step_matches_aten(dims: int) -> None:
    torch.manual_seed(dims)
    conv = LAYER[dims](12, 12, 5, stride=2, padding=2, groups=12, bias=True)
    x = torch.randn(3, 12, *[6] * dims)
    outs = []
    for fast in (True, False):
        conv.zero_grad()
        xi = x.clone().requires_grad_()
        with use_fast_backward(fast):
            y = conv(xi)
            assert (type(y.grad_fn).__name__ == "NativeDepthwiseFnBackward") == fast
            y.backward(torch.ones_like(y) * torch.arange(y.numel()).reshape(y.shape).sin())
        outs.append((y.detach(), xi.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_one_line_errors() -> None:
    x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match=r"invalid depthwise geometry: input \(2, 4, 5, 5\), weight \(3, 1, 3, 3\)"):
        dw_forward(x, torch.randn(3, 1, 3, 3), None, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="give an empty output"):
        dw_forward(x, torch.randn(4, 1, 7, 7), None, (1, 1), (0, 0))
    with pytest.raises(ValueError, match="must be a float32 CPU tensor"):
        dw_forward(x.double(), w, None, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="bias must be 4 float32 values"):
        dw_forward(x, w, torch.randn(5), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 4, 4, 4\) for an output of \(2, 4, 5, 5\)"):
        dw_backward_input(torch.randn(2, 4, 4, 4), x, w, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="gradient of shape"):
        dw_backward_weight(torch.randn(2, 4, 4, 4), x, w, (1, 1), (1, 1))


def test_deterministic_for_a_thread_count() -> None:
    """The weight gradient sums per-thread partial results in a fixed order: two runs give the same bits."""
    torch.manual_seed(0)
    x = torch.randn(8, 40, 7, 7).contiguous(memory_format=torch.channels_last)
    w, gy = torch.randn(40, 1, 5, 5), torch.randn(8, 40, 7, 7).contiguous(memory_format=torch.channels_last)
    runs = [(dw_backward_weight(gy, x, w, (1, 1), (2, 2)), dw_backward_input(gy, x, w, (1, 1), (2, 2)))
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_backward_after_the_kernels_are_switched_off() -> None:
    """A forward through the kernels whose backward runs with them switched off gets ATen's gradients, not an
    error from a missing library."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 16, 4, 4, requires_grad=True), torch.randn(16, 1, 3, 3, requires_grad=True)
    y = NativeDepthwiseFn.apply(x, w, None, (1, 1), (1, 1))
    with native.use_native(False):
        y.square().sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr, None, 1, 1, 1, 16).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-4, atol=1e-4)
