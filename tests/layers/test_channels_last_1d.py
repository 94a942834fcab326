"""The channels-last 1-D layout (mbconv.layers.channels_last_1d): the helpers and switch; a 1-D network's training
step as the Trainer runs it puts its maps channels-last and gives the same loss, gradients and running statistics
as the contiguous step and as the plain network; the layers it reaches (1x1 products, every depthwise path) keep
it and stay exact; inference, no-grad and steps without the native kernels keep contiguous maps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mbconv import create_model
from mbconv.layers import native
from mbconv.layers.channels_last_1d import (
    channels_last_1d_on,
    is_channels_last_1d,
    to_channels_last_1d,
    use_channels_last_1d,
)
from mbconv.layers.depthwise import DepthwiseConv1d, use_fast_backward
from mbconv.layers.memory import LeanConvNormAct, lean_layers
from mbconv.layers.native_depthwise import native_dw_pays, use_native_depthwise
from mbconv.layers.pointwise import PointwiseConv1d, fast_pointwise

needs_native = pytest.mark.skipif(not native.native_enabled(), reason=f"native kernels {native.native_status()}")


def test_helpers_and_switch() -> None:
    x = torch.randn(3, 5, 7)
    r = to_channels_last_1d(x)
    assert torch.equal(r, x) and is_channels_last_1d(r) and not r.is_contiguous()
    assert r.stride() == (35, 1, 5) and not is_channels_last_1d(x)
    assert to_channels_last_1d(r).data_ptr() == r.data_ptr()  # already: no copy
    assert is_channels_last_1d(torch.randn(3, 5, 1))  # one position: dense in both layouts
    assert not is_channels_last_1d(torch.randn(3, 5, 7, 2))
    for bad in (torch.randn(3, 5, 7, 2), torch.randn(5), [1.0]):
        with pytest.raises(ValueError, match=r"needs an \(N, C, L\) tensor"):
            to_channels_last_1d(bad)
    assert channels_last_1d_on()
    with pytest.raises(RuntimeError), use_channels_last_1d(False):
        assert not channels_last_1d_on()
        raise RuntimeError
    assert channels_last_1d_on()


def trainer_net(seed: int = 0) -> nn.Module:
    """The MNIST-1D net as the Trainer prepares it (1x1 products, lean layers), in training mode."""
    torch.manual_seed(seed)
    net = create_model("mbconv1d_se4", num_classes=10, in_chans=1).train()
    fast_pointwise(net)
    lean_layers(net)
    return net


def step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same dropout draws in every step
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def layer_outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: outs.append(o)) for m in net.modules()
             if isinstance(m, LeanConvNormAct)]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


@needs_native
def test_training_step_runs_channels_last_and_matches_contiguous_and_plain() -> None:
    """Loss, every parameter gradient and the BN running statistics equal the contiguous step's (the switch off)
    and the plain network's (no products, no lean layers); the conv layers' outputs are channels-last."""
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
    fast = trainer_net()
    contiguous = copy.deepcopy(fast)
    plain = create_model("mbconv1d_se4", num_classes=10, in_chans=1).train()
    plain.load_state_dict(fast.state_dict())
    outs = layer_outputs(fast, x)
    assert len(outs) > 10 and all(is_channels_last_1d(o) and not o.is_contiguous() for o in outs if o.shape[2] > 1)
    with use_channels_last_1d(False):
        assert all(o.is_contiguous() for o in layer_outputs(contiguous, x))
    fast.load_state_dict(plain.state_dict())  # undo the running-statistics updates of the layout checks
    contiguous.load_state_dict(plain.state_dict())
    loss, grads = step(fast, x, y)
    with use_channels_last_1d(False):
        loss_c, grads_c = step(contiguous, x, y)
    loss_p, grads_p = step(plain, x, y)
    torch.testing.assert_close(loss, loss_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, loss_p, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        assert g.shape == grads_p[name].shape and g.is_contiguous(), name  # what DDP's buckets and optimizers see
        torch.testing.assert_close(g, grads_c[name], rtol=1e-3, atol=1e-5, msg=name)
        torch.testing.assert_close(g, grads_p[name], rtol=1e-3, atol=1e-5, msg=name)
    for (name, b), b_p in zip(fast.named_buffers(), plain.buffers()):
        torch.testing.assert_close(b, b_p, rtol=1e-4, atol=1e-5, msg=name)


@needs_native
def test_inference_no_grad_and_no_native_kernels_keep_contiguous_maps() -> None:
    net = trainer_net()
    x = torch.randn(4, 1, 40)
    with torch.no_grad():
        assert all(o.is_contiguous() for o in layer_outputs(net, x))  # no autograd: not a training step
    net.eval()
    assert all(o.is_contiguous() for o in layer_outputs(net, x))
    net.train()
    with native.use_native(False):  # the BN kernels off: the layout would only cost copies
        assert all(o.is_contiguous() for o in layer_outputs(net, x))


@pytest.mark.parametrize("path", ["native", "function", "aten"])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_paths_exact_on_channels_last_input(path: str, stride: int) -> None:
    """Every depthwise path (the native kernels, `DepthwiseConvFunction`, ATen) gives a channels-last input the
    contiguous input's output and gradients; the native path keeps the layout."""
    if path == "native" and not native.native_enabled():
        pytest.skip(f"native kernels {native.native_status()}")
    torch.manual_seed(stride)
    conv = DepthwiseConv1d(24, 24, 5, stride=stride, padding=2, groups=24)
    x = torch.randn(6, 24, 20)
    gy = torch.randn(6, 24, (20 - 1) // stride + 1)
    results = []
    for inp in (x, to_channels_last_1d(x)):
        xi = inp.clone().requires_grad_()
        conv.zero_grad()
        with use_native_depthwise(path == "native"), use_fast_backward(path != "aten"):
            out = conv(xi)
        node = type(out.grad_fn).__name__
        assert ("NativeDepthwise" in node) == (path == "native"), node
        out.backward(gy)
        results.append((out.detach(), xi.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    if path == "native":
        assert is_channels_last_1d(results[1][0]) and is_channels_last_1d(results[1][1])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_pointwise_takes_one_product_on_channels_last_maps() -> None:
    """A channels-last 1-D map runs the 1x1 conv as one F.linear product at any length and keeps the layout; a
    contiguous one keeps the batched W @ x (up to its length limit); both equal the convolution."""
    torch.manual_seed(0)
    conv = PointwiseConv1d(16, 24, 1).train()
    x, gy = torch.randn(4, 16, 300), torch.randn(4, 24, 300)
    ref_x = x.clone().requires_grad_()
    nn.functional.conv1d(ref_x, conv.weight, conv.bias).backward(gy)
    ref_w = conv.weight.grad.clone()
    conv.zero_grad()
    xr = to_channels_last_1d(x).requires_grad_()
    out = conv(xr)
    assert is_channels_last_1d(out) and "Convolution" not in type(out.grad_fn).__name__
    out.backward(gy)
    torch.testing.assert_close(out.detach(), nn.functional.conv1d(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xr.grad, ref_x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref_w, rtol=1e-4, atol=1e-4)
    assert "Convolution" in type(conv(x.clone().requires_grad_()).grad_fn).__name__  # 300 > MAX_MATMUL_LENGTH


def test_native_depthwise_takes_channels_last_1d_maps_of_any_length() -> None:
    """Without transposes to pay the native kernels win on every 1-D length measured; contiguous maps keep the
    size rule (3 taps on 1000 positions: `DepthwiseConvFunction`)."""
    x = torch.randn(2, 8, 1000)
    assert native_dw_pays(to_channels_last_1d(x), (3,)) and not native_dw_pays(x, (3,))
    assert not native_dw_pays(to_channels_last_1d(torch.randn(2, 8, 1)), (3,))  # one position: the multiply


@needs_native
def test_ddp_step_takes_the_layout_and_matches(tmp_path) -> None:  # noqa: ANN001
    """Under DistributedDataParallel (gloo, one process) the 1-D step runs channels-last and its gradients, which
    DDP's buckets reduce, equal the plain module's."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = trainer_net()
        ref = copy.deepcopy(net)
        ddp = nn.parallel.DistributedDataParallel(net)
        torch.manual_seed(1)
        x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
        assert all(is_channels_last_1d(o) for o in layer_outputs(ddp, x))
        net.load_state_dict(ref.state_dict())  # undo the statistics update of the layout check
        _, grads = step(ddp, x, y)
        _, want = step(ref, x, y)
        for name, g in grads.items():
            torch.testing.assert_close(g, want[name.removeprefix("module.")], rtol=1e-5, atol=1e-6, msg=name)
    finally:
        dist.destroy_process_group()
