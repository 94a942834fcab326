"""The depthwise conv with its own backward: exact gradients (gradcheck in float64, ATen's gradients in float32)
over dims, kernels, strides, paddings, bias, layouts and batch sizes; every gradient method on its own; the plain
path wherever autograd does not need ours; the module behaving as the nn.ConvNd it subclasses."""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbconv.layers import ConvNormAct, LayerOpts
from mbconv.layers.depthwise import (
    DEPTHWISE_CONV,
    INPUT_GRAD_METHODS,
    WEIGHT_GRAD_METHODS,
    DepthwiseConv2d,
    depthwise_conv,
    fast_backward_enabled,
    input_grad,
    input_grad_method,
    is_depthwise,
    plan_depthwise,
    set_fast_backward,
    use_fast_backward,
    weight_grad,
    weight_grad_method,
)
from mbconv.layers.native_depthwise import use_native_depthwise


@pytest.fixture(autouse=True)
def depthwise_function_only():
    """This file checks `DepthwiseConvFunction` and the plain paths; the native kernels that take some training
    shapes first are checked in test_native_depthwise.py."""
    with use_native_depthwise(False):
        yield


CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
SIZES = {1: (9,), 2: (7, 6), 3: (5, 4, 3)}  # odd and uneven sizes


def make_input(dims: int, batch: int, ch: int, sizes: tuple[int, ...], last: bool, dtype=torch.float32):
    x = torch.randn(batch, ch, *sizes, dtype=dtype)
    return x.contiguous(memory_format=LAST[dims]) if last and dims in LAST else x


def aten_fn(x, w, b, stride, pad):
    return FN[x.dim() - 2](x, w, b, stride, pad, 1, x.shape[1])


def ours_fn(x, w, b, stride, pad):
    return depthwise_conv(x, w, b, stride, pad)


def grads(fn, x, w, b, g):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = fn(x, w, b)
    y.backward(g)
    return y, x.grad, w.grad, None if b is None else b.grad


# -- exactness -------------------------------------------------------------------------------------------------
GRID = list(itertools.product((1, 2, 3), (1, 2, 3, 4, 5, 7), (1, 2)))


@pytest.mark.parametrize("dims, k, stride", GRID)
def test_gradcheck_float64(dims, k, stride):
    """Analytical = numerical gradients; padding, bias, layout, batch and map size rotate through the grid so
    every value meets every dims/kernel/stride pair over a few cases."""
    torch.manual_seed(dims * 100 + k * 10 + stride)
    cases = [(0, True, False, 1, 0), ((k - 1) // 2, False, True, 2, 1), (k // 2 + 1, True, True, 1, 2),
             ((k - 1) // 2, True, False, 2, 3)]
    for pad, bias, last, batch, size_case in cases:
        sizes = [SIZES[dims], (1,) * dims, (2,) * dims, tuple(s + 1 for s in SIZES[dims])][size_case]
        if any(s + 2 * pad < k for s in sizes):
            continue
        x = make_input(dims, batch, 2, sizes, last, torch.float64).requires_grad_()
        w = torch.randn(2, 1, *[k] * dims, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2, dtype=torch.float64, requires_grad=True) if bias else None
        fn = functools.partial(ours_fn, stride=(stride,) * dims, pad=(pad,) * dims)
        assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_matches_aten_float32(dims):
    """Output and all three gradients equal ATen's over kernels, strides, paddings, bias, layouts, batches and
    map sizes from 1 to larger than the kernel."""
    torch.manual_seed(dims)
    n_checked = 0
    for k, stride, pad, bias, last, batch, size in itertools.product(
            (1, 2, 3, 5, 7), (1, 2, 3), (0, 1, 2, 3), (False, True), (False, True), (1, 3), (1, 2, 4, 9)):
        if (last and dims == 1) or size + 2 * pad < k:
            continue
        sizes = tuple(size + i for i in range(dims))
        x = make_input(dims, batch, 5, sizes, last)
        w = torch.randn(5, 1, *[k] * dims)
        b = torch.randn(5) if bias else None
        y0 = FN[dims](x, w, b, stride, pad, 1, 5)
        g = torch.randn_like(y0)
        ref = grads(functools.partial(aten_fn, stride=stride, pad=pad), x, w, b, g)
        ours = grads(functools.partial(ours_fn, stride=(stride,) * dims, pad=(pad,) * dims), x, w, b, g)
        for r, o in zip(ref, ours):
            if r is not None:
                assert o.shape == r.shape
                torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
        n_checked += 1
    assert n_checked > 300


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("last", [False, True])
def test_every_gradient_method_is_exact(dims, last):
    """Each weight- and input-gradient method, not only the one the rule picks, equals ATen's gradient."""
    if last and dims == 1:
        pytest.skip("no channels_last for 1-D")
    torch.manual_seed(7)
    for k, stride, pad, size in itertools.product((1, 2, 3, 5), (1, 2), (0, 1, 2), (1, 2, 3, 6)):
        if size + 2 * pad < k:
            continue
        sizes = tuple(size + i for i in range(dims))
        x = make_input(dims, 2, 3, sizes, last)
        w = torch.randn(3, 1, *[k] * dims)
        y = FN[dims](x, w, None, stride, pad, 1, 3)
        g = torch.randn_like(y)
        _, gx, gw, _ = grads(functools.partial(aten_fn, stride=stride, pad=pad), x, w, None, g)
        plan = plan_depthwise(sizes, (k,) * dims, (stride,) * dims, (pad,) * dims)
        live = w[plan.tap_slices()]
        dead = gw.clone()
        dead[plan.tap_slices()] = 0
        assert not dead.any()  # the cropped taps read only padding: ATen's gradient there is zero too
        case = f"k{k} s{stride} p{pad} n{size}"
        for m in WEIGHT_GRAD_METHODS:
            torch.testing.assert_close(weight_grad(g, x, live, plan, m), gw[plan.tap_slices()], rtol=1e-4,
                                       atol=1e-4, msg=f"weight method {m}, {case}")
        for m in INPUT_GRAD_METHODS:
            if m == "flip" and stride != 1:
                with pytest.raises(ValueError, match="invalid method='flip'"):
                    input_grad(g, x, live, plan, m)
                continue
            torch.testing.assert_close(input_grad(g, x, live, plan, m), gx, rtol=1e-4, atol=1e-4,
                                       msg=f"input method {m}, {case}")


def test_unknown_method_is_named():
    plan = plan_depthwise((4, 4), (3, 3), (1, 1), (1, 1))
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3)
    with pytest.raises(ValueError, match="invalid method='bmm'"):
        weight_grad(x, x, w, plan, "bmm")
    with pytest.raises(ValueError, match="invalid method='bmm'"):
        input_grad(x, x, w, plan, "bmm")


# -- the cropped geometry --------------------------------------------------------------------------------------
def test_plan_crops_dead_taps():
    one = plan_depthwise((1, 1), (5, 5), (1, 1), (2, 2))  # 1x1 map: only the centre tap reads data
    assert one.taps == ((2, 3), (2, 3)) and one.kernel == (1, 1) and one.cropped and one.conv_padding == (0, 0)
    two = plan_depthwise((2, 2), (5, 5), (1, 1), (2, 2))  # 2x2 map: taps 1..3
    assert two.taps == ((1, 4), (1, 4)) and two.symmetric and two.conv_padding == (1, 1)
    strided = plan_depthwise((2,), (5,), (2,), (2,))  # one output reads inputs -2..2: taps 2, 3
    assert strided.taps == ((2, 4),) and strided.out_size == (1,)
    big = plan_depthwise((8, 8), (3, 3), (2, 2), (1, 1))
    assert not big.cropped and big.symmetric and big.conv_padding == (1, 1) and big.out_size == (4, 4)
    assert weight_grad_method(one) == "taps" and weight_grad_method(big) == "aten"
    assert weight_grad_method(plan_depthwise((8, 8), (5, 5), (1, 1), (2, 2))) == "fold"
    assert weight_grad_method(two) == "fold" and weight_grad_method(two, channels_last=True) == "taps"
    assert input_grad_method(big) == "aten" and input_grad_method(two) == "flip"
    assert input_grad_method(strided) == "aten"
    assert weight_grad_method(plan_depthwise((8,) * 3, (3,) * 3, (1,) * 3, (1,) * 3)) == "fold"
    assert weight_grad_method(plan_depthwise((8,) * 3, (3,) * 3, (2,) * 3, (1,) * 3)) == "aten"


def test_plan_rejects_bad_geometry():
    with pytest.raises(ValueError, match="output would be empty"):
        plan_depthwise((2, 2), (5, 5), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="one entry per axis"):
        plan_depthwise((2, 2), (5,), (1, 1), (0, 0))


def test_dead_taps_get_zero_gradient():
    x = torch.randn(3, 4, 1, 1)
    conv = DepthwiseConv2d(4, 4, 5, padding=2, groups=4)
    conv(x.requires_grad_()).sum().backward()
    g = conv.weight.grad
    assert g[:, :, 2, 2].abs().sum() > 0
    g[:, :, 2, 2] = 0
    assert g.abs().sum() == 0


# -- the module --------------------------------------------------------------------------------------------------
def test_training_uses_our_function_and_switch_restores_aten():
    conv = DepthwiseConv2d(4, 4, 5, padding=2, groups=4)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    assert type(conv(x).grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    assert fast_backward_enabled()
    with use_fast_backward(False):
        assert not fast_backward_enabled()
        assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"
    assert fast_backward_enabled()
    assert set_fast_backward(False) is True and set_fast_backward(True) is False
    with pytest.raises(ValueError, match="invalid enabled='no'"):
        set_fast_backward("no")


def test_shapes_where_aten_does_everything_take_the_plain_conv():
    """k <= 3 on maps >= 4 and nothing to crop: ATen's backward is the rule's pick, so no Function overhead."""
    conv = DepthwiseConv2d(4, 4, 3, padding=1, groups=4)
    assert type(conv(torch.randn(2, 4, 6, 6, requires_grad=True)).grad_fn).__name__ == "ConvolutionBackward0"
    small = conv(torch.randn(2, 4, 2, 2, requires_grad=True))  # 2x2 map: the weight gradient is ours
    assert type(small.grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    with pytest.raises(RuntimeError):  # too small for the kernel: nn.ConvNd's own error
        DepthwiseConv2d(4, 4, 5, groups=4)(torch.randn(1, 4, 3, 3, requires_grad=True))


def test_double_backward():
    torch.manual_seed(0)
    for k, stride, size in ((5, 1, 4), (5, 2, 5), (3, 1, 2), (5, 1, 1)):
        x = torch.randn(2, 2, size, size, dtype=torch.float64, requires_grad=True)
        w = torch.randn(2, 1, k, k, dtype=torch.float64, requires_grad=True)
        fn = functools.partial(ours_fn, stride=(stride,) * 2, pad=((k - 1) // 2,) * 2)
        assert torch.autograd.gradgradcheck(fn, (x, w, None), eps=1e-6, atol=1e-5)


def test_weight_only_and_input_only_gradients():
    conv = DepthwiseConv2d(4, 4, 5, stride=2, padding=2, groups=4)
    x = torch.randn(2, 4, 7, 7)
    y = conv(x)  # weight requires grad, x does not
    assert type(y.grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    y.sum().backward()
    ref = nn.Conv2d(4, 4, 5, 2, 2, groups=4)
    ref.load_state_dict(conv.state_dict())
    ref(x).sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad)
    conv.requires_grad_(False)
    xg = x.clone().requires_grad_()
    conv(xg).sum().backward()
    assert conv.weight.grad is not None and xg.grad.shape == x.shape


@pytest.mark.parametrize("case", ["no_grad", "frozen", "dilation", "same", "groups", "unbatched", "bf16",
                                  "reflect"])
def test_plain_path_where_ours_does_not_apply(case):
    kw = dict(padding=1, groups=4)
    if case == "dilation":
        kw.update(dilation=2, padding=2)
    if case == "same":
        kw.update(padding="same")
    if case == "groups":
        kw.update(groups=2)
    if case == "reflect":
        kw.update(padding_mode="reflect")
    conv = DepthwiseConv2d(4, 4, 3, **kw)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    if case == "frozen":
        conv.requires_grad_(False)
        x = x.detach()
    if case == "unbatched":
        x = torch.randn(4, 6, 6, requires_grad=True)
    if case == "bf16":
        conv, x = conv.bfloat16(), x.detach().bfloat16().requires_grad_()
    if case == "no_grad":
        with torch.no_grad():
            y = conv(x)
        assert y.grad_fn is None
    else:
        y = conv(x)
        assert y.grad_fn is None or type(y.grad_fn).__name__ != "DepthwiseConvFunctionBackward"
    ref = nn.Conv2d(4, 4, 3, **kw).to(x.dtype)
    ref.load_state_dict(conv.state_dict())
    torch.testing.assert_close(y, ref(x))


def test_is_an_nn_conv_with_the_same_state_and_surgery():
    conv = DepthwiseConv2d(6, 6, 3, 2, 1, groups=6, bias=False)
    plain = nn.Conv2d(6, 6, 3, 2, 1, groups=6, bias=False)
    assert isinstance(conv, nn.Conv2d) and is_depthwise(conv) and not is_depthwise(nn.Conv2d(6, 6, 1))
    assert list(conv.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(conv.state_dict())
    clone = copy.deepcopy(conv)
    assert type(clone) is DepthwiseConv2d and torch.equal(clone.weight, conv.weight)
    # prune surgery: type(conv)(in, out, k, stride, padding, dilation, groups, ...)
    smaller = type(conv)(4, 4, conv.kernel_size, conv.stride, conv.padding, conv.dilation, 4, bias=False,
                         padding_mode=conv.padding_mode)
    assert isinstance(smaller, DepthwiseConv2d) and smaller.weight.shape == (4, 1, 3, 3)
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(conv(x), plain(x))


def test_parametrized_weight_trains_through_ours():
    """Fake quantization registers a parametrization on the weight: the class changes, gradients still flow."""
    from torch.nn.utils import parametrize

    class Half(nn.Module):
        def forward(self, w):
            return w * 0.5

    conv = DepthwiseConv2d(4, 4, 5, padding=2, groups=4)
    ref = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    ref.load_state_dict(conv.state_dict())
    parametrize.register_parametrization(conv, "weight", Half())
    parametrize.register_parametrization(ref, "weight", Half())
    x = torch.randn(2, 4, 5, 5)
    y = conv(x)
    assert type(y.grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    y.square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(conv.parametrizations.weight.original.grad, ref.parametrizations.weight.original.grad)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_norm_act_builds_it_for_depthwise_only(dims):
    opts = LayerOpts(dims=dims)
    dw = ConvNormAct(8, 8, 3, 2, groups=8, opts=opts)
    assert type(dw.conv) is DEPTHWISE_CONV[dims] and isinstance(dw.conv, CONV[dims])
    for args in ((8, 16, 1), (8, 8, 3, 1, 2), (8, 16, 3, 1, 8)):  # pointwise, grouped, depthwise multiplier
        assert type(ConvNormAct(*args, opts=opts).conv) is CONV[dims]
    plain = ConvNormAct(8, 8, 3, 2, groups=8, opts=opts)
    plain.conv = CONV[dims](8, 8, 3, 2, 1, groups=8, bias=False)
    assert list(dw.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in dw.parameters()) == sum(p.numel() for p in plain.parameters())


def test_network_step_equals_aten_step():
    """A whole model, channels_last: every parameter gradient agrees with ATen's depthwise backward."""
    from mbconv import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=10, in_chans=1, width_mult=0.25).train()
    model = model.double().to(memory_format=torch.channels_last)  # float64: BN-bias gradients near 0 compare
    for m in model.modules():  # no dropout randomness between the two passes
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    ref = copy.deepcopy(model)
    assert sum(isinstance(m, DepthwiseConv2d) for m in model.modules()) == 16
    F.cross_entropy(model(x), y).backward()
    with use_fast_backward(False):
        F.cross_entropy(ref(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=f"gradient of {name} differs")


# -- export, tracing, compile, torch.func, DDP ----------------------------------------------------------------
def test_scripting_and_tracing_use_the_plain_conv():
    conv = DepthwiseConv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(2, 4, 5, 5)
    scripted = torch.jit.script(conv)
    torch.testing.assert_close(scripted(x), conv(x))
    traced = torch.jit.trace(conv, x.requires_grad_())
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert "aten::_convolution" in kinds and "prim::PythonOp" not in kinds


def test_onnx_export_unchanged(tmp_path):
    onnx = pytest.importorskip("onnx")
    m = nn.Sequential(ConvNormAct(4, 4, 5, 1, groups=4)).train()
    x = torch.randn(1, 4, 8, 8)
    path = tmp_path / "dw.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Conv" in ops and not any(op.startswith("DepthwiseConv") or op == "PythonOp" for op in ops)


def test_compile_traces_the_plain_conv():
    calls = []

    def backend(gm, inputs):
        calls.append(str(gm.graph))
        return gm.forward

    conv = DepthwiseConv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    y = torch.compile(conv, backend=backend, fullgraph=True)(x)
    y.sum().backward()
    assert calls and "conv2d" in calls[0] and "DepthwiseConvFunction" not in calls[0]
    assert x.grad is not None


def test_torch_func_transforms_agree_with_aten():
    from torch.func import jacrev, jvp, vjp, vmap

    torch.manual_seed(0)
    conv = DepthwiseConv2d(3, 3, 5, 2, 2, groups=3).double()
    x = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    u = torch.randn(4, 1, 3, 2, 2, dtype=torch.float64)

    def run(fast: bool):
        with use_fast_backward(fast):
            y, f = vjp(conv, x)
            return (vmap(lambda v: f(v)[0])(u), jvp(conv, (x,), (torch.ones_like(x),))[1], jacrev(conv)(x))

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b)


def test_ddp_single_process(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(ConvNormAct(1, 8, 3, 1), ConvNormAct(8, 8, 5, 2, groups=8), nn.Flatten(),
                              nn.LazyLinear(3))
        x = torch.randn(4, 1, 9, 9)
        model(x)
        ref = copy.deepcopy(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        ddp(x).square().mean().backward()
        with use_fast_backward(False):
            ref(x).square().mean().backward()
        dw = ddp.module[1].conv
        assert isinstance(dw, DepthwiseConv2d)
        torch.testing.assert_close(dw.weight.grad, ref[1].conv.weight.grad)
    finally:
        dist.destroy_process_group()


# -- inference on maps smaller than the kernel -----------------------------------------------------------------
class ConvCalls(torch.overrides.TorchFunctionMode):
    """Records the kernel size of every convolution torch runs (F.convNd reach torch.conv1d/2d/3d)."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.conv1d, torch.conv2d, torch.conv3d):
            self.kernels.append(tuple(args[1].shape[2:]))
        return func(*args, **(kwargs or {}))


INFER_GRID = [(dims, n, k, s, last) for dims in (1, 2, 3) for n in (1, 2, 3) for k in (3, 5, 7) for s in (1, 2)
              for last in (False, True) if not (last and dims == 1)]


@pytest.mark.parametrize("dims, n, k, stride, last", INFER_GRID)
def test_inference_crop_equals_aten_and_runs_where_it_pays(dims, n, k, stride, last):
    from mbconv.layers.depthwise import crop_pays_for_inference

    torch.manual_seed(dims * 100 + n * 10 + k)
    conv = DEPTHWISE_CONV[dims](6, 6, k, stride, k // 2, groups=6).eval()
    ref = CONV[dims](6, 6, k, stride, k // 2, groups=6)
    ref.load_state_dict(conv.state_dict())
    x = make_input(dims, 3, 6, (n,) * dims, last)
    plan = plan_depthwise((n,) * dims, (k,) * dims, (stride,) * dims, (k // 2,) * dims)
    with torch.no_grad(), ConvCalls() as calls:
        y = conv(x)
    torch.testing.assert_close(y, ref(x).detach(), rtol=1e-5, atol=1e-6)
    full = (k,) * dims
    if crop_pays_for_inference(plan, last and n > 1):
        assert full not in calls.kernels and plan.kernel != full
    else:
        assert calls.kernels == [full]
    conv.requires_grad_(False)  # grad mode on, nothing requires grad: no autograd either, same path
    with ConvCalls() as calls2:
        y2 = conv(x)
    assert calls2.kernels == calls.kernels
    assert y2.grad_fn is None
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


def test_inference_crop_follows_the_switch_and_spares_ordinary_maps():
    conv = DepthwiseConv2d(8, 8, 5, 1, 2, groups=8).eval()
    with torch.no_grad():
        with ConvCalls() as calls:
            conv(torch.randn(2, 8, 1, 1))
        assert calls.kernels == []  # one live tap: a per-channel multiply
        with use_fast_backward(False), ConvCalls() as calls:
            conv(torch.randn(2, 8, 1, 1))
        assert calls.kernels == [(5, 5)]
        with ConvCalls() as calls:
            conv(torch.randn(2, 8, 6, 6))
        assert calls.kernels == [(5, 5)]


def test_tracing_and_onnx_keep_the_full_kernel_on_tiny_maps(tmp_path):
    conv = DepthwiseConv2d(4, 4, 5, 1, 2, groups=4).eval()
    x = torch.randn(1, 4, 1, 1)
    with torch.no_grad():
        traced = torch.jit.trace(conv, x)
    kinds = [n.kind() for n in traced.graph.nodes()]
    assert "aten::_convolution" in kinds and "aten::mul" not in kinds
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "dw1x1.onnx"
    torch.onnx.export(conv, (x,), str(path), dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert [tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 4] == [(4, 1, 5, 5)]


def test_small_input_network_inference_equals_aten():
    from mbconv import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=10, in_chans=1, width_mult=0.25).eval()
    x = torch.randn(4, 1, 32, 32)  # the last stages run 5x5 kernels on 2x2 and 1x1 maps
    with torch.no_grad():
        ours = model(x)
        with use_fast_backward(False):
            aten = model(x)
        last = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(ours, aten, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, aten, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grad", [True, False])
def test_fx_symbolic_trace_records_the_plain_conv(grad):
    from mbconv.layers.pointwise import PointwiseConv2d

    seq = nn.Sequential(DepthwiseConv2d(8, 8, 5, 1, 2, groups=8), PointwiseConv2d(8, 4, 1))
    with torch.set_grad_enabled(grad):
        gm = torch.fx.symbolic_trace(seq)
    x = torch.randn(2, 8, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), seq(x))
    assert sum(n.target is F.conv2d or "conv" in str(n.target) for n in gm.graph.nodes) == 2
