"""The squeeze-and-excitation native kernels (mbconv.layers.native_se, se.c) against `SqueezeExciteFn` and the plain
`SqueezeExcite` module: forward and every gradient over layouts, dimensionalities and activations, where they
apply and where they do not, and their one-line errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mbconv.layers import native
from mbconv.layers.channels_last_1d import to_channels_last_1d
from mbconv.layers.memory import LeanSqueezeExcite, lean_layers
from mbconv.layers.native_se import (
    NativeSqueezeExciteFn,
    native_se_applies,
    se_backward,
    se_forward,
)
from mbconv.layers.se import SqueezeExcite, SqueezeExciteFn

pytestmark = pytest.mark.skipif(not native.native_enabled(), reason="native kernels unavailable (no C compiler)")


def channels_last(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return to_channels_last_1d(x)
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def weights(c: int, r: int, dims: int, seed: int = 0) -> list[torch.Tensor]:
    """Reduce / expand weights and biases at the scale of a trained SE (unit-variance products)."""
    g = torch.Generator().manual_seed(seed)
    k = (1,) * dims
    return [torch.randn(r, c, *k, generator=g) / c ** 0.5, torch.randn(r, generator=g) * 0.1,
            torch.randn(c, r, *k, generator=g) / r ** 0.5, torch.randn(c, generator=g) * 0.1]


def grads(fn: type, x: torch.Tensor, ws: list[torch.Tensor], acts: tuple[type, type], gy: torch.Tensor) -> list:
    leaves = [t.clone().requires_grad_(True) for t in (x, *ws)]
    y = fn.apply(*leaves, acts)
    y.backward(gy)
    return [y.detach(), *(t.grad for t in leaves)]


SHAPES = [(4, 6, 5, 3), (2, 5, 3, 4, 2), (4, 7, 9), (2, 37, 130), (3, 70, 9, 9), (2, 3, 2, 1), (5, 40, 1, 1)]
ACT_PAIRS = [(nn.SiLU, nn.Sigmoid), (nn.ReLU, nn.Hardsigmoid), (nn.Sigmoid, nn.SiLU), (nn.Hardsigmoid, nn.ReLU)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("acts", ACT_PAIRS, ids=lambda a: f"{a[0].__name__}-{a[1].__name__}")
def test_matches_squeeze_excite_fn(shape: tuple[int, ...], acts: tuple[type, type]) -> None:
    torch.manual_seed(0)
    c = shape[1]
    x = channels_last(torch.randn(shape) * 2 + 0.3)
    ws = weights(c, max(1, c // 4), x.dim() - 2)
    gy = torch.randn(shape)  # contiguous: the kernels' caller converts it to x's layout
    assert native_se_applies(x, *ws, acts)
    want = grads(SqueezeExciteFn, x, ws, acts, gy)
    got = grads(NativeSqueezeExciteFn, x, ws, acts, gy)
    assert got[0].stride() == x.stride()
    for name, a, b in zip(("y", "gx", "gw1", "gb1", "gw2", "gb2"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_lean_squeeze_excite_takes_the_kernels_on_channels_last_maps() -> None:
    """`lean_layers`' SE runs the kernels in a training step on channels-last maps, with the plain module's output
    and gradients (one-pixel maps too); contiguous maps, `use_native(False)` and eval mode keep `SqueezeExciteFn` or
    the plain forward."""
    torch.manual_seed(0)
    se = SqueezeExcite(32, 8).train()
    plain = copy.deepcopy(se)
    lean_layers(se, 0, kinds=("se",))
    assert type(se) is LeanSqueezeExcite
    x = channels_last(torch.randn(4, 32, 6, 6)).requires_grad_(True)
    x0 = x.detach().clone().requires_grad_(True)
    y, y0 = se(x), plain(x0)
    assert type(y.grad_fn).__name__ == "NativeSqueezeExciteFnBackward"
    torch.testing.assert_close(y, y0)
    gy = torch.randn_like(y)
    y.backward(gy)
    y0.backward(gy)
    torch.testing.assert_close(x.grad, x0.grad, rtol=1e-4, atol=1e-5)
    for p, p0 in zip(se.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, p0.grad, rtol=1e-4, atol=1e-5)
    assert type(se(torch.randn(4, 32, 6, 6, requires_grad=True)).grad_fn).__name__ == "SqueezeExciteFnBackward"
    assert type(se(torch.randn(4, 32, 1, 1, requires_grad=True)).grad_fn).__name__ == "NativeSqueezeExciteFnBackward"
    with native.use_native(False):
        assert type(se(x).grad_fn).__name__ == "SqueezeExciteFnBackward"
    se.eval()
    assert type(se(x).grad_fn).__name__ == "MulBackward0"


def test_where_the_kernels_do_not_apply() -> None:
    x = channels_last(torch.randn(2, 8, 4, 4))
    ws = weights(8, 2, 2)
    acts = (nn.SiLU, nn.Sigmoid)
    assert native_se_applies(x, *ws, acts)
    assert not native_se_applies(torch.randn(2, 8, 4, 4), *ws, acts)  # contiguous N, C, H, W
    assert not native_se_applies(x.double(), *ws, acts)
    assert native_se_applies(torch.randn(2, 8, 1, 1), *ws, acts)  # one pixel: contiguous is channels-last
    assert not native_se_applies(x, *ws, (nn.GELU, nn.Sigmoid))
    assert not native_se_applies(x, ws[0].double(), *ws[1:], acts)
    assert not native_se_applies(x, ws[0], None, *ws[2:], acts)  # a reduce conv without bias
    assert not native_se_applies(x[:0], *ws, acts)
    with native.use_native(False):
        assert not native_se_applies(x, *ws, acts)
    with native.use_native_se(False):
        assert not native_se_applies(x, *ws, acts) and native.native_enabled()
    assert native_se_applies(x, *ws, acts)


def test_threads_do_not_change_the_result() -> None:
    """Samples are split between threads and the weights' sums run per squeezed channel: the same bits at 1 and 2
    threads."""
    x = channels_last(torch.randn(6, 24, 5, 5))
    ws, acts, gy = weights(24, 6, 2), (nn.SiLU, nn.Sigmoid), channels_last(torch.randn(6, 24, 5, 5))
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y, saved = se_forward(x, *ws, acts)
            out.append([y, *saved, *se_backward(gy, x, *ws, acts, saved)])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_a_gate_far_below_zero_makes_no_subnormal_values() -> None:
    """A sigmoid gate whose input is about -87.6 is below float's smallest normal: the kernels flush it to zero
    (kept, x * gate and the gradients are subnormal values, each costing a SIMD lane a microcode assist), within
    float32 rounding of `SqueezeExciteFn`'s result."""
    x = channels_last(torch.rand(3, 8, 4, 4))
    ws = weights(8, 2, 2)
    ws[2] = ws[2] * 1e-3
    ws[3] = torch.full((8,), -87.6)
    acts, gy = (nn.SiLU, nn.Sigmoid), torch.ones(3, 8, 4, 4)
    want = grads(SqueezeExciteFn, x, ws, acts, gy)
    got = grads(NativeSqueezeExciteFn, x, ws, acts, gy)
    subnormal = [int(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum()) for t in (*want, *got)]
    assert subnormal[0] > 0  # SqueezeExciteFn's output: the values the test is about
    assert sum(subnormal[len(want):]) == 0
    for name, a, b in zip(("y", "gx", "gw1", "gb1", "gw2", "gb2"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-30, msg=name)


def test_only_the_wanted_gradients_and_once_differentiable() -> None:
    x = channels_last(torch.randn(3, 8, 4, 4)).requires_grad_(True)
    ws = weights(8, 2, 2)
    ws[0].requires_grad_(True)
    y = NativeSqueezeExciteFn.apply(x, *ws, (nn.SiLU, nn.Sigmoid))
    y.sum().backward()
    assert x.grad is not None and ws[0].grad is not None and all(w.grad is None for w in ws[1:])
    y = NativeSqueezeExciteFn.apply(x, *ws, (nn.SiLU, nn.Sigmoid))
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|trying to differentiate twice|does not require grad"):
        g.sum().backward()


def test_bad_arguments_are_named_in_one_line() -> None:
    x = channels_last(torch.randn(2, 8, 4, 4))
    ws, acts = weights(8, 2, 2), (nn.SiLU, nn.Sigmoid)
    cases = [
        (lambda: se_forward(torch.randn(2, 8, 4, 4), *ws, acts), "channels last"),
        (lambda: se_forward(x, ws[0][:, :4].contiguous(), *ws[1:], acts), "w1 must be"),
        (lambda: se_forward(x, ws[0], ws[1], ws[2][:4], ws[3], acts), "w2 must be"),
        (lambda: se_forward(x, *ws[:3], ws[3].double(), acts), "b2 must be"),
        (lambda: se_forward(x, ws[0], None, *ws[2:], acts), "b1 must be .* got None"),
        (lambda: se_forward(x, *ws, (nn.GELU, nn.Sigmoid)), "unknown activation GELU"),
        (lambda: se_backward(torch.randn(2, 8, 4, 5), x, *ws, acts, se_forward(x, *ws, acts)[1]),
         "gradient of shape"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
