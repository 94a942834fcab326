"""Pointwise convs on small maps as matrix products (and contiguous 1-D maps as batched products): equal to the
convolution (float64) in output and every gradient over dims, layouts, map sizes and bias; taken only where the
rule says; the module is the nn.ConvNd it replaces (state, parameters, inference, scripting, tracing); the trainer
swaps it in."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbconv import create_model
from mbconv.layers.pointwise import (
    MAX_LINEAR_PIXELS,
    MAX_MATMUL_LENGTH,
    MAX_MATMUL_WEIGHT,
    PointwiseConv2d,
    fast_pointwise,
    is_pointwise,
    linear_applies,
    matmul_applies,
)

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def pair(dims: int, cin: int, cout: int, bias: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = CONV[dims](cin, cout, 1, bias=bias).double()
    ours = copy.deepcopy(ref)
    assert fast_pointwise(ours) == 1
    return ref, ours


def same_step(ref: nn.Module, ours: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[tuple]:
    """(output, input grad, weight grad, bias grad) of one backward through each module; asserts they are equal."""
    outs = []
    for m in (ref, ours):
        xi = x.detach().clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        outs.append((y, xi.grad, m.weight.grad, None if m.bias is None else m.bias.grad))
    for a, b in zip(*outs):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    return outs


@pytest.mark.parametrize("dims,size,last", [(1, (1,), False), (2, (1, 1), False), (2, (2, 2), True),
                                            (2, (4, 3), True), (3, (1, 1, 1), False), (3, (2, 2, 2), True)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_the_convolution(dims, size, last, bias):
    ref, ours = pair(dims, 6, 5, bias)
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    if last:
        x = x.contiguous(memory_format=LAST[dims])
    assert linear_applies(x.requires_grad_(), ours.weight)
    outs = same_step(ref, ours, x, torch.randn(3, 5, *size, dtype=torch.float64))
    if last:  # the output keeps the input's layout, as the convolution's does
        assert outs[1][0].is_contiguous(memory_format=LAST[dims])


@pytest.mark.parametrize("length", [2, 9, MAX_MATMUL_LENGTH])
@pytest.mark.parametrize("bias", [True, False])
def test_1d_batched_product_equals_the_convolution(length, bias):
    ref, ours = pair(1, 6, 5, bias)
    x = torch.randn(3, 6, length, dtype=torch.float64)
    assert matmul_applies(x.requires_grad_(), ours.weight) and not linear_applies(x, ours.weight)
    outs = same_step(ref, ours, x, torch.randn(3, 5, length, dtype=torch.float64))
    assert type(outs[1][0].grad_fn).__name__ == ("AddBackward0" if bias else "BmmBackward0")  # not the conv
    assert outs[1][0].is_contiguous()


def test_1d_batched_product_only_where_the_rule_says():
    w = nn.Conv1d(8, 16, 1).weight
    ok = torch.randn(2, 8, 20, requires_grad=True)
    assert matmul_applies(ok, w)
    assert not matmul_applies(torch.randn(2, 8, MAX_MATMUL_LENGTH + 1, requires_grad=True), w)  # long map
    assert not matmul_applies(ok[..., ::2], w)  # not contiguous
    assert not matmul_applies(ok.detach(), w.detach())  # no autograd
    wide = nn.Conv1d(64, MAX_MATMUL_WEIGHT // 64 + 1, 1).weight  # the weight gradient would cost more
    assert not matmul_applies(torch.randn(2, 64, 20, requires_grad=True), wide)
    with torch.no_grad():
        assert not matmul_applies(ok, w)
    conv = nn.Conv1d(8, 16, 1)
    fast_pointwise(conv)
    gm = torch.fx.symbolic_trace(conv)  # a tracer sees the convolution (the proxy's shape is never read)
    assert any("conv" in str(n.target) for n in gm.graph.nodes)
    conv.eval()  # eval mode: the convolution, whatever the input
    assert type(conv(ok).grad_fn).__name__ == "ConvolutionBackward0"


@pytest.mark.parametrize("case", ["no_grad", "eval_input", "large_map", "nchw_map", "float16", "trace"])
def test_plain_conv_where_the_rule_does_not_apply(case):
    conv = nn.Conv2d(4, 4, 1)
    x = torch.randn(2, 4, 2, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    if case == "no_grad":
        with torch.no_grad():
            assert not linear_applies(x, conv.weight)
        return
    if case == "eval_input":
        conv.weight.requires_grad_(False)
        assert not linear_applies(x.detach(), conv.weight)
        return
    if case == "large_map":
        side = int(MAX_LINEAR_PIXELS ** 0.5) + 1
        x = torch.randn(2, 4, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
    elif case == "nchw_map":
        x = torch.randn(2, 4, 2, 2, requires_grad=True)
    elif case == "float16":
        x = x.detach().half().requires_grad_()
    elif case == "trace":
        fast_pointwise(conv)
        traced = torch.jit.trace(conv, x)
        assert "aten::_convolution" in str(traced.inlined_graph)
        return
    assert not linear_applies(x, conv.weight)


def test_swap_keeps_state_parameters_and_inference():
    model = create_model("efficientnet_b0", num_classes=10, in_chans=1, width_mult=0.25).eval()
    ref = copy.deepcopy(model)
    params = [id(p) for p in model.parameters()]
    n = fast_pointwise(model)
    convs = [m for m in ref.modules() if type(m) is nn.Conv2d and is_pointwise(m)]
    assert n == len(convs) > 0 and fast_pointwise(model) == 0  # a second call finds nothing left to swap
    assert [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == list(ref.state_dict())
    assert not any(isinstance(m, PointwiseConv2d) and m.kernel_size != (1, 1) for m in model.modules())
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), ref(x))  # eval mode is the plain convolution, bit for bit (grad recorded or not)
    with torch.no_grad():  # training mode without autograd: the plain convolution too (same dropout draws)
        outs = []
        for m in (model, ref):
            torch.manual_seed(3)
            outs.append(m.train()(x))
        assert torch.equal(*outs)
    scripted = torch.jit.script(PointwiseConv2d(3, 4, 1))
    assert scripted(torch.randn(1, 3, 2, 2)).shape == (1, 4, 2, 2)


def test_network_training_step_equals_plain():
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=10, in_chans=1, width_mult=0.25).double().train()
    model = model.to(memory_format=torch.channels_last)
    ours = copy.deepcopy(model)
    fast_pointwise(ours)
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    for m in (model, ours):
        torch.manual_seed(1)  # the same drop-path draws
        F.cross_entropy(m(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9, msg=name)  # float64 rounding through BN


def test_bad_argument_is_named():
    with pytest.raises(ValueError, match="nn.Module"):
        fast_pointwise("model")


def test_memory_lean_swap_still_gates_swapped_convs():
    from mbconv.layers.memory import LeanBlockForward, memory_efficient

    model = create_model("efficientnet_b0", num_classes=10, in_chans=1, width_mult=0.25)
    fast_pointwise(model)
    memory_efficient(model)
    # the SE product is fused into project convs that fast_pointwise made PointwiseConv2d
    blocks = [m for m in model.modules() if isinstance(m, LeanBlockForward)]
    assert any(isinstance(b.project.conv, PointwiseConv2d) for b in blocks)
    y = model.train()(torch.randn(2, 1, 32, 32))
    seen, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    assert "GatedConvFnBackward" in {type(fn).__name__ for fn in seen}
